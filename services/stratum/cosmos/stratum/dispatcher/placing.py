"""The placement pass: expired agents' attempts requeued, queued jobs placed by the scheduler
(:mod:`cosmos.stratum.placement`) and assigned to their agents, and jobs no agent could take for
too long failed with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
import nats.js.errors

from cosmos import errors
from cosmos.runtime import wellknown
from cosmos.security import secrets
from cosmos.stratum import metrics
from cosmos.stratum.dispatcher import core
from cosmos.stratum.dispatcher.core import JS
from cosmos.stratum.dispatcher.recovery import Recovery
from cosmos.stratum.placement import AgentPlacement
from cosmos.stratum.v1 import agent_service_pb2, job_pb2

log = logging.getLogger("cosmos.stratum.dispatcher")


class PlacementPass(Recovery):
    """The loop that places queued jobs, and the assignment of each placed job to its agent."""

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
            self._abandon(agent_id, f"agent {agent_id} lost (lease expired)", unless_back=False)
        await self._requeue_abandoned()
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
        if message.ByteSize() > core.MAX_JOB_BYTES:
            self.allocator.release(job.job_id)
            await self._fail_unplaceable(
                job,
                f"its assignment is {message.ByteSize()} bytes; an agent takes at most {core.MAX_JOB_BYTES}",
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
        if job.ByteSize() > core.MAX_JOB_BYTES // 2:
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


def _permanent(exc: BaseException) -> bool:
    """Whether trying again can never help (too big for NATS or for the agent, refused as invalid)."""
    permanent = (nats.errors.MaxPayloadError, nats.js.errors.BadRequestError, errors.InvalidArgumentError)
    return isinstance(exc, (*permanent, ValueError))
