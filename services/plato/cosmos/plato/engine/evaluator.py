"""The evaluator: pulls engine inputs from JetStream and advances workflows, in batches.

For each batch the inputs are grouped by workflow; each workflow's inputs are applied together to its
state in one transition, which is then committed (the header's compare-and-set, see
:mod:`cosmos.plato.records`) *before* its effects (step records, the outbox) are written and
published, and only then are the inputs acknowledged. A crash anywhere in between is repaired by
redelivery: inputs are idempotent against the state, and a state loaded from the store has its last
commit's effects applied again first (step writes by generation, messages de-duplicated by
Nats-Msg-Id). Several Plato processes share the one durable consumer; compare-and-set makes sure only
one advances a workflow at a time. Workflows stay cached in memory, steps and all, so a transition
costs what it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from opentelemetry import trace

from cosmos.plato import limits, metrics, records
from cosmos.plato.engine import machine
from cosmos.plato.engine.state import WorkflowState
from cosmos.plato.language import model
from cosmos.plato.store import Conflict, PlatoStore
from cosmos.plato.task_tokens import TaskKey
from cosmos.plato.v1 import engine_pb2, workflow_pb2
from cosmos.protocol import subjects
from cosmos.runtime import telemetry, wellknown

log = logging.getLogger(__name__)
tracer = trace.get_tracer("cosmos.plato")
RECORD_HEADROOM = 4096
"""Bytes of a NATS message left for the header's subject and headers."""


@dataclass(frozen=True)
class EvaluatorConfig:
    """How the evaluator pulls and caches."""

    batch: int = 256
    """Inputs fetched per pull."""
    max_ack_pending: int = 4096
    """Inputs in flight across all Plato processes."""
    ack_wait: float = 30.0
    """Seconds before an unacknowledged input is redelivered (to another process)."""
    cache_size: int = 10_000
    """Workflows kept in memory (header and steps)."""
    max_conflicts: int = 20
    """Compare-and-set retries before an input is left for redelivery."""
    max_record_bytes: int | None = None
    """Largest workflow header saved: a transition that would grow one past it fails its workflow
    instead (a header is one NATS message). None: the smaller of
    :data:`~cosmos.plato.limits.MAX_HEADER_BYTES` and the server's ``max_payload`` less 4 KiB."""
    max_value_bytes: int | None = None
    """Largest step input or output (each travels as one message): a larger output fails its step.
    None: the server's ``max_payload`` less :data:`~cosmos.protocol.limits.MESSAGE_HEADROOM`."""
    idle_wait: float = 0.25
    """Seconds a pull waits for input when there is none; also what a stopping Plato may wait for its
    evaluator to notice (the pull is not cancelled: inputs it already took would wait out ``ack_wait``)."""


class Evaluator:
    """One per Plato process."""

    def __init__(
        self, store: PlatoStore, config: EvaluatorConfig | None = None, *, task_key: TaskKey
    ) -> None:
        self.store = store
        self.config = config or EvaluatorConfig()
        self.task_key = task_key
        self._cache: OrderedDict[str, WorkflowState] = OrderedDict()
        self._rand = random.Random()

    async def run(self, stopping: asyncio.Event) -> None:
        """Advance workflows until ``stopping`` is set."""
        sub = await self.store.js.pull_subscribe(
            subjects.INBOX_ALL,
            durable=subjects.ENGINE_CONSUMER,
            stream=subjects.INBOX_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.config.ack_wait,
                max_ack_pending=self.config.max_ack_pending,
                max_waiting=512,
            ),
        )
        while not stopping.is_set():
            try:
                msgs = await sub.fetch(self.config.batch, timeout=self.config.idle_wait)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                return
            except nats.js.errors.Error as exc:
                log.warning("fetch failed", extra={"fields": {"error": repr(exc)}})
                await asyncio.sleep(0.5)
                continue
            await self.process(msgs)

    async def process(self, msgs: Sequence[Msg]) -> None:
        """Apply one batch: group by workflow, advance each workflow once."""
        groups: dict[str, list[tuple[Msg, engine_pb2.EngineInput]]] = {}
        for msg in msgs:
            try:
                inp = engine_pb2.EngineInput.FromString(msg.data)
            except Exception:
                log.error("undecodable engine input dropped", extra={"fields": {"subject": msg.subject}})
                await msg.term()
                continue
            refusal = self._refusal(msg.subject, inp)
            if refusal:
                log.warning(
                    "engine input refused",
                    extra={
                        "fields": {
                            "reason": refusal,
                            "subject": msg.subject,
                            "workflow_id": inp.workflow_id,
                            "kind": inp.WhichOneof("kind"),
                        }
                    },
                )
                await msg.term()
                continue
            groups.setdefault(inp.workflow_id, []).append((msg, inp))
        await asyncio.gather(*(self._advance(wf_id, items) for wf_id, items in groups.items()))

    def _refusal(self, subject: str, inp: engine_pb2.EngineInput) -> str:
        """Why ``inp`` must not be applied ('' when it may).

        Workers may publish only to report subjects (see :mod:`cosmos.stack.natsd`), and there only a
        result or heartbeat of the workflow the subject names; every result and heartbeat, wherever it
        comes from, must carry the task token of the attempt it names. Whether that attempt is still
        the current one is the state machine's check.
        """
        kind = inp.WhichOneof("kind")
        if subjects.is_report(subject):
            if kind not in ("result", "heartbeat"):
                return f"a report subject carries only results and heartbeats, not {kind}"
            if subject != subjects.report(inp.workflow_id):
                return "the workflow id does not match the report subject"
        if kind == "result":
            report = (inp.result.step_id, inp.result.attempt, inp.result.task_token)
        elif kind == "heartbeat":
            report = (inp.heartbeat.step_id, inp.heartbeat.attempt, inp.heartbeat.task_token)
        else:
            return ""
        step_id, attempt, token = report
        if not self.task_key.verify(inp.workflow_id, step_id, attempt, token):
            return "missing or wrong task token"
        return ""

    async def _advance(self, workflow_id: str, items: list[tuple[Msg, engine_pb2.EngineInput]]) -> None:
        headers = items[0][0].headers or {}
        context = telemetry.extract_context(headers)
        with tracer.start_as_current_span("plato.advance", context=context) as span:
            span.set_attribute("cosmos.workflow_id", workflow_id)
            span.set_attribute("cosmos.inputs", len(items))
            try:
                # Effects carry this span's context, so handlers and event consumers continue the trace.
                done = await self._advance_with_retries(
                    workflow_id, [inp for _, inp in items], telemetry.inject_headers()
                )
            except Exception:
                log.exception("advancing workflow failed", extra={"fields": {"workflow_id": workflow_id}})
                self._cache.pop(workflow_id, None)
                done = False
        for msg, _ in items:
            with contextlib.suppress(nats.errors.Error):
                if done:
                    await msg.ack()
                else:
                    await msg.nak(delay=1.0)

    async def _advance_with_retries(
        self, workflow_id: str, inputs: list[engine_pb2.EngineInput], trace_headers: dict[str, str]
    ) -> bool:
        for _ in range(self.config.max_conflicts):
            state = await self._current(workflow_id, inputs[0])
            if state is None:
                return True  # nothing to advance (e.g. a result for a workflow that never started)
            record = state.record
            definition = await self.store.compiled(
                record.workflow.definition_id, record.workflow.definition_version
            )
            now = wellknown.utcnow()
            engine = self._machine(state, definition, now, trace_headers)
            engine.begin()
            for inp in inputs:
                engine.apply(inp)
            if not record.outbox and state.revision:
                # Nothing changed: a duplicate or a stale result, unless our copy is behind another
                # process's (the input may be news to the current state). Check before dropping it.
                current = await self.store.record_revision(workflow_id)
                if current != state.revision:
                    self._cache.pop(workflow_id, None)
                    continue
                return True
            touched = _touched(state)
            try:
                await records.commit(self.store, state, self._record_limit())
            except Conflict:
                self._cache.pop(workflow_id, None)
                continue
            except records.TooLarge as exc:
                # Storing it would fail every time the inputs are redelivered. Fail the workflow from
                # its stored state instead (which fit), saying why.
                self._cache.pop(workflow_id, None)
                state = await self._current(workflow_id, inputs[0])
                if state is None:
                    return True
                engine = self._machine(state, definition, now, trace_headers)
                engine.begin()
                engine.fail(
                    f"{exc}: too many running fan-outs, signals or rule firings at once; split the "
                    "work into child workflows"
                )
                log.error(
                    "workflow state too large; failed",
                    extra={"fields": {"workflow_id": workflow_id, "bytes": exc.size, "limit": exc.limit}},
                )
                touched = _touched(state)
                try:
                    await records.commit(self.store, state, self._record_limit())
                except Conflict:
                    self._cache.pop(workflow_id, None)
                    continue
            metrics.observe_transition(state.record, touched, now)
            self._remember(workflow_id, state)
            await _apply_effects(self.store, state)
            if record.workflow.state in machine.TERMINAL_WORKFLOW_STATES:
                self._cache.pop(workflow_id, None)
                log.info(
                    "workflow finished",
                    extra={
                        "fields": {
                            "workflow_id": workflow_id,
                            "state": workflow_pb2.WorkflowState.Name(record.workflow.state),
                            "reason": record.workflow.failure_reason,
                        }
                    },
                )
            return True
        log.warning(
            "gave up after conflicts; inputs will be redelivered",
            extra={"fields": {"workflow_id": workflow_id}},
        )
        return False

    def _machine(
        self,
        state: WorkflowState,
        definition: model.Definition,
        now: datetime,
        trace_headers: dict[str, str],
    ) -> machine.Machine:
        value_limit = self.config.max_value_bytes or limits.max_value_bytes(self.store.nc.max_payload)
        return machine.Machine(
            state, definition, now, self._rand.random, trace_headers, self.task_key, value_limit
        )

    async def _current(self, workflow_id: str, first: engine_pb2.EngineInput) -> WorkflowState | None:
        """The workflow's state (see :meth:`_load`) with its last commit's effects applied."""
        state = await self._load(workflow_id, first)
        if state is not None and not state.published:
            await _apply_effects(self.store, state)
        return state

    async def _load(self, workflow_id: str, first: engine_pb2.EngineInput) -> WorkflowState | None:
        state = self._cache.get(workflow_id)
        if state is not None:
            self._cache.move_to_end(workflow_id)
            return state
        loaded = await records.load(self.store, workflow_id)
        if loaded is not None:
            return loaded
        if first.WhichOneof("kind") != "start":
            log.warning(
                "input for an unknown workflow dropped",
                extra={"fields": {"workflow_id": workflow_id, "kind": first.WhichOneof("kind")}},
            )
            return None
        return WorkflowState(machine.new_record(workflow_id, first.start, wellknown.utcnow()), 0)

    def cached_states(self) -> list[int]:
        """The state of every workflow in the cache (for :func:`cosmos.plato.metrics.cached_states`)."""
        return [state.record.workflow.state for state in self._cache.values()]

    def _record_limit(self) -> int:
        if self.config.max_record_bytes is not None:
            return self.config.max_record_bytes
        return min(limits.MAX_HEADER_BYTES, self.store.nc.max_payload - RECORD_HEADROOM)

    def created(self, workflow_id: str, record: engine_pb2.WorkflowRecord, revision: int) -> None:
        """A header ``StartWorkflow`` just created: its start input needs no read of the bucket.

        Only if nothing is cached for it yet; a stale entry would be harmless anyway (commits are
        compare-and-set, and a lost one reloads).
        """
        if workflow_id not in self._cache:
            self._remember(workflow_id, WorkflowState(record, revision))

    def _remember(self, workflow_id: str, state: WorkflowState) -> None:
        self._cache[workflow_id] = state
        self._cache.move_to_end(workflow_id)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)


def _touched(state: WorkflowState) -> list[workflow_pb2.StepExecution]:
    """The steps the transition about to be committed changed (discarded instances left out)."""
    records_by_id = state.table.records
    return [records_by_id[i].step for i in state.table.dirty if i in records_by_id]


async def _apply_effects(store: PlatoStore, state: WorkflowState) -> None:
    """:func:`records.apply_effects`; at DEBUG, each step record written and each message sent is
    logged (the trail of a workflow's commits, for an operator or a test)."""
    effects = state.effects
    await records.apply_effects(store, state)
    if effects is not None and (effects.steps or effects.outbox) and log.isEnabledFor(logging.DEBUG):
        steps = {s.step.step_id: state.table.revisions.get(s.step.step_id) for s in effects.steps}
        log.debug(
            "effects applied: %s generation %d, step revisions %s, messages %s",
            state.workflow_id,
            state.record.generation,
            steps,
            [m.msg_id for m in effects.outbox],
        )
