"""The built-in runner of Stratum job steps (``job:`` in a definition).

It is an SDK handler on the ``cosmos-stratum-runner`` queue (run beside Plato by ``cosmos plato
--stratum``, :mod:`cosmos.runners.plato`): it submits the
rendered :class:`JobSpec` to Stratum with the step attempt's idempotency key as ``request_id`` (so a
redelivered task finds the same job), follows the job with ``WatchJob`` (progress becomes step
heartbeats), and completes or fails the step with the job's result. A job whose failure is
``FAILURE_CLASS_PERMANENT`` fails the step as not retryable: Plato runs no retry for it. Cancelling the
step cancels the job.

Stratum being away (restarting, unreachable) is not the step's failure: every call to it is retried
with backoff while it answers ``UNAVAILABLE`` (or not at all), the submit with the same
``request_id`` (so it finds the job it made), and the watch resumes after the last event it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import nats.errors

from cosmos.protocol import subjects, values
from cosmos.runtime import channels, reconnect
from cosmos.sdk import StepContext, StepError, Worker
from cosmos.security import principals
from cosmos.security.config import Security
from cosmos.stratum.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

JS = job_pb2.JobState
TERMINAL = (JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED, JS.JOB_STATE_CANCELLED, JS.JOB_STATE_TIMED_OUT)
PROGRESS_INTERVAL = 1.0
"""Seconds between step heartbeats carrying a job's progress (the job's other reports are dropped)."""
WAITING_BEAT = 10.0
"""While Stratum is away, the step heartbeats this often (its heartbeat timeout is not Stratum's)."""
CALL_TIMEOUT = 30.0
"""Seconds one unary call to Stratum may take before it counts as unavailable and is retried."""

T = TypeVar("T")


class StratumRunner:
    """Runs job steps on Stratum at ``target`` (``HOST:PORT``)."""

    def __init__(self, target: str, security: Security) -> None:
        self.target = target
        self.security = security
        self._channel: grpc.aio.Channel | None = None

    def register(self, worker: Worker) -> None:
        """Serve the Stratum job queue with this runner."""
        worker.handler(subjects.STRATUM_QUEUE)(self.run)

    @property
    def jobs(self) -> job_service_pb2_grpc.JobServiceAsyncStub:
        if self._channel is None:
            self._channel = channels.connect(self.target, "stratum", self.security)
        return job_service_pb2_grpc.JobServiceStub(self._channel)

    async def run(self, step: StepContext) -> dict[str, Any]:
        """Submit, follow and report one job attempt."""
        request = job_service_pb2.SubmitJobRequest(request_id=step.idempotency_key, spec=step.task.job_spec)
        # The job belongs to the workflow's tenant: Plato submits it on the tenant's behalf.
        acting = principals.Principal(
            "user",
            f"workflow:{step.task.workflow_id}",
            step.task.tenant or "default",
            frozenset({"submitter"}),
        )
        metadata = ((principals.ON_BEHALF_OF, acting.delegation()),)
        try:
            # A repeat finds the job the first submit made (same request_id), whichever one got through.
            job = (
                await self._call(
                    step,
                    lambda: self.jobs.SubmitJob(
                        request, wait_for_ready=True, timeout=CALL_TIMEOUT, metadata=metadata
                    ),
                )
            ).job
        except grpc.aio.AioRpcError as exc:
            raise StepError(f"Stratum refused the job: {exc.details()}", non_retryable=True) from exc
        try:
            await self._follow(step, job.job_id, metadata)
        except asyncio.CancelledError:
            if not step.cancelled.is_set():
                raise  # Plato is stopping: the task is redelivered and finds this job again
            cancel = job_service_pb2.CancelJobRequest(
                request_id=f"{step.idempotency_key}:cancel",
                job_id=job.job_id,
                reason="workflow step cancelled",
            )
            await asyncio.shield(self._call(step, lambda: self.jobs.CancelJob(cancel, metadata=metadata)))
            raise
        get = job_service_pb2.GetJobRequest(job_id=job.job_id)
        done = (
            await self._call(
                step,
                lambda: self.jobs.GetJob(get, wait_for_ready=True, timeout=CALL_TIMEOUT, metadata=metadata),
            )
        ).job
        if done.state != JS.JOB_STATE_SUCCEEDED:
            state = JS.Name(done.state).removeprefix("JOB_STATE_").lower()
            # A deterministic failure (corrupt source, invalid argument, full disk) fails the same
            # way on every attempt: the step fails at once, without its retries.
            permanent = done.result.failure_class == job_pb2.FAILURE_CLASS_PERMANENT
            raise StepError(
                f"job {done.job_id} {state}: {done.failure_reason or done.result.error}"
                + (" (not retryable)" if permanent else ""),
                non_retryable=permanent,
            )
        # The job's own result (what it wrote to $COSMOS_RESULT_FILE) is the step output; how it ran
        # goes under "job".
        return {
            **values.struct_to_dict(done.result.output),
            "job": {
                "job_id": done.job_id,
                "agent_id": done.agent_id,
                "attempt": done.attempt,
                "exit_code": done.result.exit_code,
                "outputs": [{"uri": a.uri, "path": a.path} for a in done.result.outputs],
                "cpu_seconds": done.result.usage.cpu_seconds,
                "wall_seconds": done.result.usage.wall_time.ToTimedelta().total_seconds(),
            },
        }

    async def _call(self, step: StepContext, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, again with backoff for as long as Stratum is unavailable; other errors raise."""
        loop = asyncio.get_running_loop()
        beat = -WAITING_BEAT

        async def waiting() -> None:
            # The step stays alive meanwhile (its heartbeat timeout is about the step, not Stratum).
            nonlocal beat
            if loop.time() - beat >= WAITING_BEAT:
                beat = loop.time()
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await step.heartbeat(message="waiting for Stratum")

        return await reconnect.retrying(call, waiting, what="Stratum")

    async def _follow(self, step: StepContext, job_id: str, metadata: tuple[tuple[str, str], ...]) -> None:
        """Until the job's terminal state, across Stratum restarts: the watch resumes after the last
        event seen (a stream that ends without one, or breaks, is opened again)."""
        loop = asyncio.get_running_loop()
        last = -PROGRESS_INTERVAL
        seen = 0

        def watch() -> AsyncIterable[job_service_pb2.WatchJobResponse]:
            request = job_service_pb2.WatchJobRequest(job_id=job_id, from_sequence=seen + 1)
            return self.jobs.WatchJob(request, metadata=metadata)

        def terminal(reply: job_service_pb2.WatchJobResponse) -> bool:
            return reply.event.WhichOneof("event") == "state" and reply.event.state in TERMINAL

        async for reply in reconnect.reconnecting(watch, terminal, what=f"watch of {job_id}"):
            event = reply.event
            seen = max(seen, event.sequence)
            if event.WhichOneof("event") == "progress":
                # Every heartbeat is a durable workflow input (an inbox message and a record save):
                # one a second per step is plenty for progress, and Stratum's own stream has them all.
                if loop.time() - last < PROGRESS_INTERVAL:
                    continue
                last = loop.time()
                p = event.progress
                await step.heartbeat(percent=p.percent, message=p.message, fps=p.fps, speed=p.speed)

    async def close(self) -> None:
        """Close the channel to Stratum."""
        if self._channel is not None:
            await self._channel.close(None)
