"""What a test holds of a workflow that :class:`cosmos.plato.testing.WorkflowTestEnv` runs: its state,
and the inputs a test sends it (:class:`WorkflowRun`, re-exported by :mod:`cosmos.plato.testing`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cosmos.plato.engine import machine
from cosmos.plato.engine.state import WorkflowState
from cosmos.plato.language import model
from cosmos.plato.v1 import engine_pb2, events_pb2, workflow_pb2
from cosmos.protocol import inputs, values

if TYPE_CHECKING:
    from cosmos.plato.testing import WorkflowTestEnv


@dataclass
class RunningWorkflow:
    """What the environment keeps of one workflow: its definition, state, history and tasks."""

    definition: model.Definition
    state: WorkflowState
    history: list[events_pb2.WorkflowEvent] = field(default_factory=list)
    tasks: list[events_pb2.StepTask] = field(default_factory=list)


class WorkflowRun:
    """One workflow started by a :class:`WorkflowTestEnv`: its state, and what a test can send it."""

    def __init__(self, env: WorkflowTestEnv, workflow_id: str) -> None:
        self.env = env
        self.workflow_id = workflow_id

    @property
    def _wf(self) -> RunningWorkflow:
        return self.env._workflows[self.workflow_id]

    @property
    def workflow(self) -> workflow_pb2.Workflow:
        """The workflow as GetWorkflow shows it, every step included."""
        return self._wf.state.workflow()

    @property
    def state(self) -> int:
        return self._wf.state.record.workflow.state

    @property
    def done(self) -> bool:
        return self.state in machine.TERMINAL_WORKFLOW_STATES

    @property
    def history(self) -> list[events_pb2.WorkflowEvent]:
        """Every history event so far, in sequence order."""
        return list(self._wf.history)

    def event_names(self) -> list[str]:
        """``TYPE step_id`` per history event (``STEP_COMPLETED probe``), for readable assertions."""
        names = []
        for event in self._wf.history:
            kind = events_pb2.WorkflowEventType.Name(event.type).removeprefix("WORKFLOW_EVENT_TYPE_")
            names.append(f"{kind} {event.step_id}".strip())
        return names

    @property
    def tasks(self) -> list[events_pb2.StepTask]:
        """Every task sent to a handler, in order (one per attempt)."""
        return list(self._wf.tasks)

    def steps(self) -> dict[str, workflow_pb2.StepExecution]:
        """Step instances by id."""
        return {s.step_id: s for s in self._wf.state.table.steps()}

    def step(self, step_id: str) -> workflow_pb2.StepExecution:
        found = self._wf.state.table.get(step_id)
        if found is None:
            raise KeyError(f"no step {step_id!r} in {self.workflow_id}")
        return found

    def output(self) -> dict[str, Any]:
        return values.struct_to_dict(self._wf.state.record.workflow.output)

    # ----------------------------------------------------------------- driving it

    def wait(self, max_seconds: float = 30 * 24 * 3600.0) -> workflow_pb2.Workflow:
        """Skip the clock from timer to timer until the workflow ends, nothing is due any more, or
        ``max_seconds`` have passed; the workflow as it then is."""
        until = self.env.now + timedelta(seconds=max_seconds)
        timers = self.env._timers
        while not self.done and timers and timers[0][0] <= until:
            self.env._fire_next()
        return self.workflow

    def sleep(self, seconds: float) -> None:
        """:meth:`WorkflowTestEnv.sleep`."""
        self.env.sleep(seconds)

    def signal(self, name: str, payload: Mapping[str, Any] | None = None) -> None:
        signal = engine_pb2.SignalInput(name=name)
        signal.payload.update(dict(payload or {}))
        self._send(engine_pb2.EngineInput(workflow_id=self.workflow_id, signal=signal))

    def cancel(self, reason: str = "") -> None:
        cancel = engine_pb2.CancelInput(reason=reason)
        self._send(engine_pb2.EngineInput(workflow_id=self.workflow_id, cancel=cancel))

    def retry(self, request_id: str = "retry") -> None:
        """RetryWorkflow: rerun what did not complete."""
        resume = engine_pb2.ResumeInput(request_id=request_id)
        self._send(engine_pb2.EngineInput(workflow_id=self.workflow_id, resume=resume))

    def reset(self, step_name: str, request_id: str = "reset") -> None:
        """ResetWorkflow to ``step_name``."""
        resume = engine_pb2.ResumeInput(request_id=request_id, step_name=step_name)
        self._send(engine_pb2.EngineInput(workflow_id=self.workflow_id, resume=resume))

    def complete(self, step_id: str, output: Mapping[str, Any] | None = None) -> None:
        """Answer the current attempt of ``step_id`` with success, as its handler would."""
        result = engine_pb2.StepResultInput(step_id=step_id, attempt=self.step(step_id).attempt, success=True)
        result.output.update(dict(output or {}))
        self._send(engine_pb2.EngineInput(workflow_id=self.workflow_id, result=result))

    def fail(self, step_id: str, error: str = "failed", *, non_retryable: bool = False) -> None:
        """Answer the current attempt of ``step_id`` with a failure, as its handler would."""
        result = engine_pb2.StepResultInput(
            step_id=step_id,
            attempt=self.step(step_id).attempt,
            success=False,
            error=error,
            non_retryable=non_retryable,
        )
        self._send(engine_pb2.EngineInput(workflow_id=self.workflow_id, result=result))

    def idempotency_key(self, step_id: str) -> str:
        """The key of the current attempt of ``step_id`` (what :attr:`WorkflowTestEnv.cancelled` holds)."""
        return inputs.idempotency_key(self.workflow_id, step_id, self.step(step_id).attempt)

    def _send(self, inp: engine_pb2.EngineInput) -> None:
        self.env._post(self.workflow_id, inp)
        self.env._drain()
