"""A workflow's state on NATS: a header, one record per step instance, blobs, and the commit protocol.

Layout (docs/plato.md, "Workflow state"):

- ``plato-workflows`` (KV): ``<workflow>`` → :class:`WorkflowRecord`, the header. Its
  compare-and-set is the commit point of every transition.
- ``plato-steps`` (KV): ``<workflow>.<hex(step_id)>`` → :class:`StepRecord`.
- ``plato-blobs`` (object store): ``<workflow>.<sha256>`` → values over
  :data:`~cosmos.plato.limits.INLINE_VALUE_BYTES` (inputs, outputs, fan-out items) and effects over
  :data:`~cosmos.plato.limits.INLINE_EFFECTS_BYTES`. Content addressed, so writing one is idempotent.

Commit (:func:`commit`): write the transition's blobs; then the header, with compare-and-set, which
carries the transition's effects (the step records it changed, each stamped with the header's new
generation, and the messages to publish), inline or as a blob reference. Once the header is stored the
transition is committed; :func:`apply_effects` then writes the step records (each a compare-and-set on
the step key's last revision) and publishes the messages. Whoever loads the header next applies its
effects again first: a stored step record older (by generation) than the header's is replaced. A loser
of the header compare-and-set has written only blobs, so nothing it did is ever read.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable

import nats.js.errors
from google.protobuf import struct_pb2
from nats.js.api import Header

from cosmos import errors
from cosmos.plato import limits
from cosmos.plato.engine.state import WorkflowState
from cosmos.plato.store import _WRONG_LAST_SEQUENCE, Conflict, PlatoStore
from cosmos.plato.v1 import engine_pb2
from cosmos.protocol import subjects, values
from cosmos.runtime import publisher

AK = engine_pb2.ActivationKind
_VALUE_FIELDS = (("input", "input_blob"), ("output", "output_blob"), ("fanout_vars", "fanout_vars_blob"))
_SETTLE_TRIES = 20
_LIST_TRIES = 8


class TooLarge(errors.CosmosError):
    """A workflow's header would outgrow what one message may hold."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the workflow's header would grow to {size:,} bytes, past its {limit:,}-byte limit")
        self.size = size
        self.limit = limit


def _copy(record: engine_pb2.StepRecord) -> engine_pb2.StepRecord:
    copy = engine_pb2.StepRecord()
    copy.CopyFrom(record)
    return copy


def step_key(workflow_id: str, step_id: str) -> str:
    """The step record's key (step ids hold characters a key may not, e.g. ``work[3]``)."""
    return f"{workflow_id}.{step_id.encode().hex()}"


# ---------------------------------------------------------------------------------------------- blobs


class _Writes:
    """Blobs one commit needs stored before its header."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.data: dict[str, bytes] = {}

    def ref(self, state: WorkflowState, data: bytes) -> engine_pb2.BlobRef:
        digest = hashlib.sha256(data).hexdigest()
        known = state.blob_refs.get(digest)
        if known is None:
            known = engine_pb2.BlobRef(name=f"{self.workflow_id}.{digest}", size=len(data))
            self.data[known.name] = data
        return known


async def put_blobs(store: PlatoStore, writes: _Writes, state: WorkflowState) -> None:
    for name, data in writes.data.items():
        try:
            await store.blobs.get_info(name)
        except nats.js.errors.ObjectNotFoundError:
            await store.blobs.put(name, data)
        state.blob_refs[name.rsplit(".", 1)[1]] = engine_pb2.BlobRef(name=name, size=len(data))


async def get_blob(store: PlatoStore, ref: engine_pb2.BlobRef) -> bytes:
    result = await store.blobs.get(ref.name)
    return result.data or b""


def _omitted(ref: engine_pb2.BlobRef) -> struct_pb2.Struct:
    return values.dict_to_struct(
        {"omitted": {"bytes": ref.size, "reason": "value too large for this response; see the step's record"}}
    )


class _Budget:
    """How many blob bytes a read may resolve (None: all)."""

    def __init__(self, limit: int | None) -> None:
        self.left = limit

    def take(self, size: int) -> bool:
        if self.left is None:
            return True
        if size > self.left:
            return False
        self.left -= size
        return True


async def _resolve(
    store: PlatoStore,
    state: WorkflowState,
    target: struct_pb2.Struct,
    ref: engine_pb2.BlobRef,
    budget: _Budget,
) -> None:
    if not ref.name:
        return
    if budget.take(ref.size):
        data = await get_blob(store, ref)
        target.ParseFromString(data)
        state.blob_refs[ref.name.rsplit(".", 1)[1]] = ref
    else:
        target.CopyFrom(_omitted(ref))


# ---------------------------------------------------------------------------------------------- commit


def _externalize(
    state: WorkflowState, writes: _Writes, struct: struct_pb2.Struct
) -> engine_pb2.BlobRef | None:
    if struct.ByteSize() <= limits.INLINE_VALUE_BYTES:
        return None
    return writes.ref(state, struct.SerializeToString())


def _stored_step(
    state: WorkflowState, writes: _Writes, record: engine_pb2.StepRecord
) -> engine_pb2.StepRecord:
    stored = engine_pb2.StepRecord()
    stored.CopyFrom(record)
    for field, blob_field in _VALUE_FIELDS:
        struct = getattr(stored.step, field)
        ref = _externalize(state, writes, struct)
        if ref is not None:
            getattr(stored, blob_field).CopyFrom(ref)
            struct.Clear()
    return stored


def _stored_header(state: WorkflowState, writes: _Writes) -> engine_pb2.WorkflowRecord:
    record = state.record
    for act in record.activations:
        # A fan-out's items are stored once, when it starts: inline when small, else as a blob.
        if (
            act.kind == AK.ACTIVATION_KIND_FANOUT
            and act.item_count
            and not act.items
            and not act.items_blob.name
        ):
            items = struct_pb2.ListValue()
            for item in state.table.items.get(act.activation_id, []):
                items.values.add().struct_value.update(item)
            if items.ByteSize() <= limits.INLINE_VALUE_BYTES:
                act.items.extend(v.struct_value for v in items.values)
            else:
                act.items_blob.CopyFrom(writes.ref(state, items.SerializeToString()))
    header = engine_pb2.WorkflowRecord()
    header.CopyFrom(record)
    for field, blob_field in (("input", "input_blob"), ("output", "output_blob")):
        struct = getattr(header.workflow, field)
        ref = _externalize(state, writes, struct)
        if ref is not None:
            getattr(header, blob_field).CopyFrom(ref)
            struct.Clear()
    return header


async def commit(store: PlatoStore, state: WorkflowState, max_header_bytes: int) -> None:
    """Commit the transition the machine just made on ``state`` (see the module docstring).

    Raises :class:`Conflict` when another process committed first (``state`` is then stale) and
    :class:`TooLarge` when the header cannot be stored; nothing was committed in either case.
    """
    writes = _Writes(state.workflow_id)
    generation = state.record.generation + 1
    steps = []
    for step_id in sorted(state.table.dirty, key=lambda i: state.table.stored(i).ordinal):
        record = state.table.stored(step_id)  # a discarded instance's tombstone too
        record.generation = generation
        steps.append(_stored_step(state, writes, record))
    header = _stored_header(state, writes)
    header.generation = generation
    effects = engine_pb2.Effects(steps=steps, outbox=state.record.outbox)
    if effects.ByteSize() > limits.INLINE_EFFECTS_BYTES:
        header.effects_blob.CopyFrom(writes.ref(state, effects.SerializeToString()))
        del header.outbox[:]
    else:
        header.pending_steps.extend(steps)
    size = header.ByteSize()
    if size > max_header_bytes:
        raise TooLarge(size, max_header_bytes)
    await put_blobs(store, writes, state)
    state.revision = await store.save_record(state.workflow_id, header, state.revision or None)
    state.record.generation = generation
    state.record.workflow.revision = header.workflow.revision
    state.effects = effects
    state.table.dirty.clear()
    state.published = False


async def apply_effects(store: PlatoStore, state: WorkflowState) -> None:
    """Write the committed transition's step records, then publish its messages."""
    effects = state.effects
    if effects is not None:
        await _write_steps(store, state, effects.steps)
        await store.publish(effects.outbox)
    state.effects = None
    state.published = True


async def _write_steps(
    store: PlatoStore, state: WorkflowState, steps: Iterable[engine_pb2.StepRecord]
) -> None:
    sent = []
    for record in steps:
        step_id = record.step.step_id
        expected = state.table.revisions.get(step_id, 0)
        subject = f"$KV.{subjects.STEPS_BUCKET}.{step_key(state.workflow_id, step_id)}"
        headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(expected)}
        sent.append((record, await store.publisher.publish(subject, record.SerializeToString(), headers)))
    if not sent:
        return
    answers = await asyncio.wait_for(
        asyncio.gather(*(future for _, future in sent), return_exceptions=True), store.config.ack_timeout
    )
    for (record, _), answer in zip(sent, answers, strict=True):
        if isinstance(answer, publisher.Ack):
            state.table.revisions[record.step.step_id] = answer.seq
        elif isinstance(answer, publisher.PublishError) and answer.err_code in _WRONG_LAST_SEQUENCE:
            await _settle(store, state, record)
        else:
            raise answer


async def _settle(store: PlatoStore, state: WorkflowState, record: engine_pb2.StepRecord) -> None:
    """A step write lost its compare-and-set: someone else applied this commit (or a later one)
    first, unless the key is still older, in which case it is written over that version."""
    key = step_key(state.workflow_id, record.step.step_id)
    for _ in range(_SETTLE_TRIES):
        try:
            entry = await store.steps.get(key)
        except nats.js.errors.KeyNotFoundError:
            revision = 0
        else:
            revision = entry.revision or 0
            if engine_pb2.StepRecord.FromString(entry.value or b"").generation >= record.generation:
                state.table.revisions[record.step.step_id] = revision
                return
        try:
            state.table.revisions[record.step.step_id] = await store.put_step(key, record, revision)
            return
        except Conflict:
            continue
    raise Conflict(state.workflow_id)


# ---------------------------------------------------------------------------------------------- load


async def load_header(
    store: PlatoStore, workflow_id: str, budget: int | None = None
) -> tuple[engine_pb2.WorkflowRecord, int] | None:
    """The header and its revision, with its input and output resolved (within ``budget`` bytes)."""
    loaded = await store.get_record(workflow_id)
    if loaded is None:
        return None
    record, revision = loaded
    scratch = WorkflowState(record, revision)
    spend = _Budget(budget)
    await _resolve(store, scratch, record.workflow.input, record.input_blob, spend)
    await _resolve(store, scratch, record.workflow.output, record.output_blob, spend)
    return record, revision


async def _effects(store: PlatoStore, record: engine_pb2.WorkflowRecord) -> engine_pb2.Effects:
    if record.effects_blob.name:
        return engine_pb2.Effects.FromString(await get_blob(store, record.effects_blob))
    return engine_pb2.Effects(steps=record.pending_steps, outbox=record.outbox)


async def load(store: PlatoStore, workflow_id: str, budget: int | None = None) -> WorkflowState | None:
    """The workflow's whole state, its last commit's effects overlaid (still to be applied: the
    state comes back with ``published`` False), values resolved (within ``budget`` bytes)."""
    loaded = await store.get_record(workflow_id)
    if loaded is None:
        return None
    record, revision = loaded
    effects = await _effects(store, record)
    stored = await _step_records(store, record, effects)
    overlaid: dict[str, engine_pb2.StepRecord] = {}
    for pending in effects.steps:
        current = stored.get(pending.step.step_id)
        if current is None or current[0].generation < pending.generation:
            overlaid[pending.step.step_id] = pending
    # Only those are still to write: a stored record as new (or newer: the header was read before
    # another process committed again and applied it) must not be overwritten with an older one,
    # and the table holds the stored record's revision, so the compare-and-set would let it through.
    effects = engine_pb2.Effects(
        steps=[p for p in effects.steps if p.step.step_id in overlaid], outbox=effects.outbox
    )
    state = WorkflowState(record, revision)
    spend = _Budget(budget)
    await _resolve(store, state, record.workflow.input, record.input_blob, spend)
    await _resolve(store, state, record.workflow.output, record.output_blob, spend)
    record.ClearField("input_blob")
    record.ClearField("output_blob")
    del record.pending_steps[:]
    record.ClearField("effects_blob")
    del record.outbox[:]
    record.outbox.extend(effects.outbox)
    rows: list[tuple[engine_pb2.StepRecord, int | None]] = [
        (overlaid.pop(step_id, entry), revision) for step_id, (entry, revision) in stored.items()
    ]
    rows.extend((pending, None) for pending in overlaid.values())
    # The table gets copies: the effects still to apply keep their blob references.
    rows = [(_copy(r), rev) for r, rev in rows]
    rows.sort(key=lambda row: row[0].ordinal)
    for step_record, step_revision in rows:
        if step_record.discarded:
            # A reset's tombstone: not a step of the workflow, but its key and last attempt are kept.
            state.table.retired[step_record.step.step_id] = step_record
            if step_revision is not None:
                state.table.revisions[step_record.step.step_id] = step_revision
            continue
        for field, blob_field in _VALUE_FIELDS:
            await _resolve(
                store, state, getattr(step_record.step, field), getattr(step_record, blob_field), spend
            )
            step_record.ClearField(blob_field)  # type: ignore[arg-type]
        state.table.add(step_record)
        if step_revision is not None:
            state.table.revisions[step_record.step.step_id] = step_revision
    for act in record.activations:
        if act.kind == AK.ACTIVATION_KIND_FANOUT:
            items = struct_pb2.ListValue()
            if act.items_blob.name:
                items.ParseFromString(await get_blob(store, act.items_blob))
            else:
                items.values.extend(struct_pb2.Value(struct_value=s) for s in act.items)
            state.table.items[act.activation_id] = [values.to_python(v) for v in items.values]
    state.effects = effects
    state.published = False
    return state


async def _step_records(
    store: PlatoStore, record: engine_pb2.WorkflowRecord, effects: engine_pb2.Effects
) -> dict[str, tuple[engine_pb2.StepRecord, int]]:
    """Every stored step record of the workflow, listed again while the listing holds fewer keys than
    the header counts (a listing raced by a write can miss a key); still short after a few tries:
    :class:`~cosmos.errors.UnavailableError`, and the caller acts on nothing (an input is redelivered).
    """
    workflow_id = record.workflow.workflow_id
    pending = {p.step.step_id for p in effects.steps}
    for attempt in range(_LIST_TRIES):
        stored = await store.step_records(workflow_id)
        if len(stored.keys() | pending) >= record.step_keys:
            return stored
        await asyncio.sleep(0.05 * (attempt + 1))
    raise errors.UnavailableError(
        f"workflow {workflow_id!r}: listed {len(stored.keys() | pending)} of its {record.step_keys} step "
        "records; try again"
    )


async def load_step(
    store: PlatoStore, workflow_id: str, step_id: str
) -> tuple[engine_pb2.WorkflowRecord, engine_pb2.StepRecord | None] | None:
    """The header and one step's record (its committed version; values not resolved)."""
    loaded = await store.get_record(workflow_id)
    if loaded is None:
        return None
    record = loaded[0]
    effects = await _effects(store, record)
    pending = next((s for s in effects.steps if s.step.step_id == step_id), None)
    stored = await store.get_step(step_key(workflow_id, step_id))
    if pending is not None and (stored is None or stored.generation < pending.generation):
        return record, pending
    return record, stored
