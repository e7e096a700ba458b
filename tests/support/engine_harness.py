"""The state machine alone, in process: one workflow's state and the machine applied to it input by
input, with no NATS (for tests of transitions, e.g. retry and reset)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cosmos.plato.engine import machine
from cosmos.plato.engine.state import WorkflowState
from cosmos.plato.language import parser
from cosmos.plato.v1 import engine_pb2, events_pb2, workflow_pb2

WS = workflow_pb2.WorkflowState

# No retry policies: a failure fails the workflow at once (any.failed, retries exhausted).
PIPELINE = """\
workflow:
  id: pipeline
  rules:
    - when: workflow.started
      do: [probe]
    - when: probe.completed
      do:
        - fanout: {for: each part in input.parts, run: work, maxConcurrency: 2}
    - when: all work.completed
      do: [merge, publish]
"""


class Run:
    """One workflow's state and the machine applied to it, one input per transition."""

    def __init__(self, source: str = PIPELINE, input: dict[str, Any] | None = None) -> None:
        self.definition = parser.parse(source)
        start = engine_pb2.StartInput(definition_id=self.definition.id, definition_version=1)
        start.input.update(input if input is not None else {"parts": ["a", "b", "c"]})
        self.state = WorkflowState(machine.new_record("wf-1", start, datetime.now(UTC)))
        self.events: list[events_pb2.WorkflowEvent] = []
        self.apply(engine_pb2.EngineInput(workflow_id="wf-1", start=start))

    def apply(self, inp: engine_pb2.EngineInput) -> None:
        m = machine.Machine(self.state, self.definition, datetime.now(UTC), lambda: 0.0)
        m.begin()
        m.apply(inp)
        for message in self.state.record.outbox:
            if message.subject.startswith("cosmos.workflow.events."):
                self.events.append(events_pb2.WorkflowEvent.FromString(message.data))

    def step(self, step_id: str) -> workflow_pb2.StepExecution:
        found = self.state.table.get(step_id)
        assert found is not None, step_id
        return found

    def report(self, step_id: str, *, ok: bool = True, attempt: int = 0, output: Any = None) -> None:
        step = self.step(step_id) if attempt == 0 else None
        result = engine_pb2.StepResultInput(
            step_id=step_id, attempt=attempt or (step.attempt if step else 1), success=ok, error="boom"
        )
        if ok:
            result.output.update(output or {"by": step_id})
        self.apply(engine_pb2.EngineInput(workflow_id="wf-1", result=result))

    def resume(self, request_id: str, step_name: str = "", input: dict[str, Any] | None = None) -> None:
        resume = engine_pb2.ResumeInput(request_id=request_id, step_name=step_name)
        if input is not None:
            resume.input.update(input)
        self.apply(engine_pb2.EngineInput(workflow_id="wf-1", resume=resume))

    @property
    def wf(self) -> workflow_pb2.Workflow:
        return self.state.record.workflow

    def ids(self) -> list[str]:
        return [s.step_id for s in self.state.table.steps()]


def complete(run: Run) -> None:
    for step_id in ("probe", "work[0]", "work[1]", "work[2]", "merge", "publish"):
        run.report(step_id)
    assert run.wf.state == WS.WORKFLOW_STATE_COMPLETED
