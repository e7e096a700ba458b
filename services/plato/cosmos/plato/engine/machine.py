"""The workflow state machine: applies one :class:`EngineInput` to a workflow's state.

The state is a :class:`~cosmos.plato.engine.state.WorkflowState`: a header record plus a table of
step records, kept in memory across transitions; the machine marks every step it changes
(``table.touch``) so that only those are written. Pure and deterministic given ``now`` and ``rand``:
no I/O. Every effect (history events, step tasks, timers, notices, messages to parents and children)
is appended to ``record.outbox`` as a NATS message with a de-duplication id; the evaluator persists
the state before publishing them. Each kind of input is idempotent against the state (fencing by step
attempt, by state, by timer id), so redelivered inputs change nothing. Semantics:
``docs/workflow-language.md``.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2

from cosmos import errors
from cosmos.plato import limits
from cosmos.plato.engine import reset
from cosmos.plato.engine.state import StepTable, WorkflowState
from cosmos.plato.language import model, parser
from cosmos.plato.task_tokens import TaskKey
from cosmos.plato.v1 import engine_pb2, events_pb2, workflow_pb2
from cosmos.protocol import inputs, subjects, values
from cosmos.stratum.v1 import job_pb2

log = logging.getLogger(__name__)

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
ET = events_pb2.WorkflowEventType
AK = engine_pb2.ActivationKind
AS = engine_pb2.ActivationState
TP = engine_pb2.TimerPurpose

ACTIVE_STEP_STATES = (SS.STEP_STATE_SCHEDULED, SS.STEP_STATE_RUNNING, SS.STEP_STATE_RETRY_WAIT)
FAILED_STEP_STATES = (SS.STEP_STATE_FAILED, SS.STEP_STATE_TIMED_OUT)
TERMINAL_WORKFLOW_STATES = (
    WS.WORKFLOW_STATE_COMPLETED,
    WS.WORKFLOW_STATE_FAILED,
    WS.WORKFLOW_STATE_CANCELLED,
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_=-]")


class WorkflowFailed(errors.CosmosError):
    """Raised inside a transition to fail the workflow at once with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text(value: Any) -> str:
    """A template value as a command-line string (numbers without a trailing ``.0``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _step_id(name: str, index: int, fanout: bool) -> str:
    """Instance id: ``name`` for the first plain run, ``name#N`` for later ones, ``name[i]`` in fan-outs."""
    if fanout:
        return f"{name}[{index}]"
    return name if index == 0 else f"{name}#{index + 1}"


def new_record(workflow_id: str, start: engine_pb2.StartInput, now: datetime) -> engine_pb2.WorkflowRecord:
    """The PENDING record of a workflow about to start."""
    record = engine_pb2.WorkflowRecord()
    wf = record.workflow
    wf.workflow_id = workflow_id
    wf.definition_id = start.definition_id
    wf.definition_version = start.definition_version
    wf.state = WS.WORKFLOW_STATE_PENDING
    wf.input.CopyFrom(start.input)
    wf.request_id = start.request_id
    wf.parent_workflow_id = start.parent_workflow_id
    wf.parent_step_id = start.parent_step_id
    wf.tenant = start.tenant
    record.parent_attempt = start.parent_attempt
    wf.create_time.CopyFrom(values.timestamp(now))
    wf.update_time.CopyFrom(values.timestamp(now))
    return record


class _Steps(Mapping[str, Any]):
    """The ``steps`` of an expression context, computed per step name when asked for.

    A fan-out of K instances would otherwise cost O(K) for every context built (one per completion).
    """

    def __init__(self, machine: Machine) -> None:
        self._machine = machine
        self._cache: dict[str, dict[str, Any]] = {}

    def _entry(self, name: str) -> dict[str, Any] | None:
        entry = self._cache.get(name)
        if entry is None:
            done = [
                s for s in self._machine.table.by_name.get(name, ()) if s.state == SS.STEP_STATE_COMPLETED
            ]
            if not done:
                return None
            # Instances are kept in creation order, which is their instance index order.
            last = max(done, key=lambda s: (s.close_time.seconds, s.close_time.nanos))
            outputs = [self._machine._output_of(s) for s in done]
            entry = self._cache[name] = {"output": self._machine._output_of(last), "outputs": outputs}
        return entry

    def __getitem__(self, name: str) -> dict[str, Any]:
        entry = self._entry(name)
        if entry is None:
            raise KeyError(name)
        return entry

    def __iter__(self) -> Iterator[str]:
        return (name for name in list(self._machine.table.by_name) if self._entry(name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Machine:
    """Applies inputs to one workflow's state under one definition."""

    def __init__(
        self,
        state: WorkflowState,
        definition: model.Definition,
        now: datetime,
        rand: Callable[[], float],
        trace_headers: Mapping[str, str] | None = None,
        task_key: TaskKey | None = None,
        max_value_bytes: int = limits.DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self.state = state
        self.record = record = state.record
        self.table: StepTable = state.table
        # Signs each task's token (see cosmos.plato.task_tokens); None leaves tokens empty (unit tests).
        self.task_key = task_key
        # The largest workflow input, step input or output (each travels as one NATS message).
        self.max_value_bytes = max_value_bytes
        self.wf = record.workflow
        self.definition = definition
        self.now = now
        # Only ever copied from (CopyFrom, message constructors): one conversion per transition.
        self._stamp = values.timestamp(now)
        self.rand = rand
        self.trace_headers = dict(trace_headers or record.trace_headers)
        # Activations other than step activations (those live in their step records); few.
        self._acts = {a.activation_id: a for a in record.activations}
        # Step activations made for a step about to be scheduled (moved into its record then).
        self._detached: dict[int, engine_pb2.Activation] = {}
        # Step outputs as dicts, converted once per step (contexts are rebuilt often in big fan-ins).
        self._outputs: dict[str, dict[str, Any]] = {}
        self._input: dict[str, Any] | None = None
        self._ctx: dict[str, Any] | None = None
        self._last_completed = ""
        # Steps that finish inside Plato complete after the current input, not recursively inside it,
        # so a loop of builtin steps meets the runaway guard instead of Python's recursion limit.
        self._deferred: list[Callable[[], None]] = []

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

    def _act(self, activation_id: int) -> engine_pb2.Activation | None:
        return (
            self._acts.get(activation_id)
            or self.table.activations.get(activation_id)
            or self._detached.get(activation_id)
        )

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

    # ----------------------------------------------------------------- rules

    def _evaluate(self, event: model.Event) -> None:
        for rule in self.definition.rules:
            if rule.do is None or not rule.when.triggered_by(event):
                continue
            if rule.when.holds(self, self._context() if rule.when.guards else {}):
                self._fire(rule, rule.do, on_exhausted=False)

    def _fire(self, rule: model.Rule, actions: model.Sequence, *, on_exhausted: bool) -> None:
        self.wf.rule_firings += 1
        if self.wf.rule_firings > self.definition.limits.max_rule_firings:
            raise WorkflowFailed(
                f"runaway guard: rule {rule.name!r} would exceed maxRuleFirings="
                f"{self.definition.limits.max_rule_firings}"
            )
        self._event(ET.WORKFLOW_EVENT_TYPE_RULE_FIRED, rule=rule.name)
        self._start_action(actions, parent=0, rule=rule, on_exhausted=on_exhausted, path=[], vars={})

    # ----------------------------------------------------------------- actions

    def _new_activation(
        self,
        kind: int,
        parent: int,
        rule: model.Rule,
        on_exhausted: bool,
        path: list[int],
        vars: Mapping[str, Any],
    ) -> engine_pb2.Activation:
        self.record.next_activation += 1
        fields: dict[str, Any] = {
            "activation_id": self.record.next_activation,
            "parent_id": parent,
            "kind": kind,
            "state": AS.ACTIVATION_STATE_RUNNING,
            "rule_index": rule.index,
            "on_exhausted": on_exhausted,
            "path": path,
        }
        if kind == AK.ACTIVATION_KIND_STEP:
            # Kept with its step's record once the step is scheduled.
            act = self._detached[self.record.next_activation] = engine_pb2.Activation(**fields)
        else:
            act = self.record.activations.add(**fields)
            self._acts[act.activation_id] = act
        if vars:
            act.vars.update(dict(vars))
        return act

    def _start_action(
        self,
        action: model.Action,
        *,
        parent: int,
        rule: model.Rule,
        on_exhausted: bool,
        path: list[int],
        vars: Mapping[str, Any],
    ) -> None:
        if isinstance(action, model.RunStep):
            act = self._new_activation(AK.ACTIVATION_KIND_STEP, parent, rule, on_exhausted, path, vars)
            self._schedule_step(action.step, act, rule, vars, fanout=False)
        elif isinstance(action, model.Sequence):
            act = self._new_activation(AK.ACTIVATION_KIND_SEQUENCE, parent, rule, on_exhausted, path, vars)
            self._advance_sequence(act, action)
        elif isinstance(action, model.Parallel):
            act = self._new_activation(AK.ACTIVATION_KIND_PARALLEL, parent, rule, on_exhausted, path, vars)
            act.pending = len(action.branches)
            if not action.branches:
                self._activation_done(act)
            for i, branch in enumerate(action.branches):
                self._start_action(
                    branch,
                    parent=act.activation_id,
                    rule=rule,
                    on_exhausted=on_exhausted,
                    path=[*path, i],
                    vars=vars,
                )
        else:
            act = self._new_activation(AK.ACTIVATION_KIND_FANOUT, parent, rule, on_exhausted, path, vars)
            items = self._fanout_items(action, vars)
            self.table.items[act.activation_id] = items
            act.item_count = len(items)
            act.pending = len(items)
            if not items:
                # An empty fan-out is done at once, as in a sequence, and its fan-in fires too:
                # `all <run>.completed` holds for it (after this input, like a builtin completion).
                if action.run not in self.record.empty_fanouts:
                    self.record.empty_fanouts.append(action.run)
                self._activation_done(act)
                event = model.Event(model.EventKind.STEP_COMPLETED, step=action.run)
                self._deferred.append(lambda: self._evaluate(event))
                return
            limit = action.max_concurrency or len(items)
            for _ in range(min(limit, len(items))):
                self._start_fanout_item(act, action, rule)

    def _fanout_items(self, fanout: model.Fanout, vars: Mapping[str, Any]) -> list[dict[str, Any]]:
        ctx = {**self._context(), **vars}
        lists = []
        for loop in fanout.loops:
            value = loop.source.evaluate(ctx)
            if not isinstance(value, list):
                raise WorkflowFailed(
                    f"fanout of {fanout.run!r}: {loop.text or loop.var} is {type(value).__name__}, not a list"
                )
            lists.append(value)
        names = [loop.var for loop in fanout.loops]
        return [{**vars, **dict(zip(names, combo, strict=True))} for combo in itertools.product(*lists)]

    def _start_fanout_item(self, act: engine_pb2.Activation, fanout: model.Fanout, rule: model.Rule) -> None:
        item = dict(self.table.items[act.activation_id][act.next_item])
        act.next_item += 1
        child = self._new_activation(
            AK.ACTIVATION_KIND_STEP, act.activation_id, rule, act.on_exhausted, list(act.path), item
        )
        self._schedule_step(fanout.run, child, rule, item, fanout=True)

    def _advance_sequence(self, act: engine_pb2.Activation, seq: model.Sequence) -> None:
        if act.cursor >= len(seq.items):
            self._activation_done(act)
            return
        rule = self.definition.rules[act.rule_index]
        self._start_action(
            seq.items[act.cursor],
            parent=act.activation_id,
            rule=rule,
            on_exhausted=act.on_exhausted,
            path=[*act.path, act.cursor],
            vars=values.struct_to_dict(act.vars),
        )

    def _action_of(self, act: engine_pb2.Activation) -> model.Action:
        rule = self.definition.rules[act.rule_index]
        node: model.Action | None = rule.on_exhausted if act.on_exhausted else rule.do
        assert node is not None
        for index in act.path:
            if isinstance(node, model.Sequence):
                node = node.items[index]
            elif isinstance(node, model.Parallel):
                node = node.branches[index]
        return node

    def _activation_done(self, act: engine_pb2.Activation) -> None:
        act.state = AS.ACTIVATION_STATE_DONE
        parent = self._act(act.parent_id)
        if parent is None or parent.state != AS.ACTIVATION_STATE_RUNNING:
            return
        action = self._action_of(parent)
        if parent.kind == AK.ACTIVATION_KIND_SEQUENCE:
            assert isinstance(action, model.Sequence)
            parent.cursor += 1
            self._advance_sequence(parent, action)
        elif parent.kind == AK.ACTIVATION_KIND_PARALLEL:
            parent.pending -= 1
            if parent.pending == 0:
                self._activation_done(parent)
        elif parent.kind == AK.ACTIVATION_KIND_FANOUT:
            assert isinstance(action, model.Fanout)
            parent.pending -= 1
            if parent.next_item < parent.item_count:
                self._start_fanout_item(parent, action, self.definition.rules[parent.rule_index])
            if parent.pending == 0:
                self._activation_done(parent)

    def _activation_failed(self, act_id: int) -> None:
        act = self._act(act_id)
        while act is not None and act.state == AS.ACTIVATION_STATE_RUNNING:
            act.state = AS.ACTIVATION_STATE_FAILED
            act = self._act(act.parent_id)

    # ----------------------------------------------------------------- steps

    def _step_def(self, step: workflow_pb2.StepExecution) -> model.StepDef:
        return self.definition.steps[step.step_name]

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

    def _step_ctx(self, step: workflow_pb2.StepExecution) -> dict[str, Any]:
        return {**self._context(), **values.struct_to_dict(step.fanout_vars)}

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
            channel = _UNSAFE.sub("_", str(params.get("channel", "default"))) or "default"
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
        child_id = _UNSAFE.sub("_", f"{self.wf.workflow_id}-{step.step_id}-{step.attempt}")[:128]
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
                subjects.Header.SCHEDULE: "@at " + due.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
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

    # ----------------------------------------------------------------- ending

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

    # ----------------------------------------------------------------- effects

    def _event(
        self,
        kind: int,
        *,
        step: workflow_pb2.StepExecution | None = None,
        payload: Mapping[str, Any] | None = None,
        error: str = "",
        rule: str = "",
        progress: Any = None,
        payload_struct: struct_pb2.Struct | None = None,
    ) -> None:
        self.wf.last_sequence += 1
        seq = self.wf.last_sequence
        event = events_pb2.WorkflowEvent(
            event_id=f"{self.wf.workflow_id}:{seq}",
            workflow_id=self.wf.workflow_id,
            sequence=seq,
            type=kind,  # type: ignore[arg-type]
            event_time=self._stamp,
            error=error,
            rule=rule
            or (step.rule if step is not None and kind == ET.WORKFLOW_EVENT_TYPE_STEP_SCHEDULED else ""),
            definition_id=self.wf.definition_id,
            definition_version=self.wf.definition_version,
        )
        if step is not None:
            event.step_id = step.step_id
            event.step_name = step.step_name
            event.attempt = step.attempt
        if payload:
            event.payload.update(dict(payload))
        elif payload_struct is not None and payload_struct.fields:
            event.payload.CopyFrom(payload_struct)  # as the dict round trip would, without it
        size = event.payload.ByteSize()
        if size > limits.EVENT_PAYLOAD_BYTES:
            # Histories stay cheap to read and every event fits a message; GetWorkflow has the value.
            event.payload.Clear()
            event.payload.update({"omitted": {"bytes": size, "reason": "payload too large for the history"}})
        if progress is not None:
            event.progress.CopyFrom(progress)
        self._outbox(subjects.events(self.wf.workflow_id), event.SerializeToString(), msg_id=event.event_id)

    def _outbox(
        self, subject: str, data: bytes, *, msg_id: str, headers: Mapping[str, str] | None = None
    ) -> None:
        message = self.record.outbox.add(subject=subject, data=data, msg_id=msg_id)
        message.headers.update(self.trace_headers)
        if headers:
            message.headers.update(headers)

    # ----------------------------------------------------------------- facts (model.Facts)

    def _input_dict(self) -> dict[str, Any]:
        if self._input is None:
            self._input = values.struct_to_dict(self.wf.input)
        return self._input

    def _output_of(self, step: workflow_pb2.StepExecution) -> dict[str, Any]:
        output = self._outputs.get(step.step_id)
        if output is None:
            output = self._outputs[step.step_id] = values.struct_to_dict(step.output)
        return output

    def _context(self) -> dict[str, Any]:
        if self._ctx is None:
            self._ctx = {
                "input": self._input_dict(),
                "steps": _Steps(self),
                "workflow": {
                    "id": self.wf.workflow_id,
                    "definition": self.wf.definition_id,
                    "version": self.wf.definition_version,
                },
                "signals": {name: values.struct_to_dict(p) for name, p in self.record.signals.items()},
            }
        return self._ctx

    def _instances(self, name: str) -> list[workflow_pb2.StepExecution]:
        return self.table.by_name.get(name, [])

    def started(self) -> bool:
        return self.wf.state != WS.WORKFLOW_STATE_PENDING

    def completed(self, step: str) -> bool:
        return self.table.count(step, (SS.STEP_STATE_COMPLETED,)) > 0

    def all_completed(self, step: str) -> bool:
        instances = len(self._instances(step))
        if not instances and step not in self.record.empty_fanouts:
            return False
        if self.table.count(step, (SS.STEP_STATE_COMPLETED,)) != instances:
            return False
        # A fan-out still holding items back (maxConcurrency) is not finished.
        for act in self.record.activations:
            if act.kind == AK.ACTIVATION_KIND_FANOUT and act.state == AS.ACTIVATION_STATE_RUNNING:
                action = self._action_of(act)
                if isinstance(action, model.Fanout) and action.run == step and act.next_item < act.item_count:
                    return False
        return True

    def failed(self, step: str | None) -> bool:
        return self.table.count(step, FAILED_STEP_STATES) > 0

    def signalled(self, name: str) -> bool:
        return name in self.record.signals
