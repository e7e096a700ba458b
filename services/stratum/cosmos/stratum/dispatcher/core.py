"""What every part of the dispatcher shares: its settings and state, storing a job's state changes,
and the messages to agents.

A state change is stored (job record in KV, event in the job's stream) before it is applied to the
live job or anyone is told of it: see :meth:`DispatcherCore._transition`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from cosmos.common.v1 import progress_pb2
from cosmos.runtime import wellknown
from cosmos.security import secrets
from cosmos.security.job_policy import JobPolicy
from cosmos.stratum import metrics, waiting
from cosmos.stratum.placement import PoolAllocator
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.store import JobStore
from cosmos.stratum.v1 import agent_service_pb2, job_pb2

log = logging.getLogger("cosmos.stratum.dispatcher")

JS = job_pb2.JobState
TERMINAL = (JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED, JS.JOB_STATE_CANCELLED, JS.JOB_STATE_TIMED_OUT)
ON_AGENT = (JS.JOB_STATE_ASSIGNED, JS.JOB_STATE_RUNNING)
DEFAULT_INFRA_ATTEMPTS = 3
MAX_JOB_BYTES = 512 * 1024
"""A job record at most: it is one KV value and one assignment message (NATS takes 1 MB, an agent's
stream 4 MB); request validation keeps specs well below it. Read as ``core.MAX_JOB_BYTES`` where it
is checked, so that a test can lower it here."""


@dataclass
class DispatcherConfig:
    """Timing of the dispatcher."""

    cancel_grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a running job is cancelled."""
    progress_save_interval: float = 5.0
    """Progress is persisted to the job record at most this often (events carry every update)."""
    unplaceable_timeout: float = 300.0
    """Seconds a queued job waits for an agent that could run it (none connected yet after a restart,
    or only agents too small for it) before it fails with the reason (``--unplaceable-timeout``)."""
    reconnect_grace: float = 1.0
    """Seconds an agent whose stream broke (its process died) has to reconnect before its attempts are
    requeued (``--reconnect-grace``); a host that goes silent with its stream open waits for the lease."""


@dataclass
class DispatcherCore:
    """Jobs, queue and agent connections of one Stratum process (the parts add what they do)."""

    store: JobStore
    registry: AgentRegistry
    allocator: PoolAllocator
    config: DispatcherConfig = field(default_factory=DispatcherConfig)
    keyring: secrets.Keyring | None = None
    """Seals job secrets at submit and unseals them for the assigned agent; None: secrets refused."""
    policy: JobPolicy | None = None
    """Per-tenant allow-list of executables and images (``--job-policy``); None: no restriction."""
    jobs: dict[str, job_pb2.Job] = field(default_factory=dict)
    """Every job that is not finished, by id."""
    outboxes: dict[str, asyncio.Queue[agent_service_pb2.ConnectResponse]] = field(default_factory=dict)
    """Messages waiting to be sent to each connected agent."""
    _kick: asyncio.Event = field(default_factory=asyncio.Event)
    _progress_saved: dict[str, float] = field(default_factory=dict)
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _abandoned: dict[str, tuple[str, bool]] = field(default_factory=dict)
    """Agents whose attempts the placement pass requeues: why, and whether a reconnect cancels it."""
    _requeuing: asyncio.Lock = field(default_factory=asyncio.Lock)
    _wait: waiting.AgentWait = field(init=False)

    def __post_init__(self) -> None:
        # Agents have one lease to reconnect after a restart: until then the pool is not complete.
        self._wait = waiting.AgentWait(self.config.unplaceable_timeout, settle=self.registry.lease_seconds)

    # ------------------------------------------------------------------ state

    async def _transition(
        self,
        job: job_pb2.Job,
        state: job_pb2.JobState.ValueType,
        change: Callable[[job_pb2.Job], None] | None = None,
    ) -> None:
        """Move ``job`` to ``state`` (after ``change``): stored and announced first, then applied to
        ``job``. A store that fails (NATS away) leaves ``job`` as it was, so the report that caused
        the transition, sent again, finds the job where it left it (not ahead of its stored record)."""
        moved = job_pb2.Job()
        moved.CopyFrom(job)
        if change is not None:
            change(moved)
        moved.state = state
        moved.update_time.CopyFrom(wellknown.now())
        event = self._event(moved, state=state)
        await self.store.save(moved)
        await self.store.publish([event])
        job.CopyFrom(moved)

    async def _finish(
        self,
        job: job_pb2.Job,
        state: job_pb2.JobState.ValueType,
        change: Callable[[job_pb2.Job], None] | None = None,
    ) -> None:
        def close(done: job_pb2.Job) -> None:
            if change is not None:
                change(done)
            done.end_time.CopyFrom(wellknown.now())
            # A finished job never runs again: its secrets need not outlive it, even encrypted.
            done.ClearField("sealed_secrets")

        await self._transition(job, state, close)
        metrics.finished(job)
        self.jobs.pop(job.job_id, None)
        self._progress_saved.pop(job.job_id, None)

    def _event(
        self,
        job: job_pb2.Job,
        *,
        state: job_pb2.JobState.ValueType | None = None,
        progress: progress_pb2.Progress | None = None,
        log: job_pb2.LogLine | None = None,
        result: job_pb2.JobResult | None = None,
    ) -> job_pb2.JobEvent:
        job.last_sequence += 1
        event = job_pb2.JobEvent(sequence=job.last_sequence, job_id=job.job_id, attempt=job.attempt)
        event.event_time.CopyFrom(wellknown.now())
        if state is not None:
            event.state = state
        elif progress is not None:
            event.progress.CopyFrom(progress)
        elif log is not None:
            event.log.CopyFrom(log)
        elif result is not None:
            event.result.CopyFrom(result)
        return event

    # ------------------------------------------------------------------ agents

    def _send(self, agent_id: str, response: agent_service_pb2.ConnectResponse) -> None:
        outbox = self.outboxes.get(agent_id)
        if outbox is not None:
            outbox.put_nowait(response)

    def _send_cancel(self, job: job_pb2.Job) -> None:
        self._send(
            job.agent_id,
            agent_service_pb2.ConnectResponse(
                cancel=agent_service_pb2.JobCancel(
                    job_id=job.job_id,
                    attempt=job.attempt,
                    grace_period=wellknown.duration(self.config.cancel_grace),
                    reason=job.failure_reason,
                )
            ),
        )

    def _send_kill(self, agent_id: str, job_id: str, attempt: int, reason: str) -> None:
        log.warning(
            "refusing stale attempt",
            extra={"fields": {"job_id": job_id, "attempt": attempt, "agent": agent_id}},
        )
        self._send(
            agent_id,
            agent_service_pb2.ConnectResponse(
                kill_stale=agent_service_pb2.StaleAttemptKill(job_id=job_id, attempt=attempt, reason=reason)
            ),
        )

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
