"""The encode handlers: the list and the submit form, one encode, its live updates, its published
media, cancel.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
from aiohttp import web

from cosmos.console import media, views
from cosmos.console.base import PAGE_SIZE, ConsoleBase, send_event
from cosmos.console.sessions import Session, bearer
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2
from cosmos.runtime import s3

log = logging.getLogger(__name__)
TERMINAL_ENCODE = {"succeeded", "failed", "cancelled"}


class EncodeHandlers(ConsoleBase):
    """The handlers under ``/encodes``."""

    async def encodes(self, request: web.Request, error: str = "", status: int = 200) -> web.Response:
        s = self.session(request)
        state = request.query.get("state", "")
        value = (
            encode_pb2.EncodeState.Value(f"ENCODE_STATE_{state.upper()}")
            if state in views.ENCODE_STATES
            else 0
        )
        reply = await self.backend.encodes.ListEncodes(
            encode_service_pb2.ListEncodesRequest(
                page_size=PAGE_SIZE,
                page_token=request.query.get("page", ""),
                state=value,  # type: ignore[arg-type]
            ),
            metadata=bearer(s),
        )
        page = self.page(request, "Encodes", "encodes")
        shown = state if value else ""
        html = views.encodes_page(page, reply.encodes, reply.next_page_token, shown, error)
        return self.html(html, status)

    async def encode_submit(self, request: web.Request) -> web.Response:
        """Start an encode from the form, as the signed-in user (Optimus checks the URIs against the
        user's tenant area, as for the CLI); a refusal shows the service's reason above the form."""
        s = self.session(request)
        form = await request.post()
        profiles = [p.strip() for p in str(form.get("profiles") or "").split(",") if p.strip()]
        quality = str(form.get("quality") or "sampled")
        submit = encode_service_pb2.SubmitEncodeRequest(
            request_id=uuid.uuid4().hex,
            source_uri=str(form.get("source") or "").strip(),
            output_uri=str(form.get("output") or "").strip(),
            profiles=profiles,
            quality=encode_pb2.QualityMode.Value(f"QUALITY_MODE_{quality.upper()}")
            if quality in views.QUALITY_MODES
            else encode_pb2.QUALITY_MODE_SAMPLED,
        )
        try:
            reply = await self.backend.encodes.SubmitEncode(submit, metadata=bearer(s))
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                raise
            return await self.encodes(request, f"Not started: {exc.details()}", 400)
        raise web.HTTPSeeOther(f"/encodes/{views.q(reply.encode.encode_id)}")

    async def _get_encode(self, s: Session, encode_id: str) -> encode_pb2.Encode:
        reply = await self.backend.encodes.GetEncode(
            encode_service_pb2.GetEncodeRequest(encode_id=encode_id), metadata=bearer(s)
        )
        return reply.encode

    async def encode(self, request: web.Request) -> web.Response:
        s = self.session(request)
        e = await self._get_encode(s, request.match_info["id"])
        playable = (
            media.media_source(e.manifests.hls_master_uri, "master.m3u8", self.storage_roots) is not None
        )
        page = self.page(request, f"Encode {e.encode_id}", "encodes")
        return self.html(views.encode_page(page, e, playable))

    async def encode_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent ``encode`` events from WatchEncode: state and progress, overall and per rendition."""
        s = self.session(request)
        e = await self._get_encode(s, request.match_info["id"])
        response = await self._sse(request)
        call = self.backend.encodes.WatchEncode(
            encode_service_pb2.WatchEncodeRequest(encode_id=e.encode_id), metadata=bearer(s)
        )
        try:
            await send_event(response, "encode", views.encode_update(e))
            async for update in call:
                await send_event(response, "encode", views.encode_update(update.encode))
                if views.encode_state(update.encode.state) in TERMINAL_ENCODE:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        except grpc.aio.AioRpcError as exc:
            await send_event(response, "failed", {"error": exc.details() or exc.code().name})
        finally:
            call.cancel()
        return response

    async def encode_media(self, request: web.Request) -> web.StreamResponse:
        """The published HLS files of an encode the user may read (the encode is fetched with the
        user's token first), from a local storage root or streamed from an ``s3://`` one."""
        s = self.session(request)
        e = await self._get_encode(s, request.match_info["id"])
        source = media.media_source(
            e.manifests.hls_master_uri, request.match_info["path"], self.storage_roots
        )
        if source is None:
            raise web.HTTPNotFound(text="not a published file of this encode")
        if isinstance(source, str):
            return await self._stream_object(request, source)
        response = web.FileResponse(source)
        response.headers.update(self.security_headers("/static/"))
        response.headers["Cache-Control"] = "private, max-age=60"
        return response

    async def _stream_object(self, request: web.Request, uri: str) -> web.StreamResponse:
        """An object of an ``s3://`` root, streamed as it arrives (never whole in memory); a missing
        object is a 404, an object store that fails a 502, both decided before anything is sent."""
        if self.s3 is None:
            raise web.HTTPNotFound(text="not a published file of this encode")
        chunks = self.s3.stream(uri)
        try:
            first = await anext(chunks, b"")
        except s3.S3NotFound:
            raise web.HTTPNotFound(text="not a published file of this encode") from None
        except s3.S3Error as exc:
            log.warning(
                "media from the object store failed", extra={"fields": {"uri": uri, "error": str(exc)}}
            )
            raise web.HTTPBadGateway(text="the object store did not answer; try again") from None
        response = web.StreamResponse(headers=self.security_headers("/static/"))
        response.content_type = media.content_type(uri)
        response.headers["Cache-Control"] = "private, max-age=60"
        await response.prepare(request)
        await response.write(first)
        try:
            async for chunk in chunks:
                await response.write(chunk)
        except s3.S3Error as exc:  # cut short after the headers went: the player sees a short body
            log.warning("media stream cut short", extra={"fields": {"uri": uri, "error": str(exc)}})
            return response
        await response.write_eof()
        return response

    async def encode_cancel(self, request: web.Request) -> web.Response:
        s = self.session(request)
        eid = request.match_info["id"]
        await self.backend.encodes.CancelEncode(
            encode_service_pb2.CancelEncodeRequest(
                request_id=uuid.uuid4().hex,
                encode_id=eid,
                reason=f"cancelled from the console by {s.user.name}",
            ),
            metadata=bearer(s),
        )
        raise web.HTTPSeeOther(f"/encodes/{views.q(eid)}")
