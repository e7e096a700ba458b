"""The request checks every server runs (pure logic, in-process): ids, sizes, enums, numbers, YAML,
small error answers and pages that fit a message."""

from __future__ import annotations

from typing import Any

import nats.js.errors
import pytest
from google.rpc import error_details_pb2

from cosmos import errors
from cosmos.plato.v1 import step_service_pb2, workflow_service_pb2
from cosmos.runtime import paging, rpc_errors, validation
from cosmos.stratum.v1 import job_service_pb2, pool_service_pb2

pytestmark = pytest.mark.unit


def refused(request: object) -> list[tuple[str, str]]:
    with pytest.raises(errors.InvalidArgumentError) as caught:
        validation.check(request)  # type: ignore[arg-type]
    return [(v.field, v.description) for v in caught.value.violations]


@pytest.mark.parametrize("job_id", [">", "*", "a.b", "a b", "x" * 129, "a\x00"])
def test_ids_that_would_be_nats_subjects_or_keys_are_refused(job_id: str) -> None:
    [(field, description)] = refused(job_service_pb2.GetJobRequest(job_id=job_id))
    assert field == "job_id" and ("not valid" in description or "characters" in description)


def test_good_ids_pass() -> None:
    validation.check(job_service_pb2.GetJobRequest(job_id="job-0d7b0c2e51d64f5e"))
    validation.check(pool_service_pb2.GetAgentRequest(agent_id="gpu-host-1.example.com"))
    # Request ids of Plato's own making: workflow/step/attempt, with a cancel suffix.
    validation.check(job_service_pb2.CancelJobRequest(request_id="wf-1/encode[3]/2:cancel", job_id="job-1"))


def test_a_one_megabyte_id_is_named_without_being_echoed() -> None:
    [(field, description)] = refused(job_service_pb2.GetJobRequest(job_id="j" * (1 << 20)))
    assert field == "job_id" and len(description) < 200


def test_sizes_of_repeated_and_map_fields() -> None:
    many = job_service_pb2.SubmitJobRequest(request_id="r")
    many.spec.argv.extend(["x"] * 100_000)
    assert refused(many) == [("spec.argv", "100000 items; at most 4096")]
    big_env = job_service_pb2.SubmitJobRequest(request_id="r")
    big_env.spec.argv.append("true")
    big_env.spec.env["BLOB"] = "x" * (10 << 20)
    assert refused(big_env)[0][0] == "spec.env['BLOB']"
    bad_name = job_service_pb2.SubmitJobRequest(request_id="r")
    bad_name.spec.argv.append("true")
    bad_name.spec.env["A=B"] = "1"
    assert refused(bad_name)[0][0] == "spec.env['A=B']"


def test_unknown_enum_values_and_numbers_out_of_range() -> None:
    unknown = job_service_pb2.ListJobsRequest(state=99)  # type: ignore[arg-type]
    assert refused(unknown) == [("state", "99 is not a JobState value")]
    beat = step_service_pb2.HeartbeatStepRequest(request_id="r", workflow_id="w", step_id="s", attempt=1)
    for percent, word in (
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (-1.0, "below"),
        (101.0, "above"),
    ):
        beat.progress.percent = percent
        [(field, description)] = refused(beat)
        assert field == "progress.percent" and word in description
    beat.progress.percent = 50
    validation.check(beat)


def test_control_characters_in_names_are_refused_but_text_may_have_newlines() -> None:
    signal = workflow_service_pb2.SignalWorkflowRequest(request_id="r", workflow_id="w", signal_name="go\x07")
    assert refused(signal)[0][0] == "signal_name"
    submit = job_service_pb2.SubmitJobRequest(request_id="r")
    submit.spec.argv.append("true")
    submit.spec.display_name = "encode\nchunk"
    assert refused(submit)[0] == ("spec.display_name", "must not contain control characters")
    fail = step_service_pb2.FailStepRequest(
        request_id="r", workflow_id="w", step_id="s", attempt=1, error="line 1\nline 2"
    )
    validation.check(fail)


def test_structs_are_bounded_in_depth_and_numbers() -> None:
    start = workflow_service_pb2.StartWorkflowRequest(request_id="r", definition_id="d")
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(50):
        node["a"] = {}
        node = node["a"]
    start.input.update(deep)
    assert "nested deeper" in refused(start)[0][1]
    nan = workflow_service_pb2.StartWorkflowRequest(request_id="r", definition_id="d")
    nan.input.update({"x": float("nan")})
    assert refused(nan) == [("input.x", "numbers must be finite (JSON has no NaN or Infinity)")]


def test_durations_must_not_be_negative() -> None:
    submit = job_service_pb2.SubmitJobRequest(request_id="r")
    submit.spec.argv.append("true")
    submit.spec.timeout.seconds = -5
    assert refused(submit)[0][0] == "spec.timeout"


def test_deep_wide_and_huge_yaml_is_refused_before_parsing() -> None:
    with pytest.raises(errors.InvalidArgumentError, match="nested deeper"):
        validation.check_yaml("[" * 500 + "]" * 500, "source_yaml")
    with pytest.raises(errors.InvalidArgumentError, match="nested deeper"):
        validation.check_yaml("".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v", "y")
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(6)
    )
    with pytest.raises(errors.InvalidArgumentError, match="aliases expanded"):
        validation.check_yaml(laughs, "source_yaml")
    validation.check_yaml("workflow:\n  id: ok\n  rules: [{when: workflow.started, do: [a]}]\n", "y")


def test_answers_stay_small_whatever_they_echo() -> None:
    huge = "x" * (1 << 20)
    error = errors.NotFoundError(
        f"job {huge!r} does not exist",
        metadata={"job_id": huge},
        violations=[errors.FieldViolation(huge, huge)] * 100,
    )
    status = rpc_errors.status_proto(error)
    assert status.ByteSize() < 16 * 1024
    assert "more characters" in status.message


def test_unavailable_carries_retry_info() -> None:
    status = rpc_errors.status_proto(rpc_errors.nats_unavailable(ConnectionError()))
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    assert retry.retry_delay.seconds == 2


def test_a_watch_consumer_lost_with_a_nats_restart_is_unavailable_not_internal() -> None:
    lost = nats.js.errors.NotFoundError(code=404, err_code=10014, description="consumer not found")
    assert rpc_errors.as_rpc_error(lost).code.name == "UNAVAILABLE"
    other = nats.js.errors.BadRequestError(code=400, err_code=10999, description="something else")
    assert rpc_errors.as_rpc_error(other).code.name == "INTERNAL"


def test_unexpected_errors_become_internal_without_a_traceback() -> None:
    error = rpc_errors.as_rpc_error(RecursionError("maximum recursion depth exceeded" * 1000))
    assert error.code.name == "INTERNAL" and len(error.message) < 100


def test_pages_end_before_the_message_limit() -> None:
    items = [("x" * 1_000_000, i) for i in range(10)]
    page = paging.parse(10, "", "q")
    chunk, token = paging.slice_page(items, page, "q", size=lambda item: len(item[0]))
    assert len(chunk) == 3 and token
    rest, _ = paging.slice_page(items, paging.parse(10, token, "q"), "q", size=lambda item: len(item[0]))
    assert rest[0][1] == 3
    newest, cursor = paging.newest_first(
        items, lambda item: (item[1], str(item[1])), page, "q", size=lambda item: len(item[0])
    )
    assert [i for _, i in newest] == [9, 8, 7] and cursor
