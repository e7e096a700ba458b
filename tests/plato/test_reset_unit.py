"""The retry and reset transitions (cosmos.plato.engine.reset), in process: the state machine alone,
driven input by input, with no NATS (the API tests in test_resume.py run them end to end)."""

from __future__ import annotations

import pytest
from engine_harness import Run, complete

from cosmos.plato.v1 import engine_pb2, events_pb2, workflow_pb2
from cosmos.protocol import values

pytestmark = pytest.mark.unit

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
ET = events_pb2.WorkflowEventType


def failed_in_the_fan_out() -> Run:
    run = Run()
    run.report("probe")
    run.report("work[1]", ok=False)  # work[2] is held back by maxConcurrency 2
    assert run.wf.state == WS.WORKFLOW_STATE_FAILED
    assert run.ids() == ["probe", "work[0]", "work[1]"]
    assert run.step("work[0]").state == SS.STEP_STATE_CANCELLED  # stopped by the failure
    return run


def test_retry_reruns_the_failed_instance_keeps_completed_ones_and_goes_on() -> None:
    run = failed_in_the_fan_out()
    failed_seq = run.wf.last_sequence
    run.resume("r1")
    assert run.wf.state == WS.WORKFLOW_STATE_RUNNING and not run.wf.failure_reason
    # The failed and the cancelled instance run again as their next attempt; probe is kept.
    assert run.step("work[1]").attempt == 2 and run.step("work[1]").state == SS.STEP_STATE_SCHEDULED
    assert run.step("work[0]").attempt == 2 and run.step("work[0]").state == SS.STEP_STATE_SCHEDULED
    assert run.step("probe").state == SS.STEP_STATE_COMPLETED and run.step("probe").attempt == 1
    # The history goes on after the failure: one RETRIED event, the next sequence number.
    retried = run.events[failed_seq]
    assert retried.sequence == failed_seq + 1 and retried.type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_RETRIED
    assert values.struct_to_dict(retried.payload)["rerun"] == ["work[0]", "work[1]"]
    # The reopened fan-out starts the item it held back, and the fan-in fires once all are done.
    run.report("work[0]")
    assert "work[2]" in run.ids()
    run.report("work[1]")
    assert "merge" not in run.ids()
    run.report("work[2]")
    run.report("merge")
    run.report("publish")
    assert run.wf.state == WS.WORKFLOW_STATE_COMPLETED
    assert [e.sequence for e in run.events] == list(range(1, len(run.events) + 1))


def test_a_report_of_the_attempt_before_the_retry_is_ignored() -> None:
    run = failed_in_the_fan_out()
    run.resume("r1")
    before = run.wf.last_sequence
    run.report("work[1]", attempt=1)  # the failed attempt's late success
    assert run.step("work[1]").state == SS.STEP_STATE_SCHEDULED and run.wf.last_sequence == before


def test_the_same_request_id_is_applied_once() -> None:
    run = failed_in_the_fan_out()
    run.resume("r1")
    run.report("work[1]", ok=False)
    assert run.wf.state == WS.WORKFLOW_STATE_FAILED
    assert run.step("work[1]").attempt == 2
    run.resume("r1")  # a redelivery, or the request sent again
    assert run.wf.state == WS.WORKFLOW_STATE_FAILED and run.step("work[1]").attempt == 2
    run.resume("r2")
    assert run.wf.state == WS.WORKFLOW_STATE_RUNNING and run.step("work[1]").attempt == 3


def test_retry_of_a_running_or_completed_workflow_changes_nothing() -> None:
    run = Run()
    run.resume("r1")
    assert run.wf.state == WS.WORKFLOW_STATE_RUNNING and not run.state.record.resume_request_ids
    for step_id in ("probe", "work[0]", "work[1]", "work[2]", "merge", "publish"):
        run.report(step_id)
    assert run.wf.state == WS.WORKFLOW_STATE_COMPLETED
    run.resume("r2")
    assert run.wf.state == WS.WORKFLOW_STATE_COMPLETED


def test_reset_reruns_the_step_and_everything_downstream_with_the_new_input() -> None:
    run = Run()
    complete(run)
    run.resume("r1", "work", input={"parts": ["x", "y"]})
    assert run.wf.state == WS.WORKFLOW_STATE_RUNNING
    # probe (upstream) kept; the fan-out fired again over the new input; merge/publish discarded.
    assert run.ids() == ["probe", "work[0]", "work[1]"]
    assert run.step("probe").state == SS.STEP_STATE_COMPLETED and run.step("probe").attempt == 1
    assert [values.struct_to_dict(run.step(i).fanout_vars)["part"] for i in ("work[0]", "work[1]")] == [
        "x",
        "y",
    ]
    # Same ids as the discarded instances, at a higher attempt: the old ones are fenced off.
    assert run.step("work[0]").attempt == 2
    assert set(run.state.table.retired) == {"work[2]", "merge", "publish"}
    assert all(run.state.table.stored(i).discarded for i in ("work[2]", "merge", "publish"))
    event = next(e for e in run.events if e.type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_RESET)
    payload = values.struct_to_dict(event.payload)
    assert payload["step_name"] == "work" and payload["discarded_count"] == 5 and payload["input_changed"]
    run.report("work[0]", attempt=1)  # a report from before the reset
    assert run.step("work[0]").state == SS.STEP_STATE_SCHEDULED
    for step_id in ("work[0]", "work[1]", "merge", "publish"):
        run.report(step_id)
    assert run.wf.state == WS.WORKFLOW_STATE_COMPLETED
    assert run.step("merge").attempt == 2 and not run.state.table.retired.get("merge")
    assert "work[2]" in run.state.table.retired  # not scheduled again: its tombstone stays


def test_reset_to_the_first_step_reruns_everything() -> None:
    run = Run()
    complete(run)
    run.resume("r1", "probe")
    assert run.ids() == ["probe"] and run.step("probe").attempt == 2
    assert len(run.state.table.retired) == 5
    assert not run.state.record.activations or all(
        a.kind != engine_pb2.ACTIVATION_KIND_FANOUT for a in run.state.record.activations
    )


def test_reset_of_a_sequence_step_refires_its_rule() -> None:
    run = Run()
    complete(run)
    run.resume("r1", "publish")
    # merge and publish came from one rule firing ([merge, publish]): both run again, in order.
    assert run.ids() == ["probe", "work[0]", "work[1]", "work[2]", "merge"]
    run.report("merge")
    run.report("publish")
    assert run.wf.state == WS.WORKFLOW_STATE_COMPLETED
    assert run.step("merge").attempt == 2 and run.step("publish").attempt == 2


def test_reset_to_a_step_that_never_ran_changes_nothing() -> None:
    run = failed_in_the_fan_out()
    run.resume("r1", "merge")
    assert run.wf.state == WS.WORKFLOW_STATE_FAILED
