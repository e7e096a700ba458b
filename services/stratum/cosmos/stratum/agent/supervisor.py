"""The agent's jobs: assignments become runs, runs report back, results wait for Stratum's ack.

Runs outlive connections: a job keeps running while the stream to Stratum reconnects. Progress and
log messages are dropped while disconnected (they are only news); a run's final ``finished`` message
is kept and re-sent on every new connection until Stratum acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import trace

from cosmos.common.v1 import progress_pb2
from cosmos.runtime import telemetry
from cosmos.stratum.agent import metrics, sandbox, staging
from cosmos.stratum.agent.runner import JobRun, RunLimits
from cosmos.stratum.v1 import agent_service_pb2, job_pb2

log = logging.getLogger(__name__)
tracer = trace.get_tracer("cosmos.stratum.agent")

Key = tuple[str, int]
Send = Callable[[agent_service_pb2.ConnectRequest], None]


@dataclass
class _Attempt:
    run: JobRun
    task: asyncio.Task[None]
    stale: bool = False


def _message(**kwargs: object) -> agent_service_pb2.ConnectRequest:
    message = agent_service_pb2.ConnectRequest(**kwargs)  # type: ignore[arg-type]
    message.request_id = uuid.uuid4().hex
    return message


class JobSupervisor:
    """Every job attempt running on this agent."""

    def __init__(
        self,
        work_root: Path,
        send: Send,
        jail: sandbox.Sandbox | None = None,
        stores: staging.StoreRegistry | None = None,
        limits: RunLimits | None = None,
    ) -> None:
        self.work_root = work_root
        self.limits = limits
        """Tunables of every run (None: the defaults)."""
        self.jail = jail or sandbox.Sandbox(work_root)
        """Every job runs in it (by default: one uid per tenant when the agent is root)."""
        self.stores = stores
        self.send = send
        self.attempts: dict[Key, _Attempt] = {}
        self.unacked: dict[Key, agent_service_pb2.ConnectRequest] = {}

    def running(self) -> list[agent_service_pb2.RunningAttempt]:
        """Attempts this agent still holds, for the hello of a new connection (reconciliation): those
        running, and those finished whose result Stratum has not acknowledged (it is re-sent right
        after the hello, so Stratum must not requeue them meanwhile)."""
        held = [key for key, a in self.attempts.items() if not a.stale]
        held += [key for key in self.unacked if key not in self.attempts]
        return [agent_service_pb2.RunningAttempt(job_id=job_id, attempt=attempt) for job_id, attempt in held]

    def resend_unacked(self) -> None:
        """Send again every result Stratum has not acknowledged yet."""
        for message in self.unacked.values():
            self.send(message)

    def assign(self, assignment: agent_service_pb2.JobAssignment) -> None:
        """Start an assigned attempt (a repeated assignment of a running attempt is ignored)."""
        key = (assignment.job_id, assignment.attempt)
        if key in self.attempts or key in self.unacked:
            return
        job_id, attempt = key

        async def on_progress(progress: progress_pb2.Progress) -> None:
            self.send(
                _message(
                    progress=agent_service_pb2.JobProgressUpdate(
                        job_id=job_id, attempt=attempt, progress=progress
                    )
                )
            )

        async def on_logs(lines: Sequence[job_pb2.LogLine]) -> None:
            self.send(
                _message(logs=agent_service_pb2.JobLogBatch(job_id=job_id, attempt=attempt, lines=lines))
            )

        run = JobRun(
            assignment.spec,
            job_id=job_id,
            attempt=attempt,
            work_root=self.work_root,
            gpu_indices=list(assignment.gpu_indices),
            on_progress=on_progress,
            on_logs=on_logs,
            jail=self.jail,
            stores=self.stores,
            limits=self.limits,
        )
        trace = dict(assignment.trace_context)
        self.attempts[key] = _Attempt(run, asyncio.create_task(self._drive(key, run, trace)))

    async def _drive(self, key: Key, run: JobRun, trace: dict[str, str]) -> None:
        job_id, attempt = key
        # The run joins the trace of whoever submitted the job (an encode, a workflow step).
        with tracer.start_as_current_span(
            "agent.run", context=telemetry.extract_context(trace), attributes={"cosmos.job_id": job_id}
        ) as span:
            span.set_attribute("cosmos.attempt", attempt)
            await self._run_and_report(key, run)

    async def _run_and_report(self, key: Key, run: JobRun) -> None:
        job_id, attempt = key
        try:
            await run.start()
            if run.pid is not None:
                started = agent_service_pb2.JobStarted(job_id=job_id, attempt=attempt, pid=run.pid)
                started.start_time.GetCurrentTime()
                self.send(_message(started=started))
            outcome = await run.wait()
            final_state, result = outcome.state, outcome.result
        except Exception as exc:
            log.exception("job run failed", extra={"fields": {"job_id": job_id, "attempt": attempt}})
            final_state = job_pb2.JOB_STATE_FAILED
            result = job_pb2.JobResult(error=run.mask(f"agent could not run the job: {exc}"))
        metrics.finished(final_state)
        attempt_state = self.attempts.pop(key, None)
        if attempt_state is not None and attempt_state.stale:
            return  # Stratum already gave this attempt to someone else; its result is worthless.
        finished = _message(
            finished=agent_service_pb2.JobFinished(
                job_id=job_id, attempt=attempt, final_state=final_state, result=result
            )
        )
        self.unacked[key] = finished
        self.send(finished)

    async def cancel(self, job_id: str, attempt: int, grace: float) -> None:
        """Stop an attempt: SIGTERM, ``grace`` seconds, SIGKILL of its process group."""
        current = self.attempts.get((job_id, attempt))
        if current is not None:
            await current.run.cancel(grace)

    async def kill_stale(self, job_id: str, attempt: int) -> None:
        """Stratum fenced this attempt: kill it at once and never report it."""
        current = self.attempts.get((job_id, attempt))
        self.unacked.pop((job_id, attempt), None)
        if current is not None:
            current.stale = True
            await current.run.cancel(0.0)

    def acked(self, job_id: str, attempt: int) -> None:
        """Stratum has the result (accepted or refused): stop re-sending it."""
        self.unacked.pop((job_id, attempt), None)

    async def shutdown(self, grace: float) -> None:
        """Stop every running attempt (the agent is stopping). They are not reported: the job was not
        cancelled, its host went away, so Stratum requeues it when the stream closes."""
        for current in list(self.attempts.values()):
            current.stale = True
            await current.run.cancel(grace)
        tasks = [a.task for a in self.attempts.values()]
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), grace + 5)
