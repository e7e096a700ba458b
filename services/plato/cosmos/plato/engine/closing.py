"""Ending a workflow: completed once nothing runs (with its output), or failed; either way its parent,
if any, is told.

A layer of the state machine (see :mod:`cosmos.plato.engine.core`): no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cosmos.plato.engine.core import ACTIVE_STEP_STATES, ET, SS, TERMINAL_WORKFLOW_STATES, WS
from cosmos.plato.engine.step_dispatch import StepDispatch
from cosmos.plato.v1 import engine_pb2, workflow_pb2
from cosmos.protocol import subjects, values


class Closing(StepDispatch):
    """Closes the workflow."""

    def _finish_if_quiet(self) -> None:
        if self.wf.state != WS.WORKFLOW_STATE_RUNNING:
            return
        if self.table.count(None, ACTIVE_STEP_STATES):
            return
        if self.record.escalated_failure:
            self.wf.state = WS.WORKFLOW_STATE_FAILED
            self.wf.failure_reason = self.record.escalated_failure
            self._close(ET.WORKFLOW_EVENT_TYPE_WORKFLOW_FAILED, error=self.wf.failure_reason)
            return
        self.wf.state = WS.WORKFLOW_STATE_COMPLETED
        if self.definition.output is not None:
            output = self.definition.output.render(self._context())
            self.wf.output.update(output if isinstance(output, dict) else {"value": output})
        else:
            last = self._last_completed_step()
            if last is not None:
                self.wf.output.update({last.step_name: values.struct_to_dict(last.output)})
        self._close(ET.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED, payload=values.struct_to_dict(self.wf.output))

    def _last_completed_step(self) -> workflow_pb2.StepExecution | None:
        done = [s for s in self.table.steps() if s.state == SS.STEP_STATE_COMPLETED]
        return max(
            done, key=lambda s: (values.moment(s.close_time), s.step_id == self._last_completed), default=None
        )

    def _fail_workflow(self, reason: str) -> None:
        if self.wf.state in TERMINAL_WORKFLOW_STATES:
            return
        self._stop_running_steps(f"workflow failed: {reason}")
        self.wf.state = WS.WORKFLOW_STATE_FAILED
        self.wf.failure_reason = reason
        self._close(ET.WORKFLOW_EVENT_TYPE_WORKFLOW_FAILED, error=reason)

    def _close(self, event: int, *, payload: Mapping[str, Any] | None = None, error: str = "") -> None:
        self.wf.close_time.CopyFrom(self._stamp)
        # Timers still pending in step records fire into a closed workflow, which ignores them.
        self._event(event, payload=payload, error=error)
        if self.wf.parent_workflow_id:
            inp = engine_pb2.EngineInput(
                workflow_id=self.wf.parent_workflow_id,
                child=engine_pb2.ChildResultInput(
                    step_id=self.wf.parent_step_id,
                    attempt=self.record.parent_attempt,
                    child_workflow_id=self.wf.workflow_id,
                    state=self.wf.state,
                    output=self.wf.output,
                    error=self.wf.failure_reason,
                ),
            )
            self._outbox(
                subjects.inbox(self.wf.parent_workflow_id),
                inp.SerializeToString(),
                msg_id=f"{self.wf.workflow_id}:child-result",
            )
