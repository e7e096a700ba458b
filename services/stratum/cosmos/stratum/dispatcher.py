"""The heart of Stratum: jobs from submission to result, across agents that come and go.

One dispatcher per Stratum process owns every live job in memory and persists each state change
(job record in KV, event in the job's stream) before telling anyone. Placement is delegated to the
scheduler (:mod:`cosmos.stratum.placement`). Attempts fence everything an agent reports: a message
about an attempt that is not the job's current one is refused and the agent told to kill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors

from cosmos import errors
from cosmos.common.v1 import progress_pb2
from cosmos.runtime import telemetry, wellknown
from cosmos.security import secrets
from cosmos.security.job_policy import JobPolicy
from cosmos.stratum import metrics, validation, waiting
from cosmos.stratum.agent import progress
from cosmos.stratum.placement import AgentPlacement, PoolAllocator
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.store import JobStore
from cosmos.stratum.v1 import agent_pb2, agent_service_pb2, job_pb2

log = logging.getLogger(__name__)

JS = job_pb2.JobState
TERMINAL = (JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED, JS.JOB_STATE_CANCELLED, JS.JOB_STATE_TIMED_OUT)
ON_AGENT = (JS.JOB_STATE_ASSIGNED, JS.JOB_STATE_RUNNING)
_NAMESPACE = uuid.UUID("0d7b0c2e-51d6-4f5e-a8c2-6c9f0b3a7e21")
DEFAULT_INFRA_ATTEMPTS = 3
MAX_JOB_BYTES = 512 * 1024
"""A job record at most: it is one KV value and one assignment message (NATS takes 1 MB, an agent's
stream 4 MB); request validation keeps specs well below it."""


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
class Dispatcher:
    """Jobs, queue and agent connections of one Stratum process."""

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
    _wait: waiting.AgentWait = field(init=False)

    def __post_init__(self) -> None:
        # Agents have one lease to reconnect after a restart: until then the pool is not complete.
        self._wait = waiting.AgentWait(self.config.unplaceable_timeout, settle=self.registry.lease_seconds)

    # ------------------------------------------------------------------ start-up

    async def recover(self) -> None:
        """Rebuild the queue and the running set from the bucket after a (re)start."""
        for job in await self.store.load_all():
            if job.state in TERMINAL:
                continue
            job.last_sequence = max(job.last_sequence, await self.store.last_sequence(job.job_id))
            self.jobs[job.job_id] = job
            if job.state in ON_AGENT:
                # The agent gets one lease to reconnect and confirm the attempt, else it is requeued.
                self.registry.expect(job.agent_id)
        log.info(
            "recovered jobs",
            extra={
                "fields": {
                    "jobs": len(self.jobs),
                    "queued": sum(j.state == JS.JOB_STATE_QUEUED for j in self.jobs.values()),
                }
            },
        )
        self._kick.set()

    # ------------------------------------------------------------------ API

    async def submit(self, request_id: str, spec_in: job_pb2.JobSpec) -> tuple[job_pb2.Job, bool]:
        """Queue a job (or return the one this ``request_id`` already made); True if deduplicated."""
        validation.check_spec(
            spec_in, self.registry, self.allocator, self.policy, self._wait.pool_complete(self.registry)
        )
        spec = job_pb2.JobSpec()
        spec.CopyFrom(spec_in)
        spec.tenant = spec.tenant or "default"
        # From here on the spec holds only the secrets' names: it is stored, returned and compared.
        values = dict(spec.secrets)
        for name in values:
            spec.secrets[name] = secrets.REDACTED
        if values and self.keyring is None:
            raise errors.FailedPreconditionError(
                "this job has secrets, but Stratum has no secrets key to encrypt them at rest: start it "
                "with --secrets-key-file (or --pki-dir holding secrets.key)",
                reason=errors.Reason.ERROR_REASON_SECRETS_NOT_CONFIGURED,
                metadata={"setting": "--secrets-key-file"},
            )
        # Two tenants' request ids never name the same job.
        job_id = "job-" + uuid.uuid5(_NAMESPACE, f"{spec.tenant}\n{request_id}").hex
        existing = self.jobs.get(job_id) or await self.store.get(job_id)
        if existing is not None:
            # Compared with the secrets redacted: a retry is recognised by the secrets' names.
            if existing.spec != spec:
                raise errors.AlreadyExistsError(
                    f"request_id {request_id!r} was used for a different job",
                    reason=errors.Reason.ERROR_REASON_REQUEST_ID_REUSED,
                    metadata={"job_id": job_id},
                )
            if existing.state == JS.JOB_STATE_QUEUED and job_id not in self.jobs:
                # Stored by a submit whose answer was lost (NATS went away after the save): queue it now.
                self.jobs[job_id] = existing
                self._kick.set()
            return existing, True
        job = job_pb2.Job(job_id=job_id, spec=spec, state=JS.JOB_STATE_QUEUED, request_id=request_id)
        if values:
            assert self.keyring is not None
            job.sealed_secrets.CopyFrom(self.keyring.seal(values, job_id=job_id))
        job.trace_context.update(telemetry.inject_headers())
        job.create_time.CopyFrom(wellknown.now())
        if job.ByteSize() > MAX_JOB_BYTES:
            raise errors.InvalidArgumentError(
                f"the job would be {job.ByteSize()} bytes; at most {MAX_JOB_BYTES}: send a smaller spec",
                violations=[errors.FieldViolation("spec", f"at most {MAX_JOB_BYTES} bytes")],
            )
        # Wholly accepted or refused: the job joins the queue only once its record is stored.
        await self._transition(job, JS.JOB_STATE_QUEUED)
        self.jobs[job_id] = job
        metrics.JOBS_SUBMITTED.inc()
        self._kick.set()
        return job, False

    async def get(self, job_id: str) -> job_pb2.Job:
        """A job, live or finished, or NOT_FOUND."""
        job = self.jobs.get(job_id) or await self.store.get(job_id)
        if job is None:
            raise self.not_found(job_id)
        return job

    @staticmethod
    def not_found(job_id: str) -> errors.NotFoundError:
        """The answer for a job that does not exist (or is another tenant's)."""
        return errors.NotFoundError(
            f"job {job_id!r} does not exist",
            reason=errors.Reason.ERROR_REASON_JOB_NOT_FOUND,
            metadata={"job_id": job_id},
        )

    async def cancel(self, job_id: str, reason: str) -> job_pb2.Job:
        """Cancel a job: at once if queued, through its agent if running."""
        job = await self.get(job_id)
        if job.state in TERMINAL:
            if job.state == JS.JOB_STATE_CANCELLED:
                return job
            raise errors.FailedPreconditionError(
                f"job {job_id!r} already ended ({JS.Name(job.state)})",
                reason=errors.Reason.ERROR_REASON_ALREADY_TERMINAL,
                metadata={"job_id": job_id},
            )
        job.failure_reason = reason or "cancelled"
        if job.state == JS.JOB_STATE_QUEUED or job.agent_id not in self.outboxes:
            self.allocator.release(job.job_id)
            await self._finish(job, JS.JOB_STATE_CANCELLED)
            return job
        # Stored before the agent hears of it: after a restart the attempt is cancelled, not resumed.
        job.cancel_requested = True
        await self.store.save(job)
        self._send_cancel(job)
        return job

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

    # ------------------------------------------------------------------ placement

    async def run(self, stopping: asyncio.Event) -> None:
        """Place queued jobs whenever something changed (and every second, for priority aging)."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), 1.0)
            self._kick.clear()
            try:
                await self._pass()
            except Exception:
                # One bad pass (a bug, NATS briefly away) must not stop placement for good.
                log.exception("dispatch pass failed; retrying")
                await asyncio.sleep(1.0)
                self._kick.set()

    async def _pass(self) -> None:
        for agent_id in self.registry.expire():
            await self._agent_lost(agent_id)
        queued = [job for job in self.jobs.values() if job.state == JS.JOB_STATE_QUEUED]
        if queued:
            placements = self.allocator.place(queued)  # each one's resources are taken already
            for n, placement in enumerate(placements):
                job = self.jobs[placement.job_id]
                try:
                    await self._assign(job, placement)
                except Exception as exc:
                    # The job stays QUEUED (nothing of the assignment was kept) and the others are
                    # still placed; a failure that cannot pass ends the job instead of a retry loop.
                    self.allocator.release(job.job_id)
                    if not _permanent(exc):
                        # NATS away: the pass ends here, and the jobs placed but not yet assigned
                        # give their resources back (the next pass places them afresh).
                        for rest in placements[n + 1 :]:
                            self.allocator.release(rest.job_id)
                        raise
                    await self._fail_unplaceable(job, f"cannot be assigned: {type(exc).__name__}: {exc}")
        for job, reason in self._wait.overdue(
            (job for job in queued if job.state == JS.JOB_STATE_QUEUED), self.registry, self.allocator
        ):
            job.failure_reason = (
                f"no agent could run this job for {self.config.unplaceable_timeout:g}s: {reason}"
            )
            await self._finish(job, JS.JOB_STATE_FAILED)

    async def _assign(self, job: job_pb2.Job, placement: AgentPlacement) -> None:
        spec = self._spec_for_agent(job)
        if spec is None:
            self.allocator.release(job.job_id)
            await self._finish(job, JS.JOB_STATE_FAILED)
            return
        # Built on a copy: the live job becomes ASSIGNED only once that is stored and sendable.
        assigned = job_pb2.Job()
        assigned.CopyFrom(job)
        assigned.attempt += 1
        assigned.agent_id = placement.agent_id
        del assigned.gpu_indices[:]
        assigned.gpu_indices.extend(placement.gpu_indices)
        del assigned.gpu_uuids[:]
        assigned.gpu_uuids.extend(placement.gpu_uuids)
        assigned.assign_time.CopyFrom(wellknown.now())
        assigned.ClearField("progress")
        message = agent_service_pb2.ConnectResponse(
            assign=agent_service_pb2.JobAssignment(
                job_id=assigned.job_id,
                attempt=assigned.attempt,
                spec=spec,
                gpu_indices=placement.gpu_indices,
                gpu_uuids=placement.gpu_uuids,
                trace_context=assigned.trace_context,
            )
        )
        if message.ByteSize() > MAX_JOB_BYTES:
            self.allocator.release(job.job_id)
            await self._fail_unplaceable(
                job, f"its assignment is {message.ByteSize()} bytes; an agent takes at most {MAX_JOB_BYTES}"
            )
            return
        await self._transition(assigned, JS.JOB_STATE_ASSIGNED)
        if job.state != JS.JOB_STATE_QUEUED:
            # Cancelled while the assignment was being saved: the agent never gets it, and the
            # cancel's record is stored again over the assignment's.
            self.allocator.release(job.job_id)
            await self.store.save(job)
            return
        metrics.placed(job)  # the queued job: how long it waited
        job.CopyFrom(assigned)
        self._send(job.agent_id, message)

    async def _fail_unplaceable(self, job: job_pb2.Job, why: str) -> None:
        """End ``job`` FAILED with ``why``; its record is first cut down so that it always fits."""
        log.error(
            "job cannot be placed or sent; failing it", extra={"fields": {"job_id": job.job_id, "why": why}}
        )
        job.failure_reason = why[:1024]
        if job.ByteSize() > MAX_JOB_BYTES // 2:
            # Keep what identifies the job; the bulky parts of its spec are what did not fit.
            for name in ("env", "labels", "inputs", "outputs"):
                job.spec.ClearField(name)
            del job.spec.argv[8:]
        try:
            await self._finish(job, JS.JOB_STATE_FAILED)
        except Exception as exc:
            if not _permanent(exc):
                raise
            log.error("failed job record not stored", extra={"fields": {"job_id": job.job_id}})
            self.jobs.pop(job.job_id, None)

    def _spec_for_agent(self, job: job_pb2.Job) -> job_pb2.JobSpec | None:
        """The spec with its secrets' values, for the assignment message only; None if they do not open."""
        if not job.spec.secrets:
            return job.spec
        try:
            if self.keyring is None:
                raise secrets.SecretsError("Stratum has no secrets key (--secrets-key-file)")
            values = self.keyring.unseal(job.sealed_secrets, job_id=job.job_id)
        except secrets.SecretsError as exc:
            # The key was removed or replaced: the job can never run; say so instead of retrying.
            job.failure_reason = f"cannot unseal the job's secrets: {exc}"
            log.error("cannot unseal job secrets", extra={"fields": {"job_id": job.job_id}})
            return None
        spec = job_pb2.JobSpec()
        spec.CopyFrom(job.spec)
        spec.secrets.update(values)
        return spec

    # ------------------------------------------------------------------ agents

    def agent_connected(
        self, agent: agent_pb2.Agent, running: Iterable[agent_service_pb2.RunningAttempt]
    ) -> asyncio.Queue[agent_service_pb2.ConnectResponse]:
        """Open the agent's outbox, add it to placement, and reconcile what it says it runs."""
        outbox: asyncio.Queue[agent_service_pb2.ConnectResponse] = asyncio.Queue()
        self.outboxes[agent.agent_id] = outbox
        self.allocator.upsert_node(agent)
        reported = {(r.job_id, r.attempt) for r in running}
        for job_id, attempt in reported:
            job = self.jobs.get(job_id)
            if (
                job is None
                or job.attempt != attempt
                or job.agent_id != agent.agent_id
                or job.state not in ON_AGENT
            ):
                self._send_kill(agent.agent_id, job_id, attempt, "attempt is not current")
            else:
                self.allocator.reserve(job, agent.agent_id)
                if job.cancel_requested:
                    self._send_cancel(job)  # the cancel may have been lost with the old stream
        for job in list(self.jobs.values()):
            if (
                job.agent_id == agent.agent_id
                and job.state in ON_AGENT
                and (job.job_id, job.attempt) not in reported
            ):
                # The agent came back without it (restarted host): that attempt is gone.
                self._later(self._requeue(job, f"agent {agent.agent_id} lost the attempt"))
        self._kick.set()
        return outbox

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def agent_disconnected(
        self, agent_id: str, outbox: asyncio.Queue[agent_service_pb2.ConnectResponse], *, broken: bool
    ) -> None:
        """The stream ended. ``broken``: it reset or the agent hung up (its process died or is stopping),
        so unless it reconnects within ``reconnect_grace`` its attempts are requeued; otherwise (Stratum
        stopping) they stay assigned, and the lease decides."""
        if self.outboxes.get(agent_id) is outbox:
            del self.outboxes[agent_id]
            if broken:
                self._later(self._requeue_unless_back(agent_id))

    async def _requeue_unless_back(self, agent_id: str) -> None:
        await asyncio.sleep(self.config.reconnect_grace)
        if agent_id in self.outboxes:
            return  # reconnected: it said in its hello what it still runs
        self.allocator.remove_node(agent_id)  # back in placement when it reconnects
        for job in list(self.jobs.values()):
            if job.agent_id == agent_id and job.state in ON_AGENT:
                await self._requeue(
                    job,
                    f"agent {agent_id} disconnected and did not reconnect within "
                    f"{self.config.reconnect_grace:g}s",
                )

    def schedulable_changed(self, agent: agent_pb2.Agent) -> None:
        """Cordon, drain or uncordon happened."""
        self.allocator.upsert_node(agent)
        self._kick.set()

    async def _agent_lost(self, agent_id: str) -> None:
        self.allocator.remove_node(agent_id)
        for job in list(self.jobs.values()):
            if job.agent_id == agent_id and job.state in ON_AGENT:
                await self._requeue(job, f"agent {agent_id} lost (lease expired)")

    async def revoke_agent(self, agent_id: str, reason: str) -> agent_pb2.Agent:
        """Refuse ``agent_id`` for good: persist it, end its stream, requeue its jobs elsewhere."""
        await self.store.revoke(agent_id, reason)
        agent = self.registry.revoke(agent_id)
        log.warning("agent revoked", extra={"fields": {"agent_id": agent_id, "reason": reason}})
        self.outboxes.pop(agent_id, None)
        await self._agent_lost(agent_id)
        self._kick.set()
        return agent

    async def _requeue(self, job: job_pb2.Job, why: str) -> None:
        self.allocator.release(job.job_id)
        if job.cancel_requested:
            # Cancelled while on the agent that is now gone: the attempt is over, and so is the job.
            await self._finish(job, JS.JOB_STATE_CANCELLED)
            return
        limit = job.spec.infra_retry.max_attempts or DEFAULT_INFRA_ATTEMPTS
        if job.attempt >= limit:
            gave_up = f"{why}; gave up after {job.attempt} attempt(s)"
            await self._finish(job, JS.JOB_STATE_FAILED, lambda j: setattr(j, "failure_reason", gave_up))
            return
        log.warning(
            "requeueing job", extra={"fields": {"job_id": job.job_id, "attempt": job.attempt, "why": why}}
        )

        def unassign(queued: job_pb2.Job) -> None:
            queued.failure_reason = why
            queued.agent_id = ""
            del queued.gpu_indices[:]
            del queued.gpu_uuids[:]

        await self._transition(job, JS.JOB_STATE_QUEUED, unassign)
        metrics.REQUEUES.inc()
        self._kick.set()

    async def agent_message(self, agent_id: str, message: agent_service_pb2.ConnectRequest) -> None:
        """Apply one message from an agent (fenced by attempt)."""
        kind = message.WhichOneof("message")
        if kind == "started":
            job = self._current(agent_id, message.started.job_id, message.started.attempt)
            if job is not None and job.state == JS.JOB_STATE_ASSIGNED:
                job.start_time.CopyFrom(
                    message.started.start_time if message.started.HasField("start_time") else wellknown.now()
                )
                await self._transition(job, JS.JOB_STATE_RUNNING)
        elif kind == "progress":
            job = self._current(agent_id, message.progress.job_id, message.progress.attempt)
            if job is not None:
                await self._progress(job, message.progress.progress)
        elif kind == "logs":
            job = self._current(agent_id, message.logs.job_id, message.logs.attempt)
            if job is not None:
                lines = progress.bounded_lines(message.logs.lines)
                await self.store.publish(self._event(job, log=line) for line in lines)
        elif kind == "finished":
            await self._finished(agent_id, message.finished)

    async def _finished(self, agent_id: str, finished: agent_service_pb2.JobFinished) -> None:
        job = self._current(agent_id, finished.job_id, finished.attempt)
        accepted = job is not None and job.state in ON_AGENT
        reason = "" if accepted else "attempt is not current (stale)"
        if job is not None and accepted:
            final = finished.final_state if finished.final_state in TERMINAL else JS.JOB_STATE_FAILED
            failure = job.failure_reason
            if final == JS.JOB_STATE_SUCCEEDED:
                failure = ""
            elif not failure:
                failure = finished.result.error or JS.Name(final)

            def record(done: job_pb2.Job) -> None:
                done.result.CopyFrom(finished.result)
                done.failure_reason = failure

            # Nothing of the job changes unless all of it is stored: if NATS fails here the stream
            # ends, the agent reconnects and sends the result again, and it is applied then.
            await self.store.publish([self._event(job, result=finished.result)])
            await self._finish(job, final, record)
            self.allocator.release(job.job_id)
            self._kick.set()
        self._send(
            agent_id,
            agent_service_pb2.ConnectResponse(
                ack=agent_service_pb2.FinishAck(
                    job_id=finished.job_id, attempt=finished.attempt, accepted=accepted, reason=reason
                )
            ),
        )

    def _current(self, agent_id: str, job_id: str, attempt: int) -> job_pb2.Job | None:
        """The job if ``attempt`` on ``agent_id`` is its current attempt; else tell the agent to kill it."""
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.agent_id != agent_id or job.state not in ON_AGENT:
            self._send_kill(agent_id, job_id, attempt, "attempt is not current (fenced)")
            return None
        return job

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

    def _send(self, agent_id: str, response: agent_service_pb2.ConnectResponse) -> None:
        outbox = self.outboxes.get(agent_id)
        if outbox is not None:
            outbox.put_nowait(response)

    # ------------------------------------------------------------------ state

    async def _progress(self, job: job_pb2.Job, progress: progress_pb2.Progress) -> None:
        job.progress.CopyFrom(progress)
        await self.store.publish([self._event(job, progress=progress)])
        loop = asyncio.get_running_loop()
        if loop.time() - self._progress_saved.get(job.job_id, 0.0) >= self.config.progress_save_interval:
            self._progress_saved[job.job_id] = loop.time()
            await self.store.save(job)

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


def _permanent(exc: BaseException) -> bool:
    """Whether trying again can never help (too big for NATS or for the agent, refused as invalid)."""
    permanent = (nats.errors.MaxPayloadError, nats.js.errors.BadRequestError, errors.InvalidArgumentError)
    return isinstance(exc, (*permanent, ValueError))
