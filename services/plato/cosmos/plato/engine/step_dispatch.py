"""Scheduling a step instance (its id, record and input) and starting each of its attempts: a task
for a handler or a job, a child workflow's start, or a builtin run inside Plato.

A layer of the state machine (see :mod:`cosmos.plato.engine.core`): no I/O (a builtin ``log``
step writes a log line, nothing more). A builtin completes after the current input, not inside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from cosmos.plato.engine.core import ET, SS, TP, UNSAFE, WorkflowFailed, log
from cosmos.plato.engine.step_outcomes import StepOutcomes
from cosmos.plato.language import model, parser
from cosmos.plato.v1 import engine_pb2, workflow_pb2
from cosmos.protocol import subjects


def _step_id(name: str, index: int, fanout: bool) -> str:
    """Instance id: ``name`` for the first plain run, ``name#N`` for later ones, ``name[i]`` in fan-outs."""
    if fanout:
        return f"{name}[{index}]"
    return name if index == 0 else f"{name}#{index + 1}"


class StepDispatch(StepOutcomes):
    """Schedules step instances and dispatches their attempts."""

    def _schedule_step(
        self,
        name: str,
        act: engine_pb2.Activation,
        rule: model.Rule,
        vars: Mapping[str, Any],
        *,
        fanout: bool,
    ) -> None:
        self.wf.steps_scheduled += 1
        if self.wf.steps_scheduled > self.definition.limits.max_steps:
            raise WorkflowFailed(
                f"runaway guard: rule {rule.name!r} would exceed maxSteps={self.definition.limits.max_steps}"
            )
        index = len(self.table.by_name.get(name, ()))
        step_id = _step_id(name, index, fanout)
        step_def = self.definition.steps[name]
        if step_id not in self.table.retired:
            self.record.step_keys += 1  # a new key (one a reset discarded is written over)
        # Past the attempts of an instance of this id that a reset discarded: its reports stay stale.
        attempt = self.table.first_attempt(step_id)
        step = workflow_pb2.StepExecution(step_id=step_id, step_name=name, attempt=attempt, rule=rule.name)
        self.render_input(step, step_def, vars)
        if vars:
            step.fanout_vars.update(dict(vars))
        act.step_id = step_id
        runtime = engine_pb2.StepRuntime(
            step_id=step_id, activation_id=act.activation_id, instance_index=index
        )
        stored = self.table.add(
            engine_pb2.StepRecord(step=step, runtime=runtime, activation=act, ordinal=self.record.step_count)
        )
        self.record.step_count += 1
        self._detached.pop(act.activation_id, None)
        self.table.touch(step_id)
        self._dispatch(stored.step)

    def render_input(
        self, step: workflow_pb2.StepExecution, step_def: model.StepDef, vars: Mapping[str, Any]
    ) -> None:
        """Fill ``step.input`` from its template (or the workflow input) and its loop variables."""
        step.input.Clear()
        if step_def.input is not None:
            rendered = step_def.input.render({**self._context(), **vars})
            step.input.update(rendered if isinstance(rendered, dict) else {"value": rendered})
        elif step_def.kind is not model.StepKind.JOB:
            # The workflow input as it is: a message copy, not a round trip through dicts.
            step.input.fields["input"].struct_value.CopyFrom(self.wf.input)
            if vars:
                step.input.update(dict(vars))
        # A job step has no input: its template reads the workflow context and its loop variables
        # (kept in fanout_vars) itself. A copy of the workflow input in each of a fan-out's K
        # instances (and their tasks) grew the record, one NATS message, by K x the input.

    def _dispatch(self, step: workflow_pb2.StepExecution) -> None:
        """Start the step's current attempt."""
        step_def = self._step_def(step)
        self.table.touch(step.step_id)
        step.state = SS.STEP_STATE_SCHEDULED
        step.schedule_time.CopyFrom(self._stamp)
        step.ClearField("start_time")
        step.ClearField("last_heartbeat_time")
        step.ClearField("next_attempt_time")
        step.error = ""
        self._event(ET.WORKFLOW_EVENT_TYPE_STEP_SCHEDULED, step=step)
        kind = step_def.kind
        size = step.input.ByteSize()
        if kind is not model.StepKind.BUILTIN and size > self.max_value_bytes:
            # Its task (or child start) could never be published: one NATS message holds it.
            self._step_failed(
                step,
                f"input of {size:,} bytes exceeds the limit of {self.max_value_bytes:,} bytes",
                SS.STEP_STATE_FAILED,
                non_retryable=True,
            )
            return
        if kind is model.StepKind.HANDLER:
            self._publish_task(step, step_def.queue or step_def.name)
            self._set_timeouts(step, step_def.timeouts)
        elif kind is model.StepKind.JOB:
            self._publish_task(step, subjects.STRATUM_QUEUE, job=self._job_spec(step, step_def))
            self._set_timeouts(step, step_def.timeouts)
        elif kind is model.StepKind.CHILD:
            self._start_child(step, step_def)
        else:
            self._run_builtin(step, step_def)

    def _run_builtin(self, step: workflow_pb2.StepExecution, step_def: model.StepDef) -> None:
        params = step_def.params.render(self._step_ctx(step)) if step_def.params is not None else {}
        params = params if isinstance(params, dict) else {"value": params}
        step.state = SS.STEP_STATE_RUNNING
        step.start_time.CopyFrom(self._stamp)
        if step_def.builtin == "timer":
            try:
                seconds = parser.parse_duration(params.get("duration", 0))
            except ValueError as exc:
                raise WorkflowFailed(f"step {step.step_id!r}: timer duration: {exc}") from exc
            self._set_timer(step, TP.TIMER_PURPOSE_SLEEP, self.now + timedelta(seconds=seconds))
            return
        message = str(params.get("message", ""))
        if step_def.builtin == "notify":
            channel = UNSAFE.sub("_", str(params.get("channel", "default"))) or "default"
            body = {"workflow_id": self.wf.workflow_id, "step_id": step.step_id, **params}
            self._outbox(
                subjects.notify(channel),
                # json.dumps, not a Struct: integers stay integers in the message (3, not 3.0).
                json.dumps(body, default=str).encode(),
                msg_id=f"{self.wf.workflow_id}:notify:{step.step_id}:{step.attempt}",
            )
        else:
            log.info(message, extra={"fields": {"workflow_id": self.wf.workflow_id, "step_id": step.step_id}})
        attempt = step.attempt
        self._deferred.append(lambda: self._complete_if_live(step, attempt, params))

    def _complete_if_live(
        self, step: workflow_pb2.StepExecution, attempt: int, output: Mapping[str, Any]
    ) -> None:
        if step.attempt == attempt and step.state == SS.STEP_STATE_RUNNING:
            self._complete_step(step, output)
