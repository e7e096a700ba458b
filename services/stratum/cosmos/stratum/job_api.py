"""``cosmos.stratum.v1.JobService``: submit, get, list, cancel and watch jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import nats.errors
from nats.js.api import DeliverPolicy

from cosmos import errors
from cosmos.runtime import paging
from cosmos.security import auth, storage
from cosmos.stratum import validation
from cosmos.stratum.dispatcher import TERMINAL, Dispatcher
from cosmos.stratum.store import EVENTS_STREAM, events_subject
from cosmos.stratum.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

DEFAULT_TENANT = "default"
"""Tenant of callers that have none (workloads acting in their own name)."""


def shown(job: job_pb2.Job) -> job_pb2.Job:
    """The job as a response carries it: without its sealed secrets (the spec names them, redacted)."""
    if not job.HasField("sealed_secrets"):
        return job
    out = job_pb2.Job()
    out.CopyFrom(job)
    out.ClearField("sealed_secrets")
    return out


class JobApi(job_service_pb2_grpc.JobServiceServicer):
    """Answers from the dispatcher (live jobs) and the jobs bucket (finished ones)."""

    def __init__(
        self, dispatcher: Dispatcher, stopping: asyncio.Event, storage_roots: Sequence[storage.Root] = ()
    ) -> None:
        self.dispatcher = dispatcher
        self.stopping = stopping
        self.storage_roots = tuple(storage_roots)
        """Where jobs' artifact URIs may lie (``<root>/<tenant>/...``); none: no file URI."""

    async def _visible(self, job_id: str) -> job_pb2.Job:
        """The job, or NOT_FOUND when it does not exist *for this caller* (another tenant's)."""
        job = await self.dispatcher.get(job_id)
        if not auth.current().sees(job.spec.tenant):
            raise self.dispatcher.not_found(job_id)
        return job

    async def SubmitJob(
        self, request: job_service_pb2.SubmitJobRequest, context: Any
    ) -> job_service_pb2.SubmitJobResponse:
        errors.require(request.request_id, "request_id")
        tenant = auth.current().tenant or DEFAULT_TENANT
        if request.spec.tenant and request.spec.tenant != tenant:
            raise errors.InvalidArgumentError(
                f"spec.tenant {request.spec.tenant!r}: the tenant comes from your identity ({tenant!r})",
                violations=[errors.FieldViolation("spec.tenant", f"leave empty or set {tenant!r}")],
            )
        spec = job_pb2.JobSpec()
        spec.CopyFrom(request.spec)
        spec.tenant = tenant
        validation.check_storage(spec, self.storage_roots)
        job, deduplicated = await self.dispatcher.submit(request.request_id, spec)
        return job_service_pb2.SubmitJobResponse(job=shown(job), deduplicated=deduplicated)

    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: Any
    ) -> job_service_pb2.GetJobResponse:
        errors.require(request.job_id, "job_id")
        return job_service_pb2.GetJobResponse(job=shown(await self._visible(request.job_id)))

    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: Any
    ) -> job_service_pb2.ListJobsResponse:
        query = f"state={request.state};tenant={request.tenant};agent={request.agent_id}"
        page = paging.parse(request.page_size, request.page_token, query)
        stored = {job.job_id: job for job in await self.dispatcher.store.load_all()}
        stored.update(self.dispatcher.jobs)  # live state is fresher than the bucket (progress)
        caller = auth.current()
        jobs = [
            job
            for job in stored.values()
            if caller.sees(job.spec.tenant)
            and (not request.state or job.state == request.state)
            and (not request.tenant or job.spec.tenant == request.tenant)
            and (not request.agent_id or job.agent_id == request.agent_id)
        ]
        chunk, next_token = paging.newest_first(
            jobs,
            lambda job: (job.create_time.ToNanoseconds(), job.job_id),
            page,
            query,
            size=lambda job: shown(job).ByteSize(),
        )
        return job_service_pb2.ListJobsResponse(
            jobs=[shown(job) for job in chunk], next_page_token=next_token
        )

    async def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: Any
    ) -> job_service_pb2.CancelJobResponse:
        errors.require(request.request_id, "request_id")
        errors.require(request.job_id, "job_id")
        await self._visible(request.job_id)
        return job_service_pb2.CancelJobResponse(
            job=shown(await self.dispatcher.cancel(request.job_id, request.reason))
        )

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        errors.require(request.job_id, "job_id")
        await self._visible(request.job_id)
        js = self.dispatcher.store.js
        sub = await js.subscribe(
            events_subject(request.job_id),
            stream=EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        try:
            while not self.stopping.is_set():
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                event = job_pb2.JobEvent.FromString(msg.data)
                if event.sequence >= request.from_sequence:
                    yield job_service_pb2.WatchJobResponse(event=event)
                if event.WhichOneof("event") == "state" and event.state in TERMINAL:
                    return
        finally:
            await sub.unsubscribe()
