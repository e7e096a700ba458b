"""The machine's shared core: one transition's state, and the effects it records.

The state machine (:class:`cosmos.plato.engine.machine.Machine`) is a stack of small classes, one
module each, every one a subclass of the one before, all sharing one transition's state through
``self`` as the single class they were split from did (the state is one protobuf record mutated in
place; passing it between separate objects would only add indirection). From the bottom up:

- :class:`Core` (this module): the transition's state, history events and outbox messages,
  activation look-ups;
- :class:`~cosmos.plato.engine.facts.WorkflowFacts`: what rule conditions ask (``model.Facts``) and
  the context expressions read;
- :class:`~cosmos.plato.engine.rules.Rules`: rule evaluation and firing; the activations of their
  actions (sequences, parallel groups, fan-outs);
- :class:`~cosmos.plato.engine.step_messages.StepMessages`: what a step attempt sends (its task, its
  child's start, its timers, its cancel notice);
- :class:`~cosmos.plato.engine.step_outcomes.StepOutcomes`: how an attempt ends (completion,
  failure and retry, timeout, cancellation);
- :class:`~cosmos.plato.engine.step_dispatch.StepDispatch`: scheduling a step instance and starting
  its attempts (handler, job, child workflow, builtin);
- :class:`~cosmos.plato.engine.closing.Closing`: ending the workflow;
- :class:`~cosmos.plato.engine.machine.Machine`: the inputs (start, result, heartbeat, timer,
  signal, cancel, child result; resume, in :mod:`cosmos.plato.engine.reset`).

Each layer calls only the layers below it, save one call up: a rule's action schedules a step
(:meth:`Rules._schedule_step`, defined by ``StepDispatch``) while a step's end fires rules.

None of these modules does I/O (log lines aside): a transition is pure and deterministic given
``now`` and ``rand``. Every effect is appended to ``record.outbox`` (:meth:`Core._outbox`); the
evaluator (:mod:`cosmos.plato.engine.evaluator`) commits the state, then
:func:`cosmos.plato.records.apply_effects` publishes the outbox.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from google.protobuf import struct_pb2

from cosmos import errors
from cosmos.plato import limits
from cosmos.plato.engine.state import StepTable, WorkflowState
from cosmos.plato.language import model
from cosmos.plato.task_tokens import TaskKey
from cosmos.plato.v1 import engine_pb2, events_pb2, workflow_pb2
from cosmos.protocol import subjects, values

# One logger for every layer, named as when the machine was one module: its records keep their name.
log = logging.getLogger("cosmos.plato.engine.machine")

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
UNSAFE = re.compile(r"[^A-Za-z0-9_=-]")
UNSAFE = re.compile(r"[^A-Za-z0-9_=-]")
"""Characters not kept in a child workflow id or a notify channel (both become subject tokens)."""


class WorkflowFailed(errors.CosmosError):
    """Raised inside a transition to fail the workflow at once with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


class Core:
    """One transition's state, shared by every layer of the machine, and the effects it records."""

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

    def _act(self, activation_id: int) -> engine_pb2.Activation | None:
        return (
            self._acts.get(activation_id)
            or self.table.activations.get(activation_id)
            or self._detached.get(activation_id)
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
