"""``cosmos.optimus.v1.EncodeService``: the encode API, stateless in front of Plato.

An encode *is* an ``encode-ladder`` workflow: its id is the workflow id, everything shown is derived
from the workflow (:mod:`cosmos.optimus.view`). Submissions are validated here (source and output
inside the caller's storage area, :mod:`cosmos.security.storage`; source readable, profiles known,
output writable and not holding files Cosmos did not publish), de-duplicated by ``request_id`` or,
without one, by the content key (hash of source, profiles and output) unless ``force``, and started
on Plato. With ``retry``, a FAILED or CANCELLED encode of the same key is resumed instead (Plato's
RetryWorkflow: the chunks that completed are kept, the failed ones encoded again; docs/encoding.md,
"Resuming a failed encode").
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import grpc
from google.protobuf import json_format

from cosmos import errors
from cosmos.optimus import metrics
from cosmos.optimus import profiles as catalog
from cosmos.optimus.media import publish
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.optimus.view import QUALITY_MODES, encode_view
from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime import batching, paging, reconnect, rpc_errors, s3, telemetry
from cosmos.security import auth, job_policy, principals, storage

DEFINITION_ID = "encode-ladder"
DEFINITION_FILE = Path(__file__).with_name("workflows") / "encode-ladder.yaml"
ES = encode_pb2.EncodeState
TERMINAL = (ES.ENCODE_STATE_SUCCEEDED, ES.ENCODE_STATE_FAILED, ES.ENCODE_STATE_CANCELLED)
RESUMABLE = (workflow_pb2.WORKFLOW_STATE_FAILED, workflow_pb2.WORKFLOW_STATE_CANCELLED)
"""Workflow states ``retry`` resumes."""
WATCH_INTERVAL = 0.5
CHUNK_SECONDS = 4
"""Length the source is cut into for the parallel encodes (at the source's next keyframe)."""
MAX_CHUNKS = 0
"""Chunks of one encode at most: 0, no limit. (A cap of 100 chunks once kept the workflow's state in
one NATS message; Plato now stores each step on its own, so a 2 h title is cut into 4 s chunks.)"""


# Optimus and Plato start together: a call waits for the channel to connect (up to the timeout)
# instead of failing fast while it backs off from an earlier refused connection.
PLATO_CALL: dict[str, Any] = {"wait_for_ready": True, "timeout": 15.0}


def _for_caller() -> dict[str, Any]:
    """:data:`PLATO_CALL` acting for the caller of the RPC being handled: Plato authorizes *them*
    (their tenant and roles), not Optimus."""
    caller = auth.current()
    if not caller.is_person:
        return PLATO_CALL
    return {**PLATO_CALL, "metadata": ((principals.ON_BEHALF_OF, caller.delegation()),)}


_STATE_FILTER = {
    ES.ENCODE_STATE_PENDING: workflow_pb2.WORKFLOW_STATE_PENDING,
    ES.ENCODE_STATE_RUNNING: workflow_pb2.WORKFLOW_STATE_RUNNING,
    ES.ENCODE_STATE_SUCCEEDED: workflow_pb2.WORKFLOW_STATE_COMPLETED,
    ES.ENCODE_STATE_FAILED: workflow_pb2.WORKFLOW_STATE_FAILED,
    ES.ENCODE_STATE_CANCELLED: workflow_pb2.WORKFLOW_STATE_CANCELLED,
}


class EncodeApi(encode_service_pb2_grpc.EncodeServiceServicer):
    """Answers from Plato; holds nothing but a channel."""

    def __init__(
        self,
        plato: grpc.aio.Channel,
        work_root: Path,
        stopping: asyncio.Event,
        storage_roots: Sequence[storage.Root] = (),
        job_policy: job_policy.JobPolicy | None = None,
    ) -> None:
        self.workflows = workflow_service_pb2_grpc.WorkflowServiceStub(plato)
        self.work_root = work_root.absolute()
        self.storage_roots = tuple(storage_roots)
        """Where callers' sources and outputs may lie (``<root>/<tenant>/...``); none: no file URI."""
        self.job_policy = job_policy
        """Stratum's per-tenant allow-list, for the ``image`` of an encode; None: any image."""
        self.stopping = stopping
        self.s3_client: s3.S3Client | None = None
        self.registered = False
        self._starts: dict[
            str,
            batching.Coalescer[
                workflow_service_pb2.StartWorkflowsEntry, workflow_service_pb2.StartWorkflowResponse
            ],
        ] = {}
        """Concurrent submits of one caller share ``StartWorkflows`` calls (under load most of a
        start's cost in both services is the RPC itself); a batch acts for one caller only."""

    def _coalescer(
        self,
    ) -> batching.Coalescer[
        workflow_service_pb2.StartWorkflowsEntry, workflow_service_pb2.StartWorkflowResponse
    ]:
        call = _for_caller()
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

    # ------------------------------------------------------------------ submit

    def _s3(self) -> s3.S3Client:
        """The S3 client (AWS environment), made on first use: file-only deployments need no config."""
        if self.s3_client is None:
            # Submit-time checks (HEAD, LIST) answer the caller: a down S3 is UNAVAILABLE in seconds,
            # not after the transfer-sized retry budget.
            self.s3_client = s3.S3Client(attempts=2, request_retries=1)
        return self.s3_client

    async def _check_s3_source(self, request: encode_service_pb2.SubmitEncodeRequest) -> None:
        """SOURCE_UNREADABLE unless the ``s3://`` source object exists (its area was checked already)."""
        try:
            found = await self._s3().exists(request.source_uri)
        except s3.S3Error as exc:
            if exc.transient:
                raise errors.UnavailableError(f"source_uri: S3 is unavailable: {exc.message}") from exc
            found = False
        if not found:
            reason = errors.Reason.ERROR_REASON_SOURCE_UNREADABLE
            raise errors.invalid(
                "source_uri", f"{request.source_uri} does not exist or cannot be read", reason=reason
            )

    async def _refuse_foreign_objects(self, output_uri: str) -> None:
        """FAILED_PRECONDITION (OUTPUT_EXISTS) when the output prefix holds objects other than a Cosmos
        publish (its ``.cosmos-publish.json``): the agent would refuse the upload at the very end."""
        try:
            there = await self._s3().list_objects(output_uri)
        except s3.S3Error as exc:
            if exc.transient:
                raise errors.UnavailableError(f"output_uri: S3 is unavailable: {exc.message}") from exc
            raise errors.invalid("output_uri", f"{output_uri} cannot be listed: {exc.message}") from exc
        _, key = s3.parse_uri(output_uri)
        marker = f"{key.rstrip('/')}/{publish.MANIFEST}"
        if there and marker not in {name for name, _ in there}:
            what = f"{output_uri} holds objects Cosmos did not publish"
            raise errors.FailedPreconditionError(
                f"output_uri: {what}; choose another prefix (nothing in S3 is overwritten)",
                reason=errors.Reason.ERROR_REASON_OUTPUT_EXISTS,
                violations=[errors.FieldViolation("output_uri", what)],
            )

    def _validate(
        self, request: encode_service_pb2.SubmitEncodeRequest
    ) -> tuple[Path, list[catalog.Profile], Path]:
        violations: list[errors.FieldViolation] = []
        reason = errors.Reason.ERROR_REASON_INVALID_ARGUMENT
        source = output = Path()
        caller = auth.current()

        def inside_roots(uri: str, field: str) -> Path:
            if _is_s3(uri):
                # An object URI: checked lexically; the path stands for it (s3://bucket/key -> s3:/...).
                return Path(
                    storage.check_object_uri(
                        uri, self.storage_roots, caller.tenant, field, all_tenants=caller.all_tenants
                    )
                )
            return storage.check_uri(
                uri, self.storage_roots, caller.tenant, field, all_tenants=caller.all_tenants
            )

        try:
            if not request.source_uri:
                raise errors.invalid("source_uri", "is required")
            source = inside_roots(request.source_uri, "source_uri")
            if _is_s3(request.source_uri):
                pass  # existence is checked by SubmitEncode (an S3 call)
            elif not source.is_file() or not os.access(source, os.R_OK):
                reason = errors.Reason.ERROR_REASON_SOURCE_UNREADABLE
                raise errors.invalid(
                    "source_uri", f"{source} does not exist or is not a readable file", reason=reason
                )
        except storage.OutsideStorageRoot as exc:
            reason = storage.REASON
            violations.extend(exc.violations)
        except errors.InvalidArgumentError as exc:
            violations.extend(exc.violations)
        if request.quality and request.quality not in QUALITY_MODES:
            violations.append(errors.FieldViolation("quality", f"unknown quality mode {request.quality}"))
        chosen: list[catalog.Profile] = []
        try:
            chosen = catalog.resolve(list(request.profiles), request.ladder)
        except KeyError as exc:
            reason = errors.Reason.ERROR_REASON_UNKNOWN_PROFILE
            field = "profiles"
            for i, name in enumerate(request.profiles):
                if name not in catalog.names():
                    field = f"profiles[{i}]"
            if request.ladder and field == "profiles":
                field = "ladder"
            # The catalog's errors say what is wrong and what is known; a bare KeyError is the name.
            known = isinstance(exc, catalog.UnknownProfileError | catalog.UnknownLadderError)
            said = (
                str(exc) if known else f"unknown {field.split('[')[0]} {exc.args[0] if exc.args else exc!s}"
            )
            violations.append(errors.FieldViolation(field, said))
        try:
            if not request.output_uri:
                raise errors.invalid("output_uri", "is required")
            output = inside_roots(request.output_uri, "output_uri")
        except storage.OutsideStorageRoot as exc:
            reason = storage.REASON
            violations.extend(exc.violations)
        except errors.InvalidArgumentError as exc:
            violations.extend(exc.violations)
        if request.priority < 0:
            violations.append(errors.FieldViolation("priority", "must not be negative"))
        forbidden = None
        if request.image:
            problem = image_problem(request.image, self.job_policy, caller.tenant)
            if problem is not None and problem[0] == errors.Reason.ERROR_REASON_INVALID_ARGUMENT:
                violations.append(errors.FieldViolation("image", problem[1]))
            forbidden = problem
        if violations:
            raise errors.InvalidArgumentError(
                f"invalid encode: {violations[0].field}: {violations[0].description}",
                reason=reason,
                violations=violations,
            )
        if forbidden is not None:
            raise errors.PermissionDeniedError(
                f"image: {forbidden[1]}",
                reason=forbidden[0],
                violations=[errors.FieldViolation("image", forbidden[1])],
            )
        if _is_s3(request.output_uri):
            return source, chosen, output  # the agent refuses a prefix holding other objects on upload
        parent = next((p for p in [output, *output.parents] if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
            raise errors.FailedPreconditionError(
                f"output_uri: {output} cannot be created (no writable parent directory)",
                reason=errors.Reason.ERROR_REASON_OUTPUT_UNWRITABLE,
                violations=[
                    errors.FieldViolation("output_uri", f"{parent or output} is not a writable directory")
                ],
            )
        _refuse_foreign_output(output)
        return source, chosen, output

    def _image_scratch(self, tenant: str) -> Path:
        """Where an encode in an image keeps its scratch: ``<storage root>/<tenant>/.cosmos-work``.

        Its chunk encodes are container jobs, which see only their work dir: each chunk is staged in
        and the encoded files copied out as ``file://`` job artifacts, and Stratum and the agent take
        those only inside the tenant's storage area (docs/security.md), not in Optimus's work root."""
        roots = storage.file_roots(self.storage_roots)
        if not roots:
            what = "an encode in an image needs a file storage root for its scratch (none is configured)"
            raise errors.FailedPreconditionError(
                f"image: {what}",
                reason=storage.REASON,
                violations=[errors.FieldViolation("image", what)],
            )
        return storage.tenant_area(roots[0], tenant) / IMAGE_SCRATCH

    async def SubmitEncode(
        self, request: encode_service_pb2.SubmitEncodeRequest, context: Any
    ) -> encode_service_pb2.SubmitEncodeResponse:
        if request.retry and request.force:
            raise errors.invalid(
                "retry", "retry resumes an existing encode; force starts a new one: not both"
            )
        source, chosen, output = self._validate(request)
        s3_source, s3_output = _is_s3(request.source_uri), _is_s3(request.output_uri)
        if s3_source:
            await self._check_s3_source(request)
        if s3_output:
            await self._refuse_foreign_objects(request.output_uri)
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
        scratch = self._image_scratch(tenant) if request.image else self.work_root / tenant
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
            reply = await self.workflows.RetryWorkflow(request, **_for_caller())
        except grpc.aio.AioRpcError as exc:
            raise rpc_errors.as_rpc_error(exc) from exc
        return reply.workflow

    # ------------------------------------------------------------------ reads

    async def _workflow(self, encode_id: str) -> workflow_pb2.Workflow:
        if not encode_id:
            raise errors.invalid("encode_id", "is required")
        try:
            reply = await self.workflows.GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(workflow_id=encode_id), **_for_caller()
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise errors.NotFoundError(
                    f"encode {encode_id!r} does not exist",
                    reason=errors.Reason.ERROR_REASON_ENCODE_NOT_FOUND,
                    metadata={"encode_id": encode_id},
                ) from exc
            raise
        if reply.workflow.definition_id != DEFINITION_ID:
            raise errors.NotFoundError(
                f"{encode_id!r} is not an encode",
                reason=errors.Reason.ERROR_REASON_ENCODE_NOT_FOUND,
                metadata={"encode_id": encode_id},
            )
        return reply.workflow

    async def GetEncode(
        self, request: encode_service_pb2.GetEncodeRequest, context: Any
    ) -> encode_service_pb2.GetEncodeResponse:
        return encode_service_pb2.GetEncodeResponse(
            encode=encode_view(await self._workflow(request.encode_id))
        )

    async def ListEncodes(
        self, request: encode_service_pb2.ListEncodesRequest, context: Any
    ) -> encode_service_pb2.ListEncodesResponse:
        paging.parse(request.page_size, "", "")  # validates page_size; the token is Plato's
        listed = await self.workflows.ListWorkflows(
            workflow_service_pb2.ListWorkflowsRequest(
                page_size=request.page_size,
                page_token=request.page_token,
                definition_id=DEFINITION_ID,
                state=_STATE_FILTER.get(request.state, workflow_pb2.WORKFLOW_STATE_UNSPECIFIED),
            ),
            **_for_caller(),
        )
        return encode_service_pb2.ListEncodesResponse(
            encodes=[encode_view(wf) for wf in listed.workflows], next_page_token=listed.next_page_token
        )

    async def CancelEncode(
        self, request: encode_service_pb2.CancelEncodeRequest, context: Any
    ) -> encode_service_pb2.CancelEncodeResponse:
        if not request.request_id:
            raise errors.invalid("request_id", "is required")
        await self._workflow(request.encode_id)
        try:
            await self.workflows.CancelWorkflow(
                workflow_service_pb2.CancelWorkflowRequest(
                    request_id=request.request_id,
                    workflow_id=request.encode_id,
                    reason=request.reason or "cancelled",
                ),
                **_for_caller(),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise errors.FailedPreconditionError(
                    f"encode {request.encode_id!r} already ended",
                    reason=errors.Reason.ERROR_REASON_ALREADY_TERMINAL,
                ) from exc
            raise
        metrics.ENCODES_CANCELLED.inc()
        return encode_service_pb2.CancelEncodeResponse(
            encode=encode_view(await self._workflow(request.encode_id))
        )

    async def WatchEncode(
        self, request: encode_service_pb2.WatchEncodeRequest, context: Any
    ) -> AsyncIterator[encode_service_pb2.WatchEncodeResponse]:
        # A snapshot whenever the encode changed, looked at twice a second (WATCH_INTERVAL): one record
        # read per look, however many chunk events a big ladder produces.
        previous = b""
        while not self.stopping.is_set():
            try:
                current = encode_view(await self._workflow(request.encode_id))
            except grpc.aio.AioRpcError as exc:
                if not reconnect.transient(exc):
                    raise
                # Plato is restarting: the watcher keeps its stream, and the next look tries again.
                await asyncio.sleep(WATCH_INTERVAL * 2)
                continue
            current.ClearField("update_time")
            snapshot = current.SerializeToString(deterministic=True)
            if snapshot != previous:
                previous = snapshot
                yield encode_service_pb2.WatchEncodeResponse(encode=current)
            if current.state in TERMINAL:
                return
            await asyncio.sleep(WATCH_INTERVAL)

    async def ListProfiles(
        self, request: encode_service_pb2.ListProfilesRequest, context: Any
    ) -> encode_service_pb2.ListProfilesResponse:
        page = paging.parse(request.page_size, request.page_token, "profiles")
        chunk, next_token = paging.slice_page(
            [_profile_proto(catalog.get(n)) for n in catalog.names()], page, "profiles"
        )
        return encode_service_pb2.ListProfilesResponse(profiles=chunk, next_page_token=next_token)


SOURCE_DIR = "source"
"""Where an ``s3://`` source lands in each job's work dir."""


IMAGE_SCRATCH = ".cosmos-work"
"""Under the tenant's storage area: the scratch directories of the encodes that run in an image."""
IMAGE_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
"""What ``image`` may look like: an OCI image reference (``localhost/cosmos-worker:0.1.0``, a digest)."""


def image_problem(
    image: str, policy: job_policy.JobPolicy | None, tenant: str
) -> tuple[errors.Reason.ValueType, str] | None:
    """Why ``image`` cannot run the chunk encodes of ``tenant`` — (reason, description) — or None.

    The allow-list is Stratum's job policy (``--job-policy``, the same file): refused here, at submit,
    rather than by Stratum at each chunk's SubmitJob once the encode has split its source."""
    if not IMAGE_REFERENCE.fullmatch(image):
        return errors.Reason.ERROR_REASON_INVALID_ARGUMENT, f"{image!r} is not an image reference"
    if policy is not None and not policy.rules(tenant or "default").image_allowed(image):
        return (
            errors.Reason.ERROR_REASON_FORBIDDEN_EXECUTABLE,
            f"{image!r} is not on tenant {tenant or 'default'!r}'s allow-list of images (job policy)",
        )
    return None


def _is_s3(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() == "s3"


def _refuse_foreign_output(output: Path) -> None:
    """FAILED_PRECONDITION (OUTPUT_EXISTS) when ``output`` holds anything but an earlier Cosmos publish.

    Publishing never replaces what Cosmos did not write, even with ``overwrite``: refusing here saves
    an encode that would fail at its last step. An earlier Cosmos publish passes (this very encode
    submitted again is deduplicated; another one publishes only with ``overwrite``).
    """
    if output.is_dir() and (not any(output.iterdir()) or publish.holds_only_a_publish(output)):
        return
    if not output.exists() and not output.is_symlink():
        return
    what = "is not a directory" if not output.is_dir() else "holds files Cosmos did not publish"
    raise errors.FailedPreconditionError(
        f"output_uri: {output} {what}; choose another output (overwrite replaces only a Cosmos publish)",
        reason=errors.Reason.ERROR_REASON_OUTPUT_EXISTS,
        violations=[errors.FieldViolation("output_uri", f"{output} {what}")],
    )


def _profile_proto(profile: catalog.Profile) -> encode_pb2.Profile:
    proto = encode_pb2.Profile(
        name=profile.name,
        width=profile.width,
        height=profile.height,
        codec=profile.codec,
        encoder=profile.encoder,
        max_bitrate_bps=profile.max_bitrate,
        bufsize_bits=profile.bufsize,
        requires_gpu=profile.requires_gpu,
        description=profile.description,
    )
    json_format.ParseDict(profile.resources, proto.resources)
    return proto
