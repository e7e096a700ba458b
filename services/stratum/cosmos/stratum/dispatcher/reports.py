"""What agents report: their hello (reconciled with what the dispatcher thinks they run), a change
of their schedulable flag, and each attempt's start, progress, log lines and result.

Attempts fence everything an agent reports: a message about an attempt that is not the job's
current one is refused and the agent told to kill it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from cosmos.common.v1 import progress_pb2
from cosmos.runtime import wellknown
from cosmos.stratum.agent import progress
from cosmos.stratum.dispatcher.core import JS, ON_AGENT, TERMINAL
from cosmos.stratum.dispatcher.recovery import Recovery
from cosmos.stratum.v1 import agent_pb2, agent_service_pb2, job_pb2


class AgentReports(Recovery):
    """Agents connecting and reporting on their attempts."""

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

    def schedulable_changed(self, agent: agent_pb2.Agent) -> None:
        """Cordon, drain or uncordon happened."""
        self.allocator.upsert_node(agent)
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

    async def _progress(self, job: job_pb2.Job, progress: progress_pb2.Progress) -> None:
        job.progress.CopyFrom(progress)
        await self.store.publish([self._event(job, progress=progress)])
        loop = asyncio.get_running_loop()
        if loop.time() - self._progress_saved.get(job.job_id, 0.0) >= self.config.progress_save_interval:
            self._progress_saved[job.job_id] = loop.time()
            await self.store.save(job)
