"""How a step attempt ends: it completes, fails (then retries, by the step's policy or a rule's, or
fails for good and runs the rules that handle it), times out, or is cancelled with the workflow.

A layer of the state machine (see :mod:`cosmos.plato.engine.core`): no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from cosmos.plato import limits
from cosmos.plato.engine.core import ACTIVE_STEP_STATES, AS, ET, SS, TP, WorkflowFailed, log
from cosmos.plato.engine.step_messages import StepMessages
from cosmos.plato.language import model
from cosmos.plato.v1 import engine_pb2, workflow_pb2
from cosmos.protocol import subjects, values


class StepOutcomes(StepMessages):
    """Ends step attempts and reacts to how they ended."""

    def _live_step(self, step_id: str, attempt: int) -> workflow_pb2.StepExecution | None:
        """The step instance if ``attempt`` is its current, unfinished attempt (fencing), else None."""
        step = self.table.get(step_id)
        if (
            step is None
            or step.attempt != attempt
            or step.state not in (SS.STEP_STATE_SCHEDULED, SS.STEP_STATE_RUNNING)
        ):
            # A late report of a timed-out attempt, or a replay: refused, and worth an operator's look.
            log.warning(
                "stale or unknown step attempt refused",
                extra={
                    "fields": {"workflow_id": self.wf.workflow_id, "step_id": step_id, "attempt": attempt}
                },
            )
            return None
        self.table.touch(step_id)
        return step

    def _complete_step(self, step: workflow_pb2.StepExecution, output: Mapping[str, Any]) -> None:
        self.table.touch(step.step_id)
        step.state = SS.STEP_STATE_COMPLETED
        step.output.Clear()
        step.output.update(dict(output))
        self._outputs[step.step_id] = dict(output)
        step.close_time.CopyFrom(self._stamp)
        self._ctx = None
        self._last_completed = step.step_id
        self._event(ET.WORKFLOW_EVENT_TYPE_STEP_COMPLETED, step=step, payload=dict(output))
        runtime = self.table.record(step.step_id).runtime
        act = self._act(runtime.activation_id)
        if act is not None and act.state == AS.ACTIVATION_STATE_RUNNING:
            self._activation_done(act)
        self._evaluate(model.Event(model.EventKind.STEP_COMPLETED, step=step.step_name))

    def _timed_out(self, step: workflow_pb2.StepExecution, which: str) -> None:
        limits = self._step_def(step).timeouts
        seconds = {
            "scheduleToStart": limits.schedule_to_start,
            "startToClose": limits.start_to_close,
            "heartbeat": limits.heartbeat,
        }[which]
        self._cancel_notice(step)
        self._step_failed(step, f"{which} timeout of {seconds:g}s exceeded", SS.STEP_STATE_TIMED_OUT)

    def _step_failed(
        self, step: workflow_pb2.StepExecution, error: str, state: int, non_retryable: bool = False
    ) -> None:
        error = limits.clip(error)
        step.state = state  # type: ignore[assignment]
        step.error = error
        self.table.touch(step.step_id)
        step.close_time.CopyFrom(self._stamp)
        event = (
            ET.WORKFLOW_EVENT_TYPE_STEP_TIMED_OUT
            if state == SS.STEP_STATE_TIMED_OUT
            else ET.WORKFLOW_EVENT_TYPE_STEP_FAILED
        )
        self._event(event, step=step, error=error)
        runtime = self.table.record(step.step_id).runtime
        step_def = self._step_def(step)
        if (
            not non_retryable
            and step_def.retry is not None
            and runtime.step_retries < step_def.retry.max_retries
        ):
            runtime.step_retries += 1
            self._schedule_retry(step, step_def.retry.backoff.delay(runtime.step_retries, self.rand()))
            return
        failure = model.Event(model.EventKind.STEP_FAILED, step=step.step_name)
        ctx = self._context()
        matching = [
            r for r in self.definition.rules if r.when.triggered_by(failure) and r.when.holds(self, ctx)
        ]
        retry_rule = next((r for r in matching if r.retry is not None), None)
        retry = retry_rule.retry if retry_rule is not None else None
        if retry is not None and not non_retryable and runtime.rule_retries < retry.max_retries:
            runtime.rule_retries += 1
            self._schedule_retry(step, retry.backoff.delay(runtime.rule_retries, self.rand()))
            return
        # Terminal: the instance stays failed and whatever waited for it will not advance.
        self._activation_failed(runtime.activation_id)
        reason = f"step {step.step_id!r} failed after {step.attempt} attempt(s): {error}"
        compensations = [r for r in matching if r.do is not None]
        if retry_rule is not None:
            if retry_rule.on_exhausted is None:
                raise WorkflowFailed(f"{reason} (rule {retry_rule.name!r}: retries exhausted)")
            self.record.escalated_failure = (
                self.record.escalated_failure or f"{reason} (rule {retry_rule.name!r})"
            )
            self._fire(retry_rule, retry_rule.on_exhausted, on_exhausted=True)
        elif not compensations:
            raise WorkflowFailed(f"{reason}; no rule handles it")
        for rule in compensations:
            assert rule.do is not None
            self._fire(rule, rule.do, on_exhausted=False)

    def _schedule_retry(self, step: workflow_pb2.StepExecution, delay: float) -> None:
        due = self.now + timedelta(seconds=delay)
        self.table.touch(step.step_id)
        step.state = SS.STEP_STATE_RETRY_WAIT
        step.next_attempt_time.CopyFrom(values.timestamp(due))
        self._event(
            ET.WORKFLOW_EVENT_TYPE_STEP_RETRY_SCHEDULED,
            step=step,
            payload={"next_attempt": step.attempt + 1, "delay_seconds": round(delay, 3)},
        )
        self._set_timer(step, TP.TIMER_PURPOSE_RETRY, due)

    def _stop_running_steps(self, reason: str) -> None:
        if not self.table.count(None, ACTIVE_STEP_STATES):
            return
        for step in self.table.steps():
            if step.state not in ACTIVE_STEP_STATES:
                continue
            self.table.touch(step.step_id)
            if step.state != SS.STEP_STATE_RETRY_WAIT:
                self._cancel_notice(step)
            if step.child_workflow_id:
                inp = engine_pb2.EngineInput(
                    workflow_id=step.child_workflow_id, cancel=engine_pb2.CancelInput(reason=reason)
                )
                self._outbox(
                    subjects.inbox(step.child_workflow_id),
                    inp.SerializeToString(),
                    msg_id=f"{step.child_workflow_id}:cancel",
                )
            step.state = SS.STEP_STATE_CANCELLED
            step.error = reason
            step.close_time.CopyFrom(self._stamp)
            self._event(ET.WORKFLOW_EVENT_TYPE_STEP_CANCELLED, step=step, error=reason)
