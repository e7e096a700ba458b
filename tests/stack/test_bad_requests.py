"""Each bad input of issue 12 against real Plato, Stratum and Optimus processes (mutual TLS, the admin):
the right code, a small answer naming the field, and nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import security_harness
from servers import ServiceProcess

from cosmos.optimus.v1 import encode_service_pb2, encode_service_pb2_grpc
from cosmos.plato.v1 import (
    step_service_pb2,
    step_service_pb2_grpc,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from cosmos.runtime import rpc_errors
from cosmos.stratum.v1 import job_service_pb2, job_service_pb2_grpc, pool_service_pb2, pool_service_pb2_grpc

BAD = grpc.StatusCode.INVALID_ARGUMENT
MB = 1 << 20


@dataclass
class Stubs:
    workflows: workflow_service_pb2_grpc.WorkflowServiceAsyncStub
    steps: step_service_pb2_grpc.StepServiceAsyncStub
    jobs: job_service_pb2_grpc.JobServiceAsyncStub
    pool: pool_service_pb2_grpc.PoolServiceAsyncStub
    encodes: encode_service_pb2_grpc.EncodeServiceAsyncStub
    plato: grpc.aio.Channel


@pytest.fixture(scope="module")
def targets(
    module_start_service: Callable[..., ServiceProcess], module_nats_url: str
) -> tuple[str, str, str]:
    """One stack for the module: every test here is refused, so none leaves anything behind."""
    plato = module_start_service("plato", "--nats", module_nats_url)
    stratum = module_start_service("stratum", "--nats", module_nats_url)
    optimus = module_start_service("optimus", "--plato", plato.target)
    return plato.target, stratum.target, optimus.target


@pytest.fixture
async def stubs(targets: tuple[str, str, str]) -> AsyncIterator[Stubs]:
    plato, stratum, optimus = targets
    async with (
        security_harness.channel(plato) as p,
        security_harness.channel(stratum) as s,
        security_harness.channel(optimus) as o,
    ):
        yield Stubs(
            workflow_service_pb2_grpc.WorkflowServiceStub(p),
            step_service_pb2_grpc.StepServiceStub(p),
            job_service_pb2_grpc.JobServiceStub(s),
            pool_service_pb2_grpc.PoolServiceStub(s),
            encode_service_pb2_grpc.EncodeServiceStub(o),
            p,
        )


async def refused(call: Any, field: str, code: grpc.StatusCode = BAD) -> None:
    """``call`` fails with ``code``, a short message, and a violation naming ``field``."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == code, (err.code(), err.details())
    assert len(err.details() or "") <= rpc_errors.MAX_MESSAGE
    _, violations = rpc_errors.details_of(err)
    assert field in [v.field for v in violations], [v.field for v in violations]


def spec_request(**fields: Any) -> job_service_pb2.SubmitJobRequest:
    request = job_service_pb2.SubmitJobRequest(request_id=fields.pop("request_id", "submit-1"))
    request.spec.argv.extend(fields.pop("argv", ["true"]))
    request.spec.env.update(fields.pop("env", {}))
    return request


@pytest.mark.parametrize("bad_id", [">", "*", "a.b", "a b", "x" * MB])
async def test_ids_that_would_reach_nats_subjects_or_keys(stubs: Stubs, bad_id: str) -> None:
    await refused(
        stubs.workflows.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(workflow_id=bad_id)),
        "workflow_id",
    )
    await refused(stubs.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=bad_id)), "job_id")
    await refused(stubs.jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=bad_id)).read(), "job_id")
    await refused(stubs.encodes.GetEncode(encode_service_pb2.GetEncodeRequest(encode_id=bad_id)), "encode_id")
    revoke = pool_service_pb2.RevokeAgentRequest(request_id="r", agent_id=bad_id)
    if bad_id != "a.b":  # dots are fine in agent ids (host names); they are KV keys, not subjects
        await refused(stubs.pool.RevokeAgent(revoke), "agent_id")


async def test_a_one_megabyte_request_id(stubs: Stubs) -> None:
    huge = "r" * MB
    start = workflow_service_pb2.StartWorkflowRequest(request_id=huge, definition_id="anything")
    await refused(stubs.workflows.StartWorkflow(start), "request_id")
    # Through Optimus it used to come back UNAVAILABLE: Optimus called every failure of Plato's batch
    # start an outage, and Plato failed the whole batch when the start did not fit a NATS message.
    submit = encode_service_pb2.SubmitEncodeRequest(request_id=huge, source_uri="file:///x.mp4")
    await refused(stubs.encodes.SubmitEncode(submit), "request_id")
    await refused(stubs.jobs.SubmitJob(spec_request(request_id=huge)), "request_id")


async def test_big_env_and_many_argv_items_leave_no_job(stubs: Stubs) -> None:
    await refused(stubs.jobs.SubmitJob(spec_request(env={"BLOB": "x" * (10 * MB)})), "spec.env['BLOB']")
    await refused(
        stubs.jobs.SubmitJob(spec_request(env={f"V{i}": "x" * 1000 for i in range(900)})), "spec.env"
    )
    await refused(stubs.jobs.SubmitJob(spec_request(argv=["x"] * 100_000)), "spec.argv")
    # Wholly refused: no ghost job to retry, cancel or list.
    listed = await stubs.jobs.ListJobs(job_service_pb2.ListJobsRequest())
    assert not listed.jobs


async def test_unknown_enum_values(stubs: Stubs) -> None:
    await refused(stubs.jobs.ListJobs(job_service_pb2.ListJobsRequest(state=99)), "state")  # type: ignore[arg-type]
    await refused(
        stubs.workflows.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest(state=99)),  # type: ignore[arg-type]
        "state",
    )
    submit = encode_service_pb2.SubmitEncodeRequest(request_id="r", quality=99)  # type: ignore[arg-type]
    await refused(stubs.encodes.SubmitEncode(submit), "quality")


@pytest.mark.parametrize("percent", [float("nan"), -1.0, float("inf")])
async def test_heartbeat_percent_must_be_a_percentage(stubs: Stubs, percent: float) -> None:
    beat = step_service_pb2.HeartbeatStepRequest(
        request_id="r", workflow_id="wf-1", step_id="s", attempt=1, task_token=b"t"
    )
    beat.progress.percent = percent
    await refused(stubs.steps.HeartbeatStep(beat), "progress.percent")


async def test_control_characters_in_names(stubs: Stubs) -> None:
    signal = workflow_service_pb2.SignalWorkflowRequest(
        request_id="r", workflow_id="wf-1", signal_name="go\x1b[2J"
    )
    await refused(stubs.workflows.SignalWorkflow(signal), "signal_name")
    named = spec_request()
    named.spec.display_name = "chunk\x00 3"
    await refused(stubs.jobs.SubmitJob(named), "spec.display_name")


async def test_deep_yaml_is_invalid_argument_not_a_traceback(stubs: Stubs) -> None:
    deep = "workflow:\n  id: deep\n  rules: " + "[" * 500 + "]" * 500 + "\n"
    request = workflow_service_pb2.RegisterDefinitionRequest(request_id="r", source_yaml=deep)
    await refused(stubs.workflows.RegisterDefinition(request), "source_yaml")
    listed = await stubs.workflows.ListDefinitions(workflow_service_pb2.ListDefinitionsRequest())
    assert "deep" not in [d.definition_id for d in listed.definitions]


async def test_a_request_that_does_not_decode(stubs: Stubs) -> None:
    # Field 1 (workflow_id) as a string holding invalid UTF-8: grpc would answer INTERNAL.
    raw = stubs.plato.unary_unary("/cosmos.plato.v1.WorkflowService/GetWorkflow", None, None)
    await refused(raw(b"\x0a\x02\xff\xfe"), "")


async def test_listing_and_health_still_work(stubs: Stubs) -> None:
    await stubs.jobs.ListJobs(job_service_pb2.ListJobsRequest())
    await stubs.workflows.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest())
    await stubs.encodes.ListProfiles(encode_service_pb2.ListProfilesRequest())
