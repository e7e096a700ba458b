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
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from cosmos import errors
from cosmos.console import views
from cosmos.console.backend import Backend
from cosmos.console.media import media_file
from cosmos.console.sessions import SESSION, Session, Sessions, bearer, claims_exp, safe_next
from cosmos.console.views import Page
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2
from cosmos.plato.v1 import workflow_service_pb2
from cosmos.security.tokens import Verifier
from cosmos.stratum.v1 import job_service_pb2, pool_service_pb2

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "cosmos_console"
PRE_COOKIE = "cosmos_console_signin"
PAGE_SIZE = 50
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self' blob:; worker-src 'self' blob:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PUBLIC = ("/signin", "/static/", "/healthz", "/favicon.ico")
TERMINAL_WF = {"completed", "failed", "cancelled"}
TERMINAL_ENCODE = {"succeeded", "failed", "cancelled"}
TERMINAL_JOB = {"succeeded", "failed", "cancelled", "timed_out"}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console:
    """The web app; :meth:`app` builds the aiohttp application."""

    def __init__(
        self, backend: Backend, verifier: Verifier, *, storage_roots: Sequence[Path] = (), secure: bool = True
    ) -> None:
        self.backend = backend
        self.verifier = verifier
        self.sessions = Sessions()
        self.storage_roots = list(storage_roots)
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

    @staticmethod
    def security_headers(path: str) -> dict[str, str]:
        headers = {
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            "Strict-Transport-Security": "max-age=31536000",
            "Cross-Origin-Opener-Policy": "same-origin",
        }
        if not path.startswith("/static/"):
            headers["Cache-Control"] = "no-store"
        return headers

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(PUBLIC) and request.path != "/signout":
            return await handler(request)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if request.method == "GET" and not request.path.endswith("/events"):
                raise web.HTTPSeeOther(f"/signin?{_query(next=request.path_qs)}")
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
                raise web.HTTPSeeOther(f"/signin?{_query(error=exc.details() or 'signed out')}") from exc
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

    # -- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    def session(request: web.Request) -> Session:
        return request[SESSION]

    def page(self, request: web.Request, title: str, active: str = "") -> Page:
        session = self.session(request)
        return Page(title, session.user, session.csrf, active)

    @staticmethod
    def html(text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html")

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path="/", httponly=True, secure=self.secure, samesite="Strict"
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

    # -- workflows -------------------------------------------------------------------------------------

    async def workflows(self, request: web.Request) -> web.Response:
        s = self.session(request)
        shown = views.WorkflowFilters.of(request.query)
        listing = workflow_service_pb2.ListWorkflowsRequest(
            page_size=PAGE_SIZE,
            page_token=request.query.get("page", ""),
            definition_id=shown.definition,
            state=shown.state_value(),
            tenant=shown.tenant,
            workflow_id_prefix=shown.search,
        )
        if shown.since:
            listing.created_after.FromSeconds(int(time.time()) - views.SINCE_CHOICES[shown.since])
        reply = await self.backend.workflows.ListWorkflows(listing, metadata=bearer(s))
        if shown.search and len(reply.workflows) == 1 and not reply.next_page_token:
            # An id, or a prefix only one workflow has: straight to it (as the CLI accepts prefixes).
            raise web.HTTPSeeOther(f"/workflows/{views.q(reply.workflows[0].workflow_id)}")
        page = self.page(request, "Workflows", "workflows")
        return self.html(views.workflows_page(page, reply.workflows, shown, next_token=reply.next_page_token))

    async def workflow(self, request: web.Request) -> web.Response:
        s = self.session(request)
        wid = request.match_info["id"]
        wf = (
            await self.backend.workflows.GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(workflow_id=wid), metadata=bearer(s)
            )
        ).workflow
        events = []
        token = ""
        for _ in range(20):  # the whole history, up to 20 pages of 1000
            reply = await self.backend.workflows.ListWorkflowEvents(
                workflow_service_pb2.ListWorkflowEventsRequest(
                    workflow_id=wid, page_size=1000, page_token=token
                ),
                metadata=bearer(s),
            )
            events += list(reply.events)
            token = reply.next_page_token
            if not token:
                break
        definition = None
        try:
            definition = (
                await self.backend.workflows.GetDefinition(
                    workflow_service_pb2.GetDefinitionRequest(
                        definition_id=wf.definition_id, version=wf.definition_version
                    ),
                    metadata=bearer(s),
                )
            ).definition
        except grpc.aio.AioRpcError:
            definition = None  # the DAG falls back to the steps seen so far
        notice = request.query.get("done", "")
        page = self.page(request, f"Workflow {wid}", "workflows")
        return self.html(views.workflow_page(page, wf, events, definition, notice))

    async def workflow_action(self, request: web.Request) -> web.Response:
        s = self.session(request)
        wid, action = request.match_info["id"], request.match_info["action"]
        rid = uuid.uuid4().hex
        stub = self.backend.workflows
        if action == "cancel":
            await stub.CancelWorkflow(
                workflow_service_pb2.CancelWorkflowRequest(
                    request_id=rid, workflow_id=wid, reason=f"cancelled from the console by {s.user.name}"
                ),
                metadata=bearer(s),
            )
            done = "Cancellation requested."
        elif action == "retry":
            await stub.RetryWorkflow(
                workflow_service_pb2.RetryWorkflowRequest(request_id=rid, workflow_id=wid), metadata=bearer(s)
            )
            done = "Retried."
        else:
            step = str((await request.post()).get("step") or "")
            await stub.ResetWorkflow(
                workflow_service_pb2.ResetWorkflowRequest(request_id=rid, workflow_id=wid, step_name=step),
                metadata=bearer(s),
            )
            done = f"Reset from {step}."
        raise web.HTTPSeeOther(f"/workflows/{views.q(wid)}?{_query(done=done)}")

    async def workflow_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent ``workflow`` events: the step states after each change the watch reports
        (changes within half a second are sent as one)."""
        s = self.session(request)
        wid = request.match_info["id"]
        get = workflow_service_pb2.GetWorkflowRequest(workflow_id=wid)
        wf = (await self.backend.workflows.GetWorkflow(get, metadata=bearer(s))).workflow
        response = await self._sse(request)
        changed = asyncio.Event()
        ended = asyncio.Event()
        call = self.backend.workflows.WatchWorkflow(
            workflow_service_pb2.WatchWorkflowRequest(workflow_id=wid, from_sequence=wf.last_sequence + 1),
            metadata=bearer(s),
        )

        async def pump() -> None:
            try:
                async for _ in call:
                    changed.set()
            except grpc.aio.AioRpcError:
                pass
            finally:
                ended.set()
                changed.set()

        task = asyncio.create_task(pump())
        try:
            await _send(response, "workflow", views.workflow_update(wf))
            while views.wf_state(wf.state) not in TERMINAL_WF and not ended.is_set():
                await _wait(changed, 15.0)
                if not changed.is_set():
                    await response.write(b": keep-alive\n\n")
                    continue
                changed.clear()
                wf = (await self.backend.workflows.GetWorkflow(get, metadata=bearer(s))).workflow
                await _send(response, "workflow", views.workflow_update(wf))
                await asyncio.sleep(0.5)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            call.cancel()
            task.cancel()
        return response

    # -- encodes ---------------------------------------------------------------------------------------

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
            await _send(response, "encode", views.encode_update(e))
            async for update in call:
                await _send(response, "encode", views.encode_update(update.encode))
                if views.encode_state(update.encode.state) in TERMINAL_ENCODE:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        except grpc.aio.AioRpcError as exc:
            await _send(response, "failed", {"error": exc.details() or exc.code().name})
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

    # -- jobs, pool, definitions -----------------------------------------------------------------------

    async def jobs(self, request: web.Request) -> web.Response:
        s = self.session(request)
        reply = await self.backend.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=PAGE_SIZE, page_token=request.query.get("page", "")),
            metadata=bearer(s),
        )
        page = self.page(request, "Jobs", "jobs")
        return self.html(views.jobs_page(page, reply.jobs, reply.next_page_token))

    async def job(self, request: web.Request) -> web.Response:
        s = self.session(request)
        reply = await self.backend.jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id=request.match_info["id"]), metadata=bearer(s)
        )
        page = self.page(request, f"Job {reply.job.job_id}", "jobs")
        return self.html(views.job_page(page, reply.job))

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent ``job`` (state, progress) and ``log`` (a line of output) events from WatchJob,
        from the job's first event, so the page's log tail starts at the beginning."""
        s = self.session(request)
        jid = request.match_info["id"]
        await self.backend.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=jid), metadata=bearer(s))
        response = await self._sse(request)
        call = self.backend.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=jid, from_sequence=1), metadata=bearer(s)
        )
        try:
            async for reply in call:
                sent = views.job_event(reply.event)
                if sent is not None:
                    await _send(response, *sent)
                    if sent[0] == "job" and sent[1].get("state") in TERMINAL_JOB:
                        break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        except grpc.aio.AioRpcError as exc:
            await _send(response, "failed", {"error": exc.details() or exc.code().name})
        finally:
            call.cancel()
        return response

    async def pool(self, request: web.Request) -> web.Response:
        s = self.session(request)
        agents = await self.backend.pool.ListAgents(pool_service_pb2.ListAgentsRequest(), metadata=bearer(s))
        stats = None
        try:
            stats = (
                await self.backend.pool.GetPoolStats(
                    pool_service_pb2.GetPoolStatsRequest(), metadata=bearer(s)
                )
            ).stats
        except grpc.aio.AioRpcError:
            stats = None
        page = self.page(request, "Pool", "pool")
        return self.html(views.pool_page(page, agents.agents, stats))

    async def pool_action(self, request: web.Request) -> web.Response:
        s = self.session(request)
        agent, action = request.match_info["id"], request.match_info["action"]
        rid = uuid.uuid4().hex
        why = f"from the console by {s.user.name}"
        if action == "cordon":
            await self.backend.pool.CordonAgent(
                pool_service_pb2.CordonAgentRequest(request_id=rid, agent_id=agent, reason=why),
                metadata=bearer(s),
            )
        elif action == "uncordon":
            await self.backend.pool.UncordonAgent(
                pool_service_pb2.UncordonAgentRequest(request_id=rid, agent_id=agent), metadata=bearer(s)
            )
        else:
            await self.backend.pool.DrainAgent(
                pool_service_pb2.DrainAgentRequest(request_id=rid, agent_id=agent, reason=why),
                metadata=bearer(s),
            )
        raise web.HTTPSeeOther("/pool")

    async def definitions(self, request: web.Request) -> web.Response:
        s = self.session(request)
        reply = await self.backend.workflows.ListDefinitions(
            workflow_service_pb2.ListDefinitionsRequest(page_size=200), metadata=bearer(s)
        )
        latest: dict[str, Any] = {}
        for d in reply.definitions:
            if d.definition_id not in latest or d.version > latest[d.definition_id].version:
                latest[d.definition_id] = d
        page = self.page(request, "Definitions", "definitions")
        return self.html(views.definitions_page(page, list(latest.values())))

    async def definition(self, request: web.Request) -> web.Response:
        s = self.session(request)
        did = request.match_info["id"]
        reply = await self.backend.workflows.ListDefinitions(
            workflow_service_pb2.ListDefinitionsRequest(page_size=200, definition_id=did), metadata=bearer(s)
        )
        versions = [d for d in reply.definitions if d.definition_id == did]
        if not versions:
            raise web.HTTPNotFound(text=f"no definition {did}")
        page = self.page(request, f"Definition {did}", "definitions")
        return self.html(views.definition_page(page, versions))

    # -- streaming -------------------------------------------------------------------------------------

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
                **self.security_headers(request.path),
            }
        )
        await response.prepare(request)
        return response


async def _send(response: web.StreamResponse, event: str, data: object) -> None:
    await response.write(f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def _query(**values: str) -> str:
    from urllib.parse import urlencode

    return urlencode(values)
