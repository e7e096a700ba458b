"""Submitting :class:`~cosmos.client.jobs.Job` s to Stratum and following them: the card's
``stratum.submit(job)`` with a handle to await, watch and cancel.

The client dials Stratum the way the CLI does: a context from the Cosmos config file (``cosmos up``
writes ``local``; :mod:`cosmos.security.context`), through :func:`cosmos.runtime.channels.connect`
(mutual TLS or a token)::

    async with StratumClient.connect() as stratum:
        handle = await stratum.submit(job, request_id="nightly-2026-12-06")
        async for progress in handle.progress():
            print(f"{progress.percent:.0f}%")
        job = await handle.result()  # raises JobFailedError, JobCancelledError, JobTimedOutError

A Stratum restart does not break a handle: unary calls are retried and the watch is reopened after
the last event seen (:mod:`cosmos.runtime.reconnect`), so each event is delivered once, in order.
Errors come back as the classes of :mod:`cosmos.client.errors`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import grpc

from cosmos.client import errors
from cosmos.client.jobs import Job
from cosmos.common.v1 import progress_pb2
from cosmos.runtime import reconnect
from cosmos.security import context as contexts
from cosmos.security.context import Context
from cosmos.stratum.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

T = TypeVar("T")
JS = job_pb2.JobState
TERMINAL = frozenset(
    {JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED, JS.JOB_STATE_CANCELLED, JS.JOB_STATE_TIMED_OUT}
)
_FAILURES: dict[int, type[errors.JobError]] = {
    JS.JOB_STATE_FAILED: errors.JobFailedError,
    JS.JOB_STATE_CANCELLED: errors.JobCancelledError,
    JS.JOB_STATE_TIMED_OUT: errors.JobTimedOutError,
}


async def _call(call: Callable[[], Awaitable[T]], what: str, backoff: reconnect.Backoff) -> T:
    """``call()``, retried while Stratum is away; any other answer raised as a client error."""
    try:
        return await reconnect.retrying(call, backoff=backoff, what=what)
    except grpc.aio.AioRpcError as exc:
        raise errors.from_grpc(exc) from exc


class StratumClient:
    """Stratum's job API for programs: submit jobs, get handles to follow them."""

    def __init__(self, channel: grpc.aio.Channel, *, backoff: reconnect.Backoff = reconnect.DEFAULT) -> None:
        self.channel = channel
        self.stub = job_service_pb2_grpc.JobServiceStub(channel)
        self.backoff = backoff

    @classmethod
    def connect(
        cls, context: Context | str = "", *, target: str = "", backoff: reconnect.Backoff = reconnect.DEFAULT
    ) -> StratumClient:
        """A client for the context ``context`` (a name, default the current one, or a
        :class:`Context`), to Stratum at ``target`` (default: the context's endpoint)."""
        ctx = context if isinstance(context, Context) else contexts.load(context)
        if target:
            ctx = dataclasses.replace(ctx, endpoints={**ctx.endpoints, "stratum": target})
        return cls(ctx.channel("stratum"), backoff=backoff)

    async def __aenter__(self) -> StratumClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (handles of this client stop working)."""
        await self.channel.close(None)

    async def submit(self, job: Job, *, request_id: str = "") -> JobHandle:
        """Submit ``job``. ``request_id`` makes a retried submit return the same job (default: a new
        UUID, so resubmitting the same Job object twice runs it twice unless it has an
        idempotency key)."""
        request = job_service_pb2.SubmitJobRequest(
            request_id=request_id or uuid.uuid4().hex, spec=job.to_spec()
        )
        reply = await _call(lambda: self.stub.SubmitJob(request), "SubmitJob", self.backoff)
        return JobHandle(self, reply.job, deduplicated=reply.deduplicated)

    async def get(self, job_id: str) -> JobHandle:
        """A handle on an existing job."""
        return JobHandle(self, await self._get(job_id))

    async def _get(self, job_id: str) -> job_pb2.Job:
        request = job_service_pb2.GetJobRequest(job_id=job_id)
        return (await _call(lambda: self.stub.GetJob(request), "GetJob", self.backoff)).job


class JobHandle:
    """A submitted job: its latest snapshot, its events, its end; cancel it."""

    def __init__(self, client: StratumClient, job: job_pb2.Job, *, deduplicated: bool = False) -> None:
        self.client = client
        self.job = job
        """The latest snapshot this handle has seen (refreshed by :meth:`refresh` and :meth:`result`)."""
        self.deduplicated = deduplicated
        """True when the submit matched an existing job (same request id or idempotency key)."""

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def state(self) -> job_pb2.JobState.ValueType:
        return self.job.state

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r}, {JS.Name(self.job.state)})"

    async def refresh(self) -> job_pb2.Job:
        """The job as Stratum has it now."""
        self.job = await self.client._get(self.job_id)
        return self.job

    async def events(self, from_sequence: int = 1) -> AsyncIterator[job_pb2.JobEvent]:
        """Every event of the job from ``from_sequence`` (state changes, progress, log lines, the
        result) until its terminal state, each once and in order across Stratum restarts."""
        seen = max(from_sequence, 1) - 1
        stub, backoff = self.client.stub, self.client.backoff
        delays = backoff.delays()
        # As cosmos.sdk.watch_workflow does: reopen after the last event seen when Stratum goes away,
        # and when the stream ends without a terminal state ask whether the job ended before the
        # first requested sequence (Stratum closes such a stream having sent nothing).
        while True:
            request = job_service_pb2.WatchJobRequest(job_id=self.job_id, from_sequence=seen + 1)
            try:
                stream = stub.WatchJob(request)
                async for reply in stream:
                    delays = backoff.delays()
                    event = reply.event
                    if event.sequence <= seen:
                        continue  # a reopened stream repeats nothing the caller saw
                    seen = event.sequence
                    yield event
                    if event.WhichOneof("event") == "state" and event.state in TERMINAL:
                        await reconnect.finish(stream)  # the call (and its span) ends now
                        return
                current = await self.refresh()
                if current.state in TERMINAL and current.last_sequence <= seen:
                    return
            except grpc.aio.AioRpcError as exc:
                if not reconnect.transient(exc):
                    raise errors.from_grpc(exc) from exc
            await anext(delays)

    async def progress(self) -> AsyncIterator[progress_pb2.Progress]:
        """The job's progress updates (percent, fps, ETA...) until it ends."""
        async for event in self.events():
            if event.WhichOneof("event") == "progress":
                yield event.progress

    async def logs(self) -> AsyncIterator[job_pb2.LogLine]:
        """The job's output lines (stdout and stderr, each tagged) until it ends."""
        async for event in self.events():
            if event.WhichOneof("event") == "log":
                yield event.log

    async def result(self, *, check: bool = True) -> job_pb2.Job:
        """Wait for the job's terminal state; the final snapshot (``.result`` holds exit code,
        outputs, usage and the job's own output). With ``check`` (default) a job that did not
        succeed raises :class:`~cosmos.client.errors.JobFailedError`, ``JobCancelledError`` or
        ``JobTimedOutError``."""
        if self.job.state not in TERMINAL:
            async for _ in self.events(self.job.last_sequence + 1):
                pass
        final = await self.refresh()
        if check and final.state in _FAILURES:
            raise _FAILURES[final.state](final)
        return final

    async def cancel(self, reason: str = "cancelled by the client", *, request_id: str = "") -> job_pb2.Job:
        """Ask Stratum to cancel the job (SIGTERM, grace, SIGKILL on its agent); returns at once with
        the job as recorded: await :meth:`result` to see it end."""
        request = job_service_pb2.CancelJobRequest(
            request_id=request_id or uuid.uuid4().hex, job_id=self.job_id, reason=reason
        )
        self.job = (
            await _call(lambda: self.client.stub.CancelJob(request), "CancelJob", self.client.backoff)
        ).job
        return self.job


def run_job(
    job: Job, *, request_id: str = "", context: Context | str = "", target: str = "", check: bool = True
) -> job_pb2.Job:
    """Submit ``job`` and wait for its end: the blocking form, for scripts with no event loop of their
    own (it runs one). The final ``Job``; raises as :meth:`JobHandle.result` does."""

    async def run() -> job_pb2.Job:
        async with StratumClient.connect(context, target=target) as client:
            handle = await client.submit(job, request_id=request_id)
            return await handle.result(check=check)

    return asyncio.run(run())
