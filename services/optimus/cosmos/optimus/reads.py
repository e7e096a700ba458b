"""Looking at encodes: ``GetEncode``, ``ListEncodes``, ``WatchEncode`` and ``ListProfiles``, and
``CancelEncode`` (which looks the encode up before and after), on :class:`EncodeReads`.

Each answer is the encode's workflow as Plato has it, seen through :func:`cosmos.optimus.view.encode_view`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from cosmos import errors
from cosmos.optimus import metrics
from cosmos.optimus import profiles as catalog
from cosmos.optimus.base import DEFINITION_ID, EncodeApiBase, for_caller
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2
from cosmos.optimus.view import encode_view
from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2
from cosmos.runtime import paging, reconnect

ES = encode_pb2.EncodeState
TERMINAL = (ES.ENCODE_STATE_SUCCEEDED, ES.ENCODE_STATE_FAILED, ES.ENCODE_STATE_CANCELLED)
WATCH_INTERVAL = 0.5

_STATE_FILTER = {
    ES.ENCODE_STATE_PENDING: workflow_pb2.WORKFLOW_STATE_PENDING,
    ES.ENCODE_STATE_RUNNING: workflow_pb2.WORKFLOW_STATE_RUNNING,
    ES.ENCODE_STATE_SUCCEEDED: workflow_pb2.WORKFLOW_STATE_COMPLETED,
    ES.ENCODE_STATE_FAILED: workflow_pb2.WORKFLOW_STATE_FAILED,
    ES.ENCODE_STATE_CANCELLED: workflow_pb2.WORKFLOW_STATE_CANCELLED,
}


class EncodeReads(EncodeApiBase):
    """The handlers that answer with encodes as they are (a cancel included)."""

    async def _workflow(self, encode_id: str) -> workflow_pb2.Workflow:
        if not encode_id:
            raise errors.invalid("encode_id", "is required")
        try:
            reply = await self.workflows.GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(workflow_id=encode_id), **for_caller()
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
            **for_caller(),
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
                **for_caller(),
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
