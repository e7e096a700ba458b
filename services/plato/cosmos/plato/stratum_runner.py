"""The built-in runner of Stratum job steps (``job:`` in a definition).

It is an SDK handler on the ``cosmos-stratum-runner`` queue, run inside Plato: it submits the
rendered :class:`JobSpec` to Stratum with the step attempt's idempotency key as ``request_id`` (so a
redelivered task finds the same job), follows the job with ``WatchJob`` (progress becomes step
heartbeats), and completes or fails the step with the job's result. A job whose failure is
``FAILURE_CLASS_PERMANENT`` fails the step as not retryable: Plato runs no retry for it. Cancelling the
step cancels the job.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from cosmos.plato import subjects
from cosmos.plato.engine import values
from cosmos.runtime import channels
from cosmos.sdk import StepContext, StepError, Worker
from cosmos.security import principals
from cosmos.security.config import Security
from cosmos.stratum.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

JS = job_pb2.JobState
TERMINAL = (JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED, JS.JOB_STATE_CANCELLED, JS.JOB_STATE_TIMED_OUT)
PROGRESS_INTERVAL = 1.0
"""Seconds between step heartbeats carrying a job's progress (the job's other reports are dropped)."""


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
            # Plato and Stratum may start together: wait for the channel rather than fail fast.
            job = (
                await self.jobs.SubmitJob(request, wait_for_ready=True, timeout=30.0, metadata=metadata)
            ).job
        except grpc.aio.AioRpcError as exc:
            retryable = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            raise StepError(f"Stratum refused the job: {exc.details()}", non_retryable=not retryable) from exc
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
            await asyncio.shield(self.jobs.CancelJob(cancel, metadata=metadata))
            raise
        get = job_service_pb2.GetJobRequest(job_id=job.job_id)
        done = (await self.jobs.GetJob(get, metadata=metadata)).job
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

    async def _follow(self, step: StepContext, job_id: str, metadata: tuple[tuple[str, str], ...]) -> None:
        loop = asyncio.get_running_loop()
        last = -PROGRESS_INTERVAL
        watch = job_service_pb2.WatchJobRequest(job_id=job_id)
        async for reply in self.jobs.WatchJob(watch, metadata=metadata):
            event = reply.event
            kind = event.WhichOneof("event")
            if kind == "progress":
                # Every heartbeat is a durable workflow input (an inbox message and a record save):
                # one a second per step is plenty for progress, and Stratum's own stream has them all.
                if loop.time() - last < PROGRESS_INTERVAL:
                    continue
                last = loop.time()
                p = event.progress
                await step.heartbeat(percent=p.percent, message=p.message, fps=p.fps, speed=p.speed)
            elif kind == "state" and event.state in TERMINAL:
                return

    async def close(self) -> None:
        """Close the channel to Stratum."""
        if self._channel is not None:
            await self._channel.close(None)
