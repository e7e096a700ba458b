"""What a step attempt sends: its task (handler or job), its child workflow's start, its timers and
its cancel notice.

A layer of the state machine (see :mod:`cosmos.plato.engine.core`): no I/O; each message goes to
``record.outbox``, published once the state is committed.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import json_format

from cosmos.plato.engine.core import ET, SS, TP, UNSAFE, WorkflowFailed
from cosmos.plato.engine.rules import Rules
from cosmos.plato.language import model
from cosmos.plato.v1 import engine_pb2, events_pb2, workflow_pb2
from cosmos.protocol import inputs, subjects, values
from cosmos.stratum.v1 import job_pb2


def _text(value: Any) -> str:
    """A template value as a command-line string (numbers without a trailing ``.0``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


class StepMessages(Rules):
    """Builds the messages of a step's attempt."""

    def _step_def(self, step: workflow_pb2.StepExecution) -> model.StepDef:
        return self.definition.steps[step.step_name]

    def _step_ctx(self, step: workflow_pb2.StepExecution) -> dict[str, Any]:
        return {**self._context(), **values.struct_to_dict(step.fanout_vars)}

    def _publish_task(
        self, step: workflow_pb2.StepExecution, queue: str, job: job_pb2.JobSpec | None = None
    ) -> None:
        step_def = self._step_def(step)
        task = events_pb2.StepTask(
            workflow_id=self.wf.workflow_id,
            step_id=step.step_id,
            step_name=step.step_name,
            attempt=step.attempt,
            idempotency_key=inputs.idempotency_key(self.wf.workflow_id, step.step_id, step.attempt),
            input=step.input,
            definition_id=self.wf.definition_id,
            definition_version=self.wf.definition_version,
            schedule_time=step.schedule_time,
            tenant=self.wf.tenant,
        )
        if step_def.timeouts.start_to_close:
            task.start_to_close_timeout.FromNanoseconds(int(step_def.timeouts.start_to_close * 1e9))
        if step_def.timeouts.heartbeat:
            task.heartbeat_timeout.FromNanoseconds(int(step_def.timeouts.heartbeat * 1e9))
        if job is not None:
            task.job_spec.CopyFrom(job)
        if self.task_key is not None:
            task.task_token = self.task_key.token(self.wf.workflow_id, step.step_id, step.attempt)
        step.task_queue = queue
        self._outbox(subjects.tasks(queue), task.SerializeToString(), msg_id=task.idempotency_key)

    def _job_spec(self, step: workflow_pb2.StepExecution, step_def: model.StepDef) -> job_pb2.JobSpec:
        rendered = step_def.params.render(self._step_ctx(step)) if step_def.params is not None else {}
        spec = job_pb2.JobSpec()
        if isinstance(rendered, dict):
            # Placeholders keep their types; argv and env are strings in a JobSpec.
            rendered = {
                **rendered,
                "argv": [_text(a) for a in rendered.get("argv", [])],
                "env": {k: _text(v) for k, v in (rendered.get("env") or {}).items()},
            }
        try:
            json_format.ParseDict(rendered, spec)
        except json_format.ParseError as exc:
            raise WorkflowFailed(
                f"step {step.step_id!r}: job template does not make a JobSpec: {exc}"
            ) from exc
        if not spec.idempotency_key:
            spec.idempotency_key = inputs.idempotency_key(self.wf.workflow_id, step.step_id, step.attempt)
        return spec

    def _start_child(self, step: workflow_pb2.StepExecution, step_def: model.StepDef) -> None:
        assert step_def.child is not None
        child_id = UNSAFE.sub("_", f"{self.wf.workflow_id}-{step.step_id}-{step.attempt}")[:128]
        start = engine_pb2.StartInput(
            definition_id=step_def.child.definition_id,
            definition_version=step_def.child.version,
            parent_workflow_id=self.wf.workflow_id,
            parent_step_id=step.step_id,
            parent_attempt=step.attempt,
            request_time=self._stamp,
            tenant=self.wf.tenant,
        )
        start.input.CopyFrom(step.input)
        self.table.touch(step.step_id)
        step.child_workflow_id = child_id
        step.state = SS.STEP_STATE_RUNNING
        # The child's id is on its step (cancellation reads it there), not in a list on the header
        # that would grow with a fan-out of children.
        inp = engine_pb2.EngineInput(workflow_id=child_id, start=start)
        self._outbox(subjects.inbox(child_id), inp.SerializeToString(), msg_id=f"{child_id}:start")
        self._event(
            ET.WORKFLOW_EVENT_TYPE_CHILD_WORKFLOW_STARTED, step=step, payload={"child_workflow_id": child_id}
        )

    def _set_timeouts(self, step: workflow_pb2.StepExecution, timeouts: model.Timeouts) -> None:
        for purpose, seconds in (
            (TP.TIMER_PURPOSE_SCHEDULE_TO_START, timeouts.schedule_to_start),
            (TP.TIMER_PURPOSE_START_TO_CLOSE, timeouts.start_to_close),
            (TP.TIMER_PURPOSE_HEARTBEAT, timeouts.heartbeat),
        ):
            if seconds:
                self._set_timer(step, purpose, self.now + timedelta(seconds=seconds))

    def _set_timer(self, step: workflow_pb2.StepExecution, purpose: int, due: datetime) -> None:
        self.record.next_timer += 1
        timer_id = f"t{self.record.next_timer}"
        self.table.record(step.step_id).timers.add(timer_id=timer_id, fire_time=values.timestamp(due))
        self.table.touch(step.step_id)
        fired = engine_pb2.EngineInput(
            workflow_id=self.wf.workflow_id,
            timer=engine_pb2.TimerInput(
                timer_id=timer_id,
                purpose=purpose,  # type: ignore[arg-type]
                step_id=step.step_id,
                attempt=step.attempt,
            ),
        )
        self._outbox(
            subjects.timer(self.wf.workflow_id, timer_id),
            fired.SerializeToString(),
            msg_id=f"{self.wf.workflow_id}:{timer_id}",
            headers={
                subjects.Header.SCHEDULE: subjects.schedule_at(due),
                subjects.Header.SCHEDULE_TARGET: subjects.inbox(self.wf.workflow_id),
            },
        )

    def _cancel_notice(self, step: workflow_pb2.StepExecution) -> None:
        step_def = self._step_def(step)
        if step_def.kind is model.StepKind.HANDLER:
            queue = step_def.queue or step_def.name
        elif step_def.kind is model.StepKind.JOB:
            queue = subjects.STRATUM_QUEUE
        else:
            return
        key = inputs.idempotency_key(self.wf.workflow_id, step.step_id, step.attempt)
        self._outbox(subjects.cancels(queue), key.encode(), msg_id=f"cancel:{key}")
