"""The encode handlers: the list and the submit form, one encode, its live updates, its published
media, cancel.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
from aiohttp import web

from cosmos.console import views
from cosmos.console.base import PAGE_SIZE, ConsoleBase, send_event
from cosmos.console.media import media_file
from cosmos.console.sessions import Session, bearer
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2

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
        playable = media_file(e.manifests.hls_master_uri, "master.m3u8", self.storage_roots) is not None
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
        user's token first), from the local storage root only."""
        s = self.session(request)
        e = await self._get_encode(s, request.match_info["id"])
        path = media_file(e.manifests.hls_master_uri, request.match_info["path"], self.storage_roots)
        if path is None:
            raise web.HTTPNotFound(text="not a published file of this encode")
        response = web.FileResponse(path)
        response.headers.update(self.security_headers("/static/"))
        response.headers["Cache-Control"] = "private, max-age=60"
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
