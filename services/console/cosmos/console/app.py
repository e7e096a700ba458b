"""The console's web app: sign-in with a platform token, the pages, live updates, the actions.

Who acts: the signed-in user, always. The console keeps the user's platform token in a server-side
session (the browser holds only a random session id, in an ``HttpOnly; Secure; SameSite=Strict``
cookie) and sends it as ``authorization: Bearer`` on every gRPC call to the services' token ports,
which verify it and authorize the call against its tenant and roles exactly as for the CLI. The
console itself is granted nothing: a page a role may not see answers what the service answered
(403, 404), and buttons for actions the role lacks are not shown (the services refuse them anyway).

Every POST carries the session's CSRF token (compared in constant time) on top of the SameSite=Strict
cookie; the sign-in form, before any session, uses a double-submit cookie. Responses carry a strict
Content-Security-Policy: scripts and styles only from the console itself (``/static``), no inline
script or style, no framing.

This module builds the app: construction, routes, middleware, sign-in. The pages' handlers are mixins
by area (:mod:`.workflows`, :mod:`.encodes`, :mod:`.pool`) over :mod:`.base`; sessions are in
:mod:`.sessions`, the gRPC stubs in :mod:`.backend`, the media path checks in :mod:`.media`, the HTML
in :mod:`.views`.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
from aiohttp import web

from cosmos import errors
from cosmos.console import views
from cosmos.console.backend import Backend
from cosmos.console.base import query
from cosmos.console.encodes import EncodeHandlers
from cosmos.console.pool import PoolHandlers
from cosmos.console.sessions import SESSION, Session, Sessions, claims_exp, safe_next
from cosmos.console.views import Page
from cosmos.console.workflows import WorkflowHandlers
from cosmos.runtime import s3
from cosmos.security import storage
from cosmos.security.tokens import Verifier

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "cosmos_console"
PRE_COOKIE = "cosmos_console_signin"
PUBLIC = ("/signin", "/static/", "/healthz", "/favicon.ico")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console(WorkflowHandlers, EncodeHandlers, PoolHandlers):
    """The web app; :meth:`app` builds the aiohttp application. The pages' handlers come from the
    mixins (:mod:`.base` says why mixins); construction, routes, middleware and sign-in are here."""

    def __init__(
        self,
        backend: Backend,
        verifier: Verifier,
        *,
        storage_roots: Sequence[storage.Root] = (),
        s3_client: s3.S3Client | None = None,
        secure: bool = True,
    ) -> None:
        self.backend = backend
        self.verifier = verifier
        self.sessions = Sessions()
        self.storage_roots = list(storage_roots)
        if s3_client is None and storage.s3_roots(self.storage_roots):
            s3_client = s3.S3Client()  # the standard AWS chain, as every S3 client of Cosmos
        self.s3 = s3_client
        self.secure = secure
        """Mark cookies Secure (always, but for tests over plain HTTP)."""

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._headers, self._errors, self._auth], client_max_size=64 * 1024
        )
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/favicon.ico", self.favicon)
        r.add_get("/signin", self.signin_form)
        r.add_post("/signin", self.signin)
        r.add_post("/signout", self.signout)
        r.add_get("/", self.home)
        r.add_get("/workflows", self.workflows)
        r.add_get("/workflows/{id}", self.workflow)
        r.add_get("/workflows/{id}/events", self.workflow_events)
        r.add_post("/workflows/{id}/{action:cancel|retry|reset}", self.workflow_action)
        r.add_get("/encodes", self.encodes)
        r.add_post("/encodes", self.encode_submit)
        r.add_get("/encodes/{id}", self.encode)
        r.add_get("/encodes/{id}/events", self.encode_events)
        r.add_get("/encodes/{id}/media/{path:.+}", self.encode_media)
        r.add_post("/encodes/{id}/cancel", self.encode_cancel)
        r.add_get("/jobs", self.jobs)
        r.add_get("/jobs/{id}", self.job)
        r.add_get("/jobs/{id}/events", self.job_events)
        r.add_get("/pool", self.pool)
        r.add_post("/pool/{id}/{action:cordon|uncordon|drain}", self.pool_action)
        r.add_get("/definitions", self.definitions)
        r.add_get("/definitions/{id}", self.definition)
        r.add_static("/static/", STATIC, append_version=False)
        return app

    # -- middleware ------------------------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
            self._secure_headers(response, request)
            raise
        self._secure_headers(response, request)
        return response

    def _secure_headers(self, response: web.StreamResponse, request: web.Request) -> None:
        if response.prepared:  # a stream (SSE, files) already sent its headers: set in the handler
            return
        response.headers.update(self.security_headers(request.path))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(PUBLIC) and request.path != "/signout":
            return await handler(request)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if request.method == "GET" and not request.path.endswith("/events"):
                raise web.HTTPSeeOther(f"/signin?{query(next=request.path_qs)}")
            raise web.HTTPUnauthorized(text="sign in first")
        if request.method == "POST":
            form = await request.post()
            sent = form.get("csrf")
            if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page and try again")
        request[SESSION] = session
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except grpc.aio.AioRpcError as exc:
            session: Session | None = request.get(SESSION)
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                # The token expired or was revoked: sign in again.
                self.sessions.drop(request.cookies.get(COOKIE))
                raise web.HTTPSeeOther(f"/signin?{query(error=exc.details() or 'signed out')}") from exc
            status = {
                grpc.StatusCode.PERMISSION_DENIED: 403,
                grpc.StatusCode.NOT_FOUND: 404,
                grpc.StatusCode.INVALID_ARGUMENT: 400,
                grpc.StatusCode.FAILED_PRECONDITION: 409,
                grpc.StatusCode.ALREADY_EXISTS: 409,
                grpc.StatusCode.UNAVAILABLE: 503,
                grpc.StatusCode.DEADLINE_EXCEEDED: 504,
            }.get(code, 500)
            page = Page("Error", session.user if session else None, session.csrf if session else "")
            text = f"{code.name}: {exc.details() or ''}"
            return web.Response(
                text=views.error_page(page, status, text), status=status, content_type="text/html"
            )

    # -- sign-in ---------------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def signin_form(self, request: web.Request, error: str = "") -> web.Response:
        # One value per browser, kept while it lasts: a second tab (or the favicon's redirect) must not
        # invalidate the form already shown.
        pre = request.cookies.get(PRE_COOKIE, "")
        if len(pre) < 32:
            pre = secrets.token_urlsafe(24)
        next_url = safe_next(request.query.get("next", "/"))
        response = self.html(views.signin_page(pre, error or request.query.get("error", ""), next_url))
        self._set_cookie(response, PRE_COOKIE, pre, 3600)
        return response

    async def signin(self, request: web.Request) -> web.Response:
        form = await request.post()
        pre, sent = request.cookies.get(PRE_COOKIE, ""), form.get("pre")
        if not pre or not isinstance(sent, str) or not hmac.compare_digest(pre.encode(), sent.encode()):
            raise web.HTTPForbidden(text="the sign-in form expired: reload it and try again")
        token = str(form.get("token") or "").strip()
        try:
            user = self.verifier.verify(token)
            expires = float(claims_exp(token))
        except errors.UnauthenticatedError as exc:
            log.info("console sign-in refused", extra={"fields": {"why": exc.message}})
            response = await self.signin_form(request, f"Not signed in: {exc.message}")
            response.set_status(401)
            return response
        sid = self.sessions.create(token, user, expires)
        log.info("console sign-in", extra={"fields": {"identity": user.identity, "tenant": user.tenant}})
        response = web.HTTPSeeOther(safe_next(str(form.get("next") or "/")))
        self._set_cookie(response, COOKIE, sid, max(int(expires - time.time()), 1))
        response.del_cookie(PRE_COOKIE, path="/")
        raise response

    async def signout(self, request: web.Request) -> web.Response:
        self.sessions.drop(request.cookies.get(COOKIE))
        response = web.HTTPSeeOther("/signin")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def home(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/workflows")
