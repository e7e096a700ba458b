"""Plato's transition counting: what one committed transition did is counted once, by the stamp the
machine gave it; a step touched without changing (a heartbeat) counts nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cosmos.plato import metrics
from cosmos.plato.v1 import engine_pb2, workflow_pb2
from cosmos.protocol import values
from cosmos.runtime.metrics import REGISTRY

pytestmark = pytest.mark.unit

SS = workflow_pb2.StepState
WS = workflow_pb2.WorkflowState
DEFINITION = "metrics-unit"


def count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"definition": DEFINITION, **labels}) or 0.0


def step(
    name: str, state: int, *, scheduled: datetime, closed: datetime | None = None
) -> workflow_pb2.StepExecution:
    made = workflow_pb2.StepExecution(step_id=name, step_name=name, state=state)  # type: ignore[arg-type]
    made.schedule_time.CopyFrom(values.timestamp(scheduled))
    if closed is not None:
        made.close_time.CopyFrom(values.timestamp(closed))
    return made


def test_one_transition_is_counted_by_what_it_stamped() -> None:
    now = datetime.now(UTC)
    earlier = now - timedelta(seconds=7)
    record = engine_pb2.WorkflowRecord()
    record.workflow.definition_id = DEFINITION
    record.workflow.state = WS.WORKFLOW_STATE_RUNNING
    record.workflow.start_time.CopyFrom(values.timestamp(now))
    touched = [
        step("notify", SS.STEP_STATE_COMPLETED, scheduled=now, closed=now),  # a builtin: both at once
        step("encode", SS.STEP_STATE_COMPLETED, scheduled=earlier, closed=now),
        step("probe", SS.STEP_STATE_RETRY_WAIT, scheduled=earlier, closed=now),  # failed, retry coming
        step("package", SS.STEP_STATE_RUNNING, scheduled=earlier),  # a heartbeat: nothing new
        step("publish", SS.STEP_STATE_SCHEDULED, scheduled=now),
    ]
    metrics.observe_transition(record, touched, now)
    assert count("cosmos_plato_workflows_total", state="started") == 1
    assert count("cosmos_plato_workflows_total", state="completed") == 0
    assert count("cosmos_plato_steps_total", step="notify", state="scheduled") == 1
    assert count("cosmos_plato_steps_total", step="notify", state="completed") == 1
    assert count("cosmos_plato_steps_total", step="encode", state="completed") == 1
    assert count("cosmos_plato_step_duration_seconds_sum", step="encode") == 7
    assert count("cosmos_plato_steps_total", step="probe", state="retried") == 1
    assert count("cosmos_plato_steps_total", step="package", state="scheduled") == 0
    assert count("cosmos_plato_step_duration_seconds_count", step="package") == 0
    assert count("cosmos_plato_steps_total", step="publish", state="scheduled") == 1

    # The next transition ends the workflow; the steps it did not touch are not counted again.
    later = now + timedelta(seconds=1)
    record.workflow.state = WS.WORKFLOW_STATE_COMPLETED
    record.workflow.close_time.CopyFrom(values.timestamp(later))
    metrics.observe_transition(record, [], later)
    assert count("cosmos_plato_workflows_total", state="started") == 1
    assert count("cosmos_plato_workflows_total", state="completed") == 1
    assert count("cosmos_plato_steps_total", step="encode", state="completed") == 1


def test_cached_workflows_are_shown_by_state() -> None:
    metrics.cached_states([WS.WORKFLOW_STATE_RUNNING, WS.WORKFLOW_STATE_RUNNING, WS.WORKFLOW_STATE_PENDING])
    assert REGISTRY.get_sample_value("cosmos_plato_workflows_cached", {"state": "running"}) == 2
    assert REGISTRY.get_sample_value("cosmos_plato_workflows_cached", {"state": "pending"}) == 1
    assert REGISTRY.get_sample_value("cosmos_plato_workflows_cached", {"state": "cancelling"}) == 0
