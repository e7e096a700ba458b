"""Stratum's durable state on JetStream: job records (KV) and per-job event streams.

- ``stratum-jobs`` (KV): job id → :class:`Job` (spec, state, attempt, placement, result).
- ``STRATUM_EVENTS`` (stream): :class:`JobEvent` on ``cosmos.job.events.<job_id>`` — state changes,
  progress, log lines, the result — for ``WatchJob`` and resumption by sequence.
- ``stratum-revoked-agents`` (KV): revoked agent id → reason.
- ``stratum-join-tokens`` (KV): token id → :class:`JoinTokenRecord` (a hash of the secret, never the
  secret); records drop out a day after the longest a token can live.
- ``stratum-leader`` (KV): the replicas' leader lease (:mod:`cosmos.stratum.leader`).

The queue is not stored separately: it is every job in state QUEUED, rebuilt from the bucket when
Stratum starts.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable

import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from cosmos.runtime import jetstream, kvscan, publisher
from cosmos.security import join
from cosmos.stratum import leader
from cosmos.stratum.v1 import job_pb2

log = logging.getLogger(__name__)

JOBS_BUCKET = "stratum-jobs"
REVOKED_BUCKET = "stratum-revoked-agents"
JOIN_TOKENS_BUCKET = "stratum-join-tokens"
JOIN_TOKENS_MAX_AGE = (join.MAX_TTL + datetime.timedelta(days=1)).total_seconds()
EVENTS_STREAM = "STRATUM_EVENTS"
EVENTS_ALL = "cosmos.job.events.>"
MSG_ID = "Nats-Msg-Id"


def events_subject(job_id: str) -> str:
    """Event subject of one job."""
    return f"cosmos.job.events.{job_id}"


class JobStore:
    """Typed access to the jobs bucket and the events stream."""

    def __init__(
        self, nc: NatsClient, js: JetStreamContext, *, replicas: int = 1, memory: bool = False
    ) -> None:
        self.nc = nc
        self.js = js
        self.replicas = replicas
        self.storage = StorageType.MEMORY if memory else StorageType.FILE
        self.publisher = publisher.Publisher(nc)
        self._jobs: KeyValue | None = None
        self._revoked: KeyValue | None = None
        self._join_tokens: KeyValue | None = None
        self._leader: KeyValue | None = None
        self.fence: Callable[[], None] = lambda: None
        """Called before every job write; raises when this replica may not write (its leader lease
        lapsed: :meth:`cosmos.stratum.leader.Lease.ensure_held`)."""

    async def ensure(self) -> None:
        """Create the bucket and stream if missing (retrying while a JetStream cluster forms)."""
        await jetstream.until_ready(self._ensure, "creating Stratum's stream and bucket")

    async def _ensure(self) -> None:
        config = StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_ALL],
            retention=RetentionPolicy.LIMITS,
            max_age=7 * 24 * 3600.0,
            max_msgs_per_subject=100_000,
            duplicate_window=600.0,
            storage=self.storage,
            num_replicas=self.replicas,
        )
        # An existing stream with other settings (R1 -> R3 when the NATS becomes a cluster) is updated.
        await jetstream.ensure_stream(self.js, config)
        self._jobs = await jetstream.ensure_key_value(
            self.js,
            KeyValueConfig(bucket=JOBS_BUCKET, history=1, storage=self.storage, replicas=self.replicas),
        )
        self._revoked = await jetstream.ensure_key_value(
            self.js,
            KeyValueConfig(bucket=REVOKED_BUCKET, history=1, storage=self.storage, replicas=self.replicas),
        )
        self._leader = await jetstream.ensure_key_value(
            self.js,
            KeyValueConfig(bucket=leader.BUCKET, history=1, storage=self.storage, replicas=self.replicas),
        )
        self._join_tokens = await jetstream.ensure_key_value(
            self.js,
            KeyValueConfig(
                bucket=JOIN_TOKENS_BUCKET,
                history=1,
                ttl=JOIN_TOKENS_MAX_AGE,
                storage=self.storage,
                replicas=self.replicas,
            ),
        )

    @property
    def jobs(self) -> KeyValue:
        """The jobs bucket."""
        assert self._jobs is not None, "call ensure() first"
        return self._jobs

    async def revoke(self, agent_id: str, reason: str) -> None:
        """Remember for good that ``agent_id`` is revoked."""
        assert self._revoked is not None, "call ensure() first"
        await self._revoked.put(agent_id, reason.encode())

    @property
    def leader(self) -> KeyValue:
        """The leader lease bucket."""
        assert self._leader is not None, "call ensure() first"
        return self._leader

    @property
    def join_tokens(self) -> KeyValue:
        """The join tokens bucket."""
        assert self._join_tokens is not None, "call ensure() first"
        return self._join_tokens

    async def is_revoked(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is revoked, as stored now (another Stratum may have revoked it)."""
        assert self._revoked is not None, "call ensure() first"
        try:
            await self._revoked.get(agent_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return False
        return True

    async def revoked(self) -> set[str]:
        """Every revoked agent id."""
        assert self._revoked is not None, "call ensure() first"
        return set(await kvscan.keys(self.js, REVOKED_BUCKET, self._revoked))

    async def save(self, job: job_pb2.Job) -> None:
        """Persist a job record (only while this replica leads: see :attr:`fence`)."""
        self.fence()
        await self.jobs.put(job.job_id, job.SerializeToString())

    async def get(self, job_id: str) -> job_pb2.Job | None:
        """A job record, or None."""
        try:
            entry = await self.jobs.get(job_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        return job_pb2.Job.FromString(entry.value) if entry.value else None

    async def load_all(self) -> list[job_pb2.Job]:
        """Every job record (at start-up, to rebuild the queue and the running set)."""
        keys = await kvscan.keys(self.js, JOBS_BUCKET, self.jobs)
        jobs = await asyncio.gather(*(self._readable(key) for key in keys))
        return [job for job in jobs if job is not None]

    async def _readable(self, job_id: str) -> job_pb2.Job | None:
        """The job under ``job_id``, or None (logged) for an entry that is not a job record of that id:
        one garbage key must not keep Stratum from starting or break listings for everyone."""
        try:
            job = await self.get(job_id)
        except DecodeError:
            job = None
        else:
            if job is None or job.job_id == job_id:
                return job
        log.warning("unreadable job record skipped", extra={"fields": {"key": job_id}})
        return None

    async def last_sequence(self, job_id: str) -> int:
        """Sequence of the job's newest event (0 if none), to continue numbering after a restart."""
        try:
            msg = await self.js.get_last_msg(EVENTS_STREAM, events_subject(job_id))
        except nats.js.errors.NotFoundError:
            return 0
        return job_pb2.JobEvent.FromString(msg.data or b"").sequence

    async def publish(self, events: Iterable[job_pb2.JobEvent]) -> None:
        """Publish events, pipelined, de-duplicated by ``<job>:<sequence>``."""
        futures = [
            await self.publisher.publish(
                events_subject(event.job_id),
                event.SerializeToString(),
                {MSG_ID: f"{event.job_id}:{event.sequence}"},
            )
            for event in events
        ]
        await self.publisher.all_stored(futures)
