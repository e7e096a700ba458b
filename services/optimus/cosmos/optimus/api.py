"""``cosmos.optimus.v1.EncodeService``: the encode API, stateless in front of Plato.

An encode *is* an ``encode-ladder`` workflow: its id is the workflow id, everything shown is derived
from the workflow (:mod:`cosmos.optimus.view`). Submissions are validated here (source and output
inside the caller's storage area, :mod:`cosmos.security.storage`; source readable, profiles known,
output writable and not holding files Cosmos did not publish), de-duplicated by ``request_id`` or,
without one, by the content key (hash of source, profiles and output) unless ``force``, and started
on Plato. With ``retry``, a FAILED or CANCELLED encode of the same key is resumed instead (Plato's
RetryWorkflow: the chunks that completed are kept, the failed ones encoded again; docs/encoding.md,
"Resuming a failed encode").

This module starts encodes (``SubmitEncode``); the checks before a start are
:mod:`cosmos.optimus.submission`'s and :mod:`cosmos.optimus.s3_checks`', the handlers that look at
encodes (and cancel them) :mod:`cosmos.optimus.reads`', and what they all share
:mod:`cosmos.optimus.base`'s.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import uuid
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import grpc

from cosmos import errors
from cosmos.optimus import metrics, submission
from cosmos.optimus import profiles as catalog
from cosmos.optimus.base import DEFINITION_FILE, DEFINITION_ID, PLATO_CALL, for_caller
from cosmos.optimus.media import publish
from cosmos.optimus.reads import EncodeReads
from cosmos.optimus.submission import image_problem
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2
from cosmos.optimus.view import QUALITY_MODES, encode_view
from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2
from cosmos.runtime import batching, rpc_errors, telemetry
from cosmos.security import auth, principals, storage

# The names importers have always taken from here.
__all__ = ["DEFINITION_FILE", "DEFINITION_ID", "EncodeApi", "image_problem"]

RESUMABLE = (workflow_pb2.WORKFLOW_STATE_FAILED, workflow_pb2.WORKFLOW_STATE_CANCELLED)
"""Workflow states ``retry`` resumes."""
CHUNK_SECONDS = 4
"""Length the source is cut into for the parallel encodes (at the source's next keyframe)."""
MAX_CHUNKS = 0
"""Chunks of one encode at most: 0, no limit. (A cap of 100 chunks once kept the workflow's state in
one NATS message; Plato now stores each step on its own, so a 2 h title is cut into 4 s chunks.)"""
SOURCE_DIR = "source"
"""Where an ``s3://`` source lands in each job's work dir."""


class EncodeApi(EncodeReads):
    """The encode service: starts encodes here, answers about them from :class:`EncodeReads`."""

    def _coalescer(
        self,
    ) -> batching.Coalescer[
        workflow_service_pb2.StartWorkflowsEntry, workflow_service_pb2.StartWorkflowResponse
    ]:
        call = for_caller()
        key = dict(call.get("metadata", ())).get(principals.ON_BEHALF_OF, "")
        found = self._starts.get(key)
        if found is None:
            found = batching.Coalescer(functools.partial(self._start_batch, call))
            self._starts[key] = found
        return found

    async def aclose(self) -> None:
        """Wait for the start batches in flight (their callers are waiting for them too)."""
        await asyncio.gather(*(c.aclose() for c in self._starts.values()))

    async def register(self) -> int:
        """Register the shipped encode-ladder definition with Plato (idempotent); its version."""
        request = workflow_service_pb2.RegisterDefinitionRequest(
            request_id=f"optimus-{hashlib.sha256(DEFINITION_FILE.read_bytes()).hexdigest()[:16]}",
            source_yaml=DEFINITION_FILE.read_text(),
        )
        reply = await self.workflows.RegisterDefinition(request, **PLATO_CALL)
        self.registered = True
        return reply.definition.version

    async def _ensure_registered(self) -> None:
        # Start-up registers in the background; a submit arriving first registers itself.
        if not self.registered:
            try:
                await self.register()
            except grpc.aio.AioRpcError as exc:
                raise errors.UnavailableError(f"Plato is not reachable: {exc.details()}") from exc

    async def _start_batch(
        self, call: dict[str, Any], entries: Sequence[workflow_service_pb2.StartWorkflowsEntry]
    ) -> list[workflow_service_pb2.StartWorkflowResponse | BaseException]:
        request = workflow_service_pb2.StartWorkflowsRequest(entries=entries)
        try:
            # The batch runs in the coalescer's task, outside any caller's trace: its span (and the
            # StartWorkflows call under it) joins the first entry's trace and links every entry's.
            with telemetry.batch_span("optimus.start_workflows", [e.trace_context for e in entries]):
                reply = await self.workflows.StartWorkflows(request, **call)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # Plato's own answer (a refused start) is the caller's, not an outage.
                raise rpc_errors.as_rpc_error(exc) from exc
            raise errors.UnavailableError(
                f"Plato did not start the workflow: {exc.code().name}: {rpc_errors.clip(exc.details() or '')}"
            ) from exc
        return [
            rpc_errors.from_status(result.error) if result.HasField("error") else result.started
            for result in reply.results
        ]

    async def SubmitEncode(
        self, request: encode_service_pb2.SubmitEncodeRequest, context: Any
    ) -> encode_service_pb2.SubmitEncodeResponse:
        if request.retry and request.force:
            raise errors.invalid(
                "retry", "retry resumes an existing encode; force starts a new one: not both"
            )
        source, chosen, output = submission.validate(request, self.storage_roots, self.job_policy)
        s3_source, s3_output = submission.is_s3(request.source_uri), submission.is_s3(request.output_uri)
        if s3_source:
            await self.s3.check_source(request.source_uri)
        if s3_output:
            await self.s3.refuse_foreign_objects(request.output_uri)
        await self._ensure_registered()
        names = [p.name for p in chosen]
        quality = QUALITY_MODES[request.quality or encode_pb2.QUALITY_MODE_SAMPLED]
        # An overwrite is another encode than the publish it replaces (the same one twice is one).
        replace = "\noverwrite" if request.overwrite else ""
        # Chunks encoded in an image are another encode (keys without an image are unchanged).
        image = f"\nimage={request.image}" if request.image else ""
        source_key = request.source_uri if s3_source else str(source)
        output_key = request.output_uri.rstrip("/") if s3_output else str(output)
        content_key = hashlib.sha256(
            f"{source_key}\n{','.join(names)}\n{output_key}\n{quality}{replace}{image}".encode()
        ).hexdigest()
        if request.request_id:
            key = request.request_id
        elif request.force:
            key = uuid.uuid4().hex
        else:
            key = content_key  # the card's idempotency: same source, profiles and output = same encode
        # Two tenants' request ids (or identical content) never name the same encode.
        tenant = auth.current().tenant or "default"
        encode_id = "enc-" + hashlib.sha256(f"{tenant}\n{key}".encode()).hexdigest()[:24]
        scratch = (
            submission.image_scratch(self.storage_roots, tenant) if request.image else self.work_root / tenant
        )
        # Built in place: the entry's request is the start (no copy).
        entry = workflow_service_pb2.StartWorkflowsEntry(trace_context=telemetry.inject_headers())
        start = entry.request
        start.request_id, start.definition_id, start.workflow_id = key, DEFINITION_ID, encode_id
        # An s3:// source is staged by the agent into each job's work dir (once per host, hard-linked
        # from its cache) under SOURCE_PATH; the jobs read it there by that relative path. An s3://
        # output is uploaded by the agent from the publish job's staged tree.
        source_name = PurePosixPath(request.source_uri).name or "source"
        local_source = f"{SOURCE_DIR}/{source_name}" if s3_source else str(source)
        inp: dict[str, Any] = {
            "source": local_source,
            "source_uri": request.source_uri,
            "source_inputs": [{"uri": request.source_uri, "path": local_source}] if s3_source else [],
            "output": output_key if s3_output else output.as_uri(),
            "publish_outputs": [{"uri": output_key, "path": publish.STAGED}] if s3_output else [],
            "overwrite": request.overwrite,
            # The publish step checks again, when it writes, that the output is still in this area.
            "output_area": output_key
            if s3_output
            else str(storage.area_of(output, self.storage_roots) or output.parent),
            "quality": quality,
            "ladder": request.ladder,
            "priority": request.priority,
            # Per tenant: the agent gives <work-root>/<tenant> to the tenant's job uid (sandbox).
            "work_dir": str(scratch / encode_id),
            # The encode's last step removes work_dir, and only ever something inside this area.
            "work_area": str(scratch),
            "chunk_seconds": CHUNK_SECONDS,
            "max_chunks": MAX_CHUNKS,
            "request_id": request.request_id,
            "content_key": content_key,
            # The chunk encodes' container image ('' = host processes): picks the encode step.
            "image": request.image,
        }
        ladder, ladder_struct = catalog.ladder_input(tuple(names))
        start.input.MergeFrom(ladder_struct)
        start.input.update(inp)
        inp.update(ladder)
        try:
            reply = await self._coalescer().submit(entry)
        except errors.AlreadyExistsError as exc:
            raise errors.AlreadyExistsError(
                f"request_id {request.request_id!r} was used for a different encode",
                reason=errors.Reason.ERROR_REASON_REQUEST_ID_REUSED,
                metadata={"encode_id": encode_id},
            ) from exc
        workflow, resumed = reply.workflow, False
        if request.retry and workflow.state in RESUMABLE:
            workflow, resumed = await self._resume(workflow), True
        outcome = "resumed" if resumed else "deduplicated" if reply.already_started else "started"
        metrics.ENCODES_SUBMITTED.labels(outcome).inc()
        # Plato refuses a start whose input differs from the stored workflow's, so the workflow's
        # input is the one just sent: view it from the dict rather than converting the Struct back.
        return encode_service_pb2.SubmitEncodeResponse(
            encode=encode_view(workflow, inp),
            deduplicated=reply.already_started or resumed,
            resumed=resumed,
        )

    async def _resume(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        """Retry a failed encode's workflow. One retry per failure: the retry's request id names the
        failure (its last event), so concurrent ``--retry`` submits of one failed encode resume it
        once, and a later failure of the resumed encode can be retried again."""
        request = workflow_service_pb2.RetryWorkflowRequest(
            request_id=f"encode-retry:{workflow.workflow_id}:{workflow.last_sequence}",
            workflow_id=workflow.workflow_id,
        )
        try:
            reply = await self.workflows.RetryWorkflow(request, **for_caller())
        except grpc.aio.AioRpcError as exc:
            raise rpc_errors.as_rpc_error(exc) from exc
        return reply.workflow
