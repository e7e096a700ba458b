"""Plato's durable state on NATS JetStream: streams, key-value buckets, and typed access to them.

- ``PLATO_INBOX`` (work queue, message schedules): :class:`EngineInput` per workflow, and timers.
- ``PLATO_EVENTS`` (limits): :class:`WorkflowEvent` history, one subject per workflow.
- ``PLATO_TASKS`` (work queue): :class:`StepTask` per handler queue.
- ``PLATO_CONTROL`` (limits, short-lived): cancel notices and builtin ``notify`` messages.
- ``plato-definitions`` (KV): ``<id>.<version>`` → :class:`WorkflowDefinition`, ``<id>.latest`` → version.
- ``plato-workflows`` (KV): workflow id → :class:`WorkflowRecord` (the header), updated by
  compare-and-set.
- ``plato-steps`` (KV): ``<workflow>.<hex(step_id)>`` → :class:`StepRecord`.
- ``plato-blobs`` (object store): large values (see :mod:`cosmos.plato.records`).

There is no other store. They are declared (and :class:`StoreConfig` sizes them) in
:mod:`cosmos.plato.store_assets`; :class:`Storage` and :class:`StoreConfig` are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from cosmos import errors
from cosmos.plato import store_assets
from cosmos.plato.language import model, parser
from cosmos.plato.latest import LatestVersions
from cosmos.plato.store_assets import Storage, StoreConfig
from cosmos.plato.v1 import definition_pb2, engine_pb2
from cosmos.protocol import subjects
from cosmos.runtime import jetstream, kvscan, publisher

__all__ = ["Conflict", "PlatoStore", "Storage", "StoreConfig"]

log = logging.getLogger(__name__)

# JetStream's answers to a compare-and-set whose expected last sequence is not the subject's.
_WRONG_LAST_SEQUENCE = (10071, 10164)


class Conflict(errors.CosmosError):
    """A compare-and-set lost: someone else changed the record first."""


class PlatoStore:
    """Typed access to Plato's streams and buckets."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, config: StoreConfig | None = None) -> None:
        self.nc = nc
        self.js = js
        self.config = config or StoreConfig()
        self.publisher = publisher.Publisher(nc, timeout=self.config.ack_timeout)
        """Every write of the hot path (inputs, records, outboxes) goes through it, pipelined."""
        self._buckets: store_assets.Buckets | None = None
        self._compiled: dict[tuple[str, int], model.Definition] = {}
        # Stored versions never change: cached for good. Only the latest pointer needs watching.
        self._stored: dict[tuple[str, int], definition_pb2.WorkflowDefinition] = {}
        self._latest: LatestVersions | None = None

    # ------------------------------------------------------------------ setup

    async def ensure(self) -> None:
        """Create (or update) every stream and bucket; safe to call from every Plato process.

        Retries while a JetStream cluster is still forming (replicated assets need their peers).
        """
        await jetstream.until_ready(self._ensure, "creating Plato's streams and buckets")

    async def _ensure(self) -> None:
        self._buckets = await store_assets.ensure_assets(self.js, self.config)

    async def watch_definitions(self) -> None:
        """Follow the latest version of every definition (:meth:`start_definition` reads it)."""
        latest = LatestVersions(self.nc, self.definitions)
        await latest.start()
        self._latest = latest

    async def close(self) -> None:
        """Stop the definition watch."""
        latest, self._latest = self._latest, None
        if latest is not None:
            await latest.stop()

    @property
    def definitions(self) -> KeyValue:
        """The definitions bucket."""
        assert self._buckets is not None, "call ensure() first"
        return self._buckets.definitions

    @property
    def workflows(self) -> KeyValue:
        """The workflow records bucket."""
        assert self._buckets is not None, "call ensure() first"
        return self._buckets.workflows

    @property
    def steps(self) -> KeyValue:
        """The step records bucket."""
        assert self._buckets is not None, "call ensure() first"
        return self._buckets.steps

    @property
    def blobs(self) -> ObjectStore:
        """The blob object store."""
        assert self._buckets is not None, "call ensure() first"
        return self._buckets.blobs

    # ------------------------------------------------------------------ definitions

    async def latest_version(self, definition_id: str) -> tuple[int, int | None]:
        """The latest version number of a definition (0 if none) and the revision of its pointer."""
        try:
            entry = await self.definitions.get(f"{definition_id}.latest")
        except nats.js.errors.KeyNotFoundError:
            return 0, None
        return int((entry.value or b"0").decode()), entry.revision

    async def put_definition(
        self, definition: definition_pb2.WorkflowDefinition
    ) -> definition_pb2.WorkflowDefinition:
        """Store ``definition`` as the next version of its id (versions are never overwritten)."""
        while True:
            latest, revision = await self.latest_version(definition.definition_id)
            if latest:
                current = await self.get_definition(definition.definition_id, latest)
                if current.content_hash == definition.content_hash:
                    return current  # registering the same text again is a no-op
            stored = definition_pb2.WorkflowDefinition()
            stored.CopyFrom(definition)
            stored.version = latest + 1
            try:
                await self.definitions.create(
                    f"{stored.definition_id}.{stored.version}", stored.SerializeToString()
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another process took this version number; try the next
            pointer = str(stored.version).encode()
            try:
                if revision is None:
                    await self.definitions.create(f"{stored.definition_id}.latest", pointer)
                else:
                    await self.definitions.update(f"{stored.definition_id}.latest", pointer, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                # A newer version was registered concurrently; ours stays stored under its number.
                pass
            else:
                if self._latest is not None:
                    self._latest.note(stored.definition_id, stored.version)  # starts here see it at once
            return stored

    async def get_definition(self, definition_id: str, version: int = 0) -> definition_pb2.WorkflowDefinition:
        """A stored definition (``version`` 0 = latest), or :class:`NotFoundError`."""
        if version <= 0:
            version, _ = await self.latest_version(definition_id)
        try:
            entry = await self.definitions.get(f"{definition_id}.{version}") if version else None
        except nats.js.errors.KeyNotFoundError:
            entry = None
        if entry is None or entry.value is None:
            what = f"version {version} of " if version else ""
            raise errors.NotFoundError(
                f"{what}workflow definition {definition_id!r} is not registered",
                reason=errors.Reason.ERROR_REASON_DEFINITION_NOT_FOUND,
                metadata={"definition_id": definition_id, "version": str(version)},
            )
        return definition_pb2.WorkflowDefinition.FromString(entry.value)

    async def start_definition(
        self, definition_id: str, version: int = 0
    ) -> definition_pb2.WorkflowDefinition:
        """The definition a start runs (``version`` 0 = latest), mostly without asking JetStream.

        The latest version comes from the watch (see :mod:`cosmos.plato.latest`) when it knows it;
        a stored version is read once and cached.
        """
        if version <= 0:
            known = self._latest.get(definition_id) if self._latest is not None else None
            version = known if known is not None else (await self.latest_version(definition_id))[0]
        key = (definition_id, version)
        stored = self._stored.get(key)
        if stored is None:
            stored = await self.get_definition(definition_id, version)  # NotFoundError for version 0
            self._stored[key] = stored
        return stored

    async def compiled(self, definition_id: str, version: int) -> model.Definition:
        """The compiled model of a stored definition version (cached; versions never change)."""
        key = (definition_id, version)
        compiled = self._compiled.get(key)
        if compiled is None:
            stored = await self.start_definition(definition_id, version)
            compiled = parser.parse(stored.source_yaml)
            self._compiled[key] = compiled
        return compiled

    async def definition_ids(self) -> list[str]:
        """Every registered definition id, sorted."""
        keys = await kvscan.keys(self.js, subjects.DEFINITIONS_BUCKET, self.definitions)
        return sorted({key.rsplit(".", 1)[0] for key in keys if key.endswith(".latest")})

    # ------------------------------------------------------------------ workflow records

    async def get_record(self, workflow_id: str) -> tuple[engine_pb2.WorkflowRecord, int] | None:
        """The record and its revision, or None."""
        try:
            entry = await self.workflows.get(workflow_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return engine_pb2.WorkflowRecord.FromString(entry.value), entry.revision or 0

    async def record_revision(self, workflow_id: str) -> int | None:
        """The stored revision of a record, or None."""
        loaded = await self.get_record(workflow_id)
        return None if loaded is None else loaded[1]

    async def save_record(
        self, workflow_id: str, record: engine_pb2.WorkflowRecord, revision: int | None
    ) -> int:
        """Write ``record`` if the stored revision is still ``revision`` (None = must not exist yet)."""
        record.workflow.revision = (revision or 0) + 1
        # The compare-and-set KeyValue.create/update send (expected last sequence of the key's
        # subject; 0 = none), through the pipelined publisher rather than a request per save.
        # Records are never deleted, so no tombstone can stand in for "does not exist".
        headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(revision or 0)}
        subject = f"$KV.{subjects.WORKFLOWS_BUCKET}.{workflow_id}"
        try:
            ack = await self.publisher.stored(subject, record.SerializeToString(), headers)
        except publisher.PublishError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise Conflict(workflow_id) from exc
            raise
        return ack.seq

    async def put_step(self, key: str, record: engine_pb2.StepRecord, revision: int) -> int:
        """Write a step record if its key's last revision is still ``revision`` (0: none yet)."""
        headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(revision)}
        try:
            ack = await self.publisher.stored(
                f"$KV.{subjects.STEPS_BUCKET}.{key}", record.SerializeToString(), headers
            )
        except publisher.PublishError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise Conflict(key) from exc
            raise
        return ack.seq

    async def get_step(self, key: str) -> engine_pb2.StepRecord | None:
        """One stored step record, or None."""
        try:
            entry = await self.steps.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return None if entry.value is None else engine_pb2.StepRecord.FromString(entry.value)

    async def step_records(self, workflow_id: str) -> dict[str, tuple[engine_pb2.StepRecord, int]]:
        """Every stored step record of a workflow with its revision, by step id."""
        found: dict[str, tuple[engine_pb2.StepRecord, int]] = {}
        scanned = await kvscan.entries(
            self.js, subjects.STEPS_BUCKET, self.steps, f"{workflow_id}.*", timeout=self.config.ack_timeout
        )
        for entry in scanned:
            if entry.value:
                record = engine_pb2.StepRecord.FromString(entry.value)
                found[record.step.step_id] = (record, entry.revision or 0)
        return found

    async def workflow_ids(self) -> list[str]:
        """Every workflow id, sorted."""
        return await kvscan.keys(self.js, subjects.WORKFLOWS_BUCKET, self.workflows)

    # ------------------------------------------------------------------ publishing

    async def publish(self, messages: Iterable[engine_pb2.OutboxMessage]) -> None:
        """Publish messages with their de-duplication ids, pipelined; raise if any was not stored."""
        futures = []
        for message in messages:
            headers: dict[str, str] = dict(message.headers)
            headers[subjects.Header.MSG_ID] = message.msg_id
            futures.append(await self.publisher.publish(message.subject, message.data, headers))
        await self.publisher.all_stored(futures)

    async def publish_input(
        self, inp: engine_pb2.EngineInput, msg_id: str, headers: Mapping[str, str] | None = None
    ) -> bool:
        """Post one input to a workflow's inbox and wait until JetStream stored it.

        True if JetStream already had a message with this id (within the duplicate window) and
        dropped this one.
        """
        all_headers = {**(headers or {}), subjects.Header.MSG_ID: msg_id}
        ack = await self.publisher.stored(
            subjects.inbox(inp.workflow_id), inp.SerializeToString(), all_headers
        )
        return ack.duplicate
