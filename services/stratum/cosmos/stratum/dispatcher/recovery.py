"""Recovery: the live jobs rebuilt from the bucket after a (re)start or a leader change, and the
attempts of an agent that is gone (lease expired, stream broken for good, revoked) requeued."""

from __future__ import annotations

import asyncio
import logging

from cosmos.stratum import metrics
from cosmos.stratum.dispatcher.core import DEFAULT_INFRA_ATTEMPTS, JS, ON_AGENT, TERMINAL, DispatcherCore
from cosmos.stratum.v1 import agent_pb2, agent_service_pb2, job_pb2

log = logging.getLogger("cosmos.stratum.dispatcher")


class Recovery(DispatcherCore):
    """Start-up recovery, and requeue on the loss of an agent."""

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
        why = f"agent {agent_id} disconnected and did not reconnect within {self.config.reconnect_grace:g}s"
        self._abandon(agent_id, why, unless_back=True)

    def _abandon(self, agent_id: str, why: str, *, unless_back: bool) -> None:
        """Have the placement pass requeue ``agent_id``'s attempts. The agent stays marked until every
        one is requeued, so one whose write failed (NATS away, the leader lease pausing under load) is
        requeued by the next pass rather than left on a dead agent until Stratum restarts.
        ``unless_back``: a reconnect before then cancels it (its hello says what it still runs)."""
        self.allocator.remove_node(agent_id)  # back in placement when it reconnects
        self._abandoned[agent_id] = (why, unless_back)
        self._kick.set()

    async def _requeue_abandoned(self) -> None:
        # One at a time (the pass and a revoke): a job is in memory still on its agent until its
        # requeue is stored, so two would both requeue it.
        async with self._requeuing:
            for agent_id, (why, unless_back) in list(self._abandoned.items()):
                if not (unless_back and agent_id in self.outboxes):
                    for job in list(self.jobs.values()):
                        if job.agent_id == agent_id and job.state in ON_AGENT:
                            await self._requeue(job, why)
                self._abandoned.pop(agent_id, None)

    async def revoke_agent(self, agent_id: str, reason: str) -> agent_pb2.Agent:
        """Refuse ``agent_id`` for good: persist it, end its stream, requeue its jobs elsewhere."""
        await self.store.revoke(agent_id, reason)
        agent = self.registry.revoke(agent_id)
        log.warning("agent revoked", extra={"fields": {"agent_id": agent_id, "reason": reason}})
        self.outboxes.pop(agent_id, None)
        self._abandon(agent_id, f"agent {agent_id} revoked", unless_back=False)
        await self._requeue_abandoned()  # done when the call returns (else by the next pass)
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
