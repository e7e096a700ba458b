"""The workflow state machine: applies one :class:`EngineInput` to a workflow's state.

The state is a :class:`~cosmos.plato.engine.state.WorkflowState`: a header record plus a table of
step records, kept in memory across transitions; the machine marks every step it changes
(``table.touch``) so that only those are written. Pure and deterministic given ``now`` and ``rand``:
no I/O. Every effect (history events, step tasks, timers, notices, messages to parents and children)
is appended to ``record.outbox`` as a NATS message with a de-duplication id; the evaluator
(:mod:`cosmos.plato.engine.evaluator`) persists the state before publishing them
(:func:`cosmos.plato.records.apply_effects`). Each kind of input is idempotent against the state
(fencing by step attempt, by state, by timer id), so redelivered inputs change nothing. Semantics:
``docs/workflow-language.md``.

This module holds the inputs; the rest of the machine is in the layers below :class:`Machine`
(listed in :mod:`cosmos.plato.engine.core`), pure like it.
"""

from __future__ import annotations

from datetime import timedelta

from cosmos.plato.engine import reset
from cosmos.plato.engine.closing import Closing
from cosmos.plato.engine.core import (
    ACTIVE_STEP_STATES,
    AS,
    ET,
    FAILED_STEP_STATES,
    SS,
    TERMINAL_WORKFLOW_STATES,
    TP,
    WS,
    WorkflowFailed,
    new_record,
)
from cosmos.plato.language import model
from cosmos.plato.v1 import engine_pb2
from cosmos.protocol import values

# The names importers have always taken from here.
__all__ = [
    "ACTIVE_STEP_STATES",
    "FAILED_STEP_STATES",
    "TERMINAL_WORKFLOW_STATES",
    "Machine",
    "WorkflowFailed",
    "new_record",
]


class Machine(Closing):
    """Applies inputs to one workflow's state under one definition."""

    # ----------------------------------------------------------------- entry points

    def begin(self) -> None:
        """Start a transition: the previous transition's effects are already published.

        Done activations are dropped from the header (nothing looks a finished activation up: a
        missing parent reads as a finished one), so it holds only what still runs, and what failed:
        a retry (:mod:`cosmos.plato.engine.reset`) reopens a failed step's activations.
        """
        del self.record.outbox[:]
        finished = [a for a in self.record.activations if a.state == AS.ACTIVATION_STATE_DONE]
        for act in finished:
            self.record.activations.remove(act)
            self._acts.pop(act.activation_id, None)
            self.table.items.pop(act.activation_id, None)

    def fail(self, reason: str) -> None:
        """Fail the workflow for a reason outside its rules (e.g. its state outgrowing the store):
        running steps are stopped, as for any failure. Its history still starts with
        WORKFLOW_STARTED."""
        if self.wf.state == WS.WORKFLOW_STATE_PENDING:
            self.wf.start_time.CopyFrom(self._stamp)
            self._event(ET.WORKFLOW_EVENT_TYPE_WORKFLOW_STARTED, payload_struct=self.wf.input)
        self._fail_workflow(reason)
        self.wf.update_time.CopyFrom(self._stamp)

    def apply(self, inp: engine_pb2.EngineInput) -> None:
        """Apply one input; effects go to ``record.outbox``."""
        kind = inp.WhichOneof("kind")
        if self.wf.state in TERMINAL_WORKFLOW_STATES and kind != "resume":
            return
        try:
            if kind == "resume":
                reset.resume(self, inp.resume)  # the one input a finished workflow takes
            elif kind == "start":
                self._start()
            elif self.wf.state == WS.WORKFLOW_STATE_PENDING:
                return  # nothing but a start moves a PENDING workflow
            elif kind == "result":
                self._result(inp.result)
            elif kind == "heartbeat":
                self._heartbeat(inp.heartbeat)
            elif kind == "timer":
                self._timer(inp.timer)
            elif kind == "signal":
                self._signal(inp.signal)
            elif kind == "cancel":
                self._cancel(inp.cancel)
            elif kind == "child":
                self._child_result(inp.child)
            while self._deferred:
                self._deferred.pop(0)()
            self._finish_if_quiet()
        except WorkflowFailed as exc:
            self._fail_workflow(exc.reason)
        self.wf.update_time.CopyFrom(self._stamp)

    # ----------------------------------------------------------------- inputs

    def _start(self) -> None:
        if self.wf.state != WS.WORKFLOW_STATE_PENDING:
            return
        self.wf.state = WS.WORKFLOW_STATE_RUNNING
        self.wf.start_time.CopyFrom(self._stamp)
        self.record.trace_headers.update(self.trace_headers)
        self._event(ET.WORKFLOW_EVENT_TYPE_WORKFLOW_STARTED, payload_struct=self.wf.input)
        self._evaluate(model.Event(model.EventKind.WORKFLOW_STARTED))

    def _result(self, result: engine_pb2.StepResultInput) -> None:
        step = self._live_step(result.step_id, result.attempt)
        if step is None:
            return
        if result.success:
            size = result.output.ByteSize()
            if size > self.max_value_bytes:
                self._step_failed(
                    step,
                    f"output of {size:,} bytes exceeds the limit of {self.max_value_bytes:,} bytes",
                    SS.STEP_STATE_FAILED,
                    non_retryable=True,
                )
                return
            self._complete_step(step, values.struct_to_dict(result.output))
        else:
            self._step_failed(step, result.error or "step failed", SS.STEP_STATE_FAILED, result.non_retryable)

    def _heartbeat(self, beat: engine_pb2.StepHeartbeatInput) -> None:
        step = self._live_step(beat.step_id, beat.attempt)
        if step is None:
            return
        first = step.state == SS.STEP_STATE_SCHEDULED
        if first:
            step.state = SS.STEP_STATE_RUNNING
            step.start_time.CopyFrom(self._stamp)
            self._event(ET.WORKFLOW_EVENT_TYPE_STEP_STARTED, step=step)
        step.last_heartbeat_time.CopyFrom(self._stamp)
        if beat.HasField("progress"):
            step.progress.CopyFrom(beat.progress)
            self._event(ET.WORKFLOW_EVENT_TYPE_STEP_HEARTBEAT, step=step, progress=beat.progress)

    def _timer(self, fired: engine_pb2.TimerInput) -> None:
        step = self.table.get(fired.step_id)
        if step is None:
            return
        timers = self.table.record(fired.step_id).timers
        pending = [t for t in timers if t.timer_id == fired.timer_id]
        if not pending:
            return
        timers.remove(pending[0])
        self.table.touch(step.step_id)
        if step.attempt != fired.attempt:
            return
        purpose = fired.purpose
        if purpose == TP.TIMER_PURPOSE_RETRY and step.state == SS.STEP_STATE_RETRY_WAIT:
            step.attempt += 1
            self._dispatch(step)
        elif purpose == TP.TIMER_PURPOSE_SLEEP and step.state == SS.STEP_STATE_RUNNING:
            self._complete_step(step, {"slept": True})
        elif purpose == TP.TIMER_PURPOSE_SCHEDULE_TO_START and step.state == SS.STEP_STATE_SCHEDULED:
            self._timed_out(step, "scheduleToStart")
        elif purpose == TP.TIMER_PURPOSE_START_TO_CLOSE and step.state in (
            SS.STEP_STATE_SCHEDULED,
            SS.STEP_STATE_RUNNING,
        ):
            self._timed_out(step, "startToClose")
        elif purpose == TP.TIMER_PURPOSE_HEARTBEAT and step.state in (
            SS.STEP_STATE_SCHEDULED,
            SS.STEP_STATE_RUNNING,
        ):
            limit = self._step_def(step).timeouts.heartbeat or 0.0
            last = step.last_heartbeat_time if step.HasField("last_heartbeat_time") else step.schedule_time
            due = values.moment(last) + timedelta(seconds=limit)
            if due > self.now:
                self._set_timer(step, TP.TIMER_PURPOSE_HEARTBEAT, due)
            else:
                self._timed_out(step, "heartbeat")

    def _signal(self, signal: engine_pb2.SignalInput) -> None:
        self.record.signals[signal.name].CopyFrom(signal.payload)
        self._ctx = None
        self._event(
            ET.WORKFLOW_EVENT_TYPE_WORKFLOW_SIGNALED,
            payload={"name": signal.name, "payload": values.struct_to_dict(signal.payload)},
        )
        self._evaluate(model.Event(model.EventKind.SIGNAL, signal=signal.name))

    def _cancel(self, cancel: engine_pb2.CancelInput) -> None:
        self.wf.state = WS.WORKFLOW_STATE_CANCELLING
        self._event(ET.WORKFLOW_EVENT_TYPE_WORKFLOW_CANCEL_REQUESTED, error=cancel.reason)
        self._stop_running_steps(
            f"workflow cancelled: {cancel.reason}" if cancel.reason else "workflow cancelled"
        )
        self.wf.state = WS.WORKFLOW_STATE_CANCELLED
        self.wf.failure_reason = cancel.reason
        self._close(ET.WORKFLOW_EVENT_TYPE_WORKFLOW_CANCELLED, error=cancel.reason)

    def _child_result(self, child: engine_pb2.ChildResultInput) -> None:
        step = self._live_step(child.step_id, child.attempt)
        if step is None:
            return
        if child.state == WS.WORKFLOW_STATE_COMPLETED:
            output = values.struct_to_dict(child.output)
            self._complete_step(step, {"workflow_id": child.child_workflow_id, "output": output})
        else:
            state = WS.Name(child.state).removeprefix("WORKFLOW_STATE_").lower()
            self._step_failed(
                step, f"child workflow {child.child_workflow_id} {state}: {child.error}", SS.STEP_STATE_FAILED
            )
