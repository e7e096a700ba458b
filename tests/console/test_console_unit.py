"""The console's handlers and pages without a stack: sign-in, cookies, CSRF, CSP, role-dependent
buttons, the DAG from a definition, escaping, and the media path checks (fake gRPC stubs)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ed25519

from cosmos.console import server, views
from cosmos.console.app import COOKIE, Console
from cosmos.console.backend import Backend
from cosmos.console.base import CSP
from cosmos.console.media import media_file
from cosmos.console.sessions import safe_next
from cosmos.optimus.v1 import encode_pb2
from cosmos.plato.v1 import definition_pb2, events_pb2, workflow_pb2, workflow_service_pb2
from cosmos.runtime import process
from cosmos.security import pki, tokens
from cosmos.security.principals import Principal
from cosmos.stratum.v1 import agent_pb2, job_pb2, pool_service_pb2

LADDER = Path(__file__).parents[2] / "services/optimus/cosmos/optimus/workflows/encode-ladder.yaml"


class FakeWorkflows:
    def __init__(self) -> None:
        self.cancelled: list[tuple[str, Any]] = []
        self.wf = workflow_pb2.Workflow(
            workflow_id="wf-1<x>",
            definition_id="d",
            state=workflow_pb2.WORKFLOW_STATE_RUNNING,
            tenant="default",
        )
        self.wf.steps.add(step_id="a", step_name="a", state=workflow_pb2.STEP_STATE_RUNNING, attempt=1)

    async def ListWorkflows(self, request: Any, metadata: Any = None) -> Any:
        self.list_metadata = metadata
        self.list_request = request
        listed = [self.wf] if self.wf.workflow_id.startswith(request.workflow_id_prefix) else []
        return workflow_service_pb2.ListWorkflowsResponse(workflows=listed, next_page_token=self.next_token)

    next_token = ""

    async def GetWorkflow(self, request: Any, metadata: Any = None) -> Any:
        return workflow_service_pb2.GetWorkflowResponse(workflow=self.wf)

    async def ListWorkflowEvents(self, request: Any, metadata: Any = None) -> Any:
        return workflow_service_pb2.ListWorkflowEventsResponse()

    async def GetDefinition(self, request: Any, metadata: Any = None) -> Any:
        return workflow_service_pb2.GetDefinitionResponse(
            definition=definition_pb2.WorkflowDefinition(definition_id="d", step_names=["a"])
        )

    async def CancelWorkflow(self, request: Any, metadata: Any = None) -> Any:
        self.cancelled.append((request.workflow_id, metadata))
        return workflow_service_pb2.CancelWorkflowResponse(workflow=self.wf)


class FakeBackend:
    def __init__(self) -> None:
        self.workflows = FakeWorkflows()


@pytest.fixture
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def token(key: ed25519.Ed25519PrivateKey, role: str) -> str:
    return tokens.create(
        key, subject="alice", tenant="default", roles=[role], ttl=datetime.timedelta(minutes=10)
    )


async def client(key: ed25519.Ed25519PrivateKey, backend: FakeBackend) -> TestClient[Any, Any]:
    console = Console(cast(Backend, backend), tokens.Verifier(key.public_key()), secure=False)
    test_client: TestClient[Any, Any] = TestClient(TestServer(console.app()))
    await test_client.start_server()
    return test_client


async def sign_in(c: TestClient[Any, Any], tok: str) -> str:
    """Signs in; the page's CSRF token."""
    form = await c.get("/signin")
    pre = re.search(r'name="pre" value="([^"]+)"', await form.text())
    assert pre is not None
    reply = await c.post("/signin", data={"pre": pre.group(1), "token": tok, "next": "/workflows"})
    assert reply.status == 200 and str(reply.url).endswith("/workflows"), await reply.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', await reply.text())
    assert csrf is not None
    return csrf.group(1)


async def test_pages_need_a_session_and_sign_in_takes_a_valid_token_only(
    key: ed25519.Ed25519PrivateKey,
) -> None:
    backend = FakeBackend()
    c = await client(key, backend)
    try:
        reply = await c.get("/workflows?state=running", allow_redirects=False)
        assert reply.status == 303
        location = urlsplit(reply.headers["Location"])
        assert location.path == "/signin"
        assert parse_qs(location.query)["next"] == ["/workflows?state=running"]
        assert (await c.get("/workflows/x/events")).status == 401  # no redirect for a stream
        form = await c.get("/signin")
        assert form.headers["Content-Security-Policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        pre = re.search(r'name="pre" value="([^"]+)"', await form.text())
        assert pre is not None
        # Without the sign-in cookie's twin: refused (login CSRF).
        c.session.cookie_jar.clear()
        refused = await c.post("/signin", data={"pre": pre.group(1), "token": token(key, "admin")})
        assert refused.status == 403
        # A token signed by another key: not signed in, and no session cookie.
        other = token(ed25519.Ed25519PrivateKey.generate(), "admin")
        form = await c.get("/signin")
        pre = re.search(r'name="pre" value="([^"]+)"', await form.text())
        assert pre is not None
        bad = await c.post("/signin", data={"pre": pre.group(1), "token": other})
        assert bad.status == 401 and "signature" in await bad.text()
        assert COOKIE not in {m.key for m in c.session.cookie_jar}
        await sign_in(c, token(key, "viewer"))
        (cookie,) = [m for m in c.session.cookie_jar if m.key == COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        page = await c.get("/workflows")
        text = await page.text()
        assert "wf-1&lt;x&gt;" in text and "wf-1<x>" not in text  # escaped
        assert backend.workflows.list_metadata[0][1].startswith("Bearer ey")  # the user's own token
        assert page.headers["Cache-Control"] == "no-store"
    finally:
        await c.close()


async def test_the_workflow_filters_go_to_plato_and_a_unique_id_prefix_opens_the_workflow(
    key: ed25519.Ed25519PrivateKey,
) -> None:
    backend = FakeBackend()
    c = await client(key, backend)
    try:
        await sign_in(c, token(key, "viewer"))
        backend.workflows.next_token = "p2"
        page = await c.get("/workflows?state=running&definition=d&tenant=acme&since=1h&bogus=1")
        sent = backend.workflows.list_request
        assert (sent.state, sent.definition_id, sent.tenant) == (
            workflow_pb2.WORKFLOW_STATE_RUNNING,
            "d",
            "acme",
        )
        assert abs(sent.created_after_time.seconds - (datetime.datetime.now().timestamp() - 3600)) < 60
        text = await page.text()
        assert '<option value="1h" selected>' in text and 'name="tenant" value="acme"' in text
        more = re.search(r'class="more" href="/workflows\?([^"]+)"', text)
        assert more is not None  # the next page keeps every filter
        assert parse_qs(more.group(1).replace("&amp;", "&")) == {
            "state": ["running"],
            "definition": ["d"],
            "tenant": ["acme"],
            "since": ["1h"],
            "page": ["p2"],
        }
        # Unknown values read as "any", not as an error page.
        await c.get("/workflows?state=sleeping&since=forever")
        sent = backend.workflows.list_request
        assert sent.state == 0 and not sent.HasField("created_after_time")
        # A prefix only one workflow has opens it; one nobody has lists nothing.
        backend.workflows.next_token = ""
        opened = await c.get("/workflows?id=wf-1", allow_redirects=False)
        assert opened.status == 303 and opened.headers["Location"] == "/workflows/wf-1%3Cx%3E"
        assert backend.workflows.list_request.workflow_id_prefix == "wf-1"
        none = await c.get("/workflows?id=nope")
        assert "No workflows match." in await none.text()
    finally:
        await c.close()


async def test_actions_need_the_csrf_token_and_buttons_follow_the_role(
    key: ed25519.Ed25519PrivateKey,
) -> None:
    backend = FakeBackend()
    c = await client(key, backend)
    try:
        csrf = await sign_in(c, token(key, "viewer"))
        page = await (await c.get("/workflows/wf-1")).text()
        assert "Cancel workflow" not in page  # a viewer lacks WORKFLOWS_WRITE
        c.session.cookie_jar.clear()
        csrf = await sign_in(c, token(key, "submitter"))
        page = await (await c.get("/workflows/wf-1")).text()
        assert "Cancel workflow" in page and '<svg class="dag"' in page
        assert (await c.post("/workflows/wf-1/cancel", data={})).status == 403
        assert (await c.post("/workflows/wf-1/cancel", data={"csrf": "x" + csrf})).status == 403
        assert not backend.workflows.cancelled
        done = await c.post("/workflows/wf-1/cancel", data={"csrf": csrf})
        assert done.status == 200 and "Cancellation requested" in await done.text()
        assert backend.workflows.cancelled[0][0] == "wf-1"
        signed_out = await c.post("/signout", data={"csrf": csrf})
        assert signed_out.status == 200 and str(signed_out.url).endswith("/signin")
        assert (await c.get("/workflows", allow_redirects=False)).status == 303
    finally:
        await c.close()


def test_the_dag_follows_the_definitions_rules() -> None:
    definition = definition_pb2.WorkflowDefinition(
        definition_id="encode-ladder",
        source_yaml=LADDER.read_text(),
        step_names=["probe", "split", "audio", "encode", "encode-image", "assemble", "package", "publish"],
    )
    edges = views.step_edges([], definition)
    assert ("split", "encode") in edges and ("encode", "assemble") in edges
    assert ("encode-image", "assemble") in edges and ("audio", "package") in edges
    assert ("encode", "encode-image") not in edges  # "encode" is not matched inside "encode-image"
    columns = views.layers(list(definition.step_names), edges)
    assert columns[0] == ["probe", "split", "audio"]
    wf = workflow_pb2.Workflow()
    for i in range(3):
        wf.steps.add(step_id=f"encode[{i}]", step_name="encode", state=workflow_pb2.STEP_STATE_COMPLETED)
    wf.steps[1].state = workflow_pb2.STEP_STATE_RUNNING
    svg = views.dag_svg(wf.steps, definition)
    assert 'data-step="encode"' in svg and "encode x3" in svg and "state-running" in svg
    assert views.workflow_update(wf)["nodes"] == {"encode": "running"}


def test_encode_page_shows_renditions_with_quality_and_cancel_only_for_writers() -> None:
    e = encode_pb2.Encode(encode_id="e1", state=encode_pb2.ENCODE_STATE_RUNNING)
    e.progress.percent = 40
    e.renditions.add(profile="360p", vmaf=93.456, psnr=41.2, width=640, height=360)
    viewer = Principal("token", "v", "default", frozenset({"viewer"}))
    admin = Principal("token", "a", "default", frozenset({"admin"}))
    page = views.encode_page(views.Page("Encode", viewer, "c"), e, playable=True)
    assert "93.46" in page and "41.20" in page and 'data-hls="/encodes/e1/media/master.m3u8"' in page
    assert "Cancel encode" not in page
    assert "Cancel encode" in views.encode_page(views.Page("Encode", admin, "c"), e, playable=False)
    assert "Start an encode" not in views.encodes_page(views.Page("Encodes", viewer, "c"), [e], "")
    listing = views.encodes_page(views.Page("Encodes", admin, "c"), [e], "tok", state="running")
    assert "Start an encode" in listing and 'href="/encodes?state=running&amp;page=tok"' in listing
    assert views.encode_update(e) == {
        "state": "running",
        "percent": 40.0,
        "renditions": {"360p": {"state": "unspecified", "percent": 0.0}},
    }


def test_media_is_served_from_the_storage_root_only_and_never_outside_the_package(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    published = root / "default" / "out"
    (published / "360p").mkdir(parents=True)
    (published / "master.m3u8").write_text("#EXTM3U\n")
    (published / "360p" / "index.m3u8").write_text("#EXTM3U\n")
    (root / "default" / "secret.txt").write_text("no")
    master = (published / "master.m3u8").as_uri()
    assert media_file(master, "master.m3u8", [root]) == published / "master.m3u8"
    assert media_file(master, "360p/index.m3u8", [root]) == published / "360p" / "index.m3u8"
    assert media_file(master, "../secret.txt", [root]) is None
    assert media_file(master, "/etc/passwd", [root]) is None
    assert media_file(master, "master.m3u8", [tmp_path / "elsewhere"]) is None
    assert media_file("s3://bucket/out/master.m3u8", "master.m3u8", [root]) is None


def test_next_stays_on_this_site() -> None:
    assert safe_next("/workflows?state=running") == "/workflows?state=running"
    for bad in ("https://evil.example/", "//evil.example/x", "/\\evil", "javascript:alert(1)", ""):
        assert safe_next(bad) == "/"


def test_job_events_become_state_progress_and_log_lines() -> None:
    state = job_pb2.JobEvent(attempt=2, state=job_pb2.JOB_STATE_RUNNING)
    assert views.job_event(state) == ("job", {"state": "running", "attempt": 2})
    progress = job_pb2.JobEvent(attempt=1)
    progress.progress.percent = 42.25
    assert views.job_event(progress) == ("job", {"percent": 42.2, "attempt": 1})
    line = job_pb2.JobEvent(attempt=1, log=job_pb2.LogLine(stream=job_pb2.LOG_STREAM_STDERR, text="<b>"))
    assert views.job_event(line) == ("log", {"stream": "stderr", "text": "<b>", "attempt": 1})
    assert views.job_event(job_pb2.JobEvent()) is None
    page = views.job_page(views.Page("Job", None), job_pb2.Job(job_id="j/1"))
    assert 'data-live="/jobs/j%2F1/events"' in page and "data-log" in page


def test_the_timeline_has_a_bar_per_attempt_from_the_history() -> None:
    ET = events_pb2.WorkflowEventType
    history = []
    for seq, (kind, step, attempt, at) in enumerate(
        [
            (ET.WORKFLOW_EVENT_TYPE_STEP_SCHEDULED, "a", 1, 10),
            (ET.WORKFLOW_EVENT_TYPE_STEP_STARTED, "a", 1, 11),
            (ET.WORKFLOW_EVENT_TYPE_STEP_FAILED, "a", 1, 12),
            (ET.WORKFLOW_EVENT_TYPE_STEP_SCHEDULED, "a", 2, 13),
            (ET.WORKFLOW_EVENT_TYPE_STEP_STARTED, "a", 2, 14),
            (ET.WORKFLOW_EVENT_TYPE_STEP_COMPLETED, "a", 2, 16),
            (ET.WORKFLOW_EVENT_TYPE_STEP_SCHEDULED, "b", 1, 16),
        ],
        start=1,
    ):
        event = events_pb2.WorkflowEvent(sequence=seq, type=kind, step_id=step, attempt=attempt)
        event.event_time.seconds = at
        history.append(event)
    spans = views.attempt_spans(history, [])
    assert spans == [
        ("a", 1, 11.0, 12.0, "failed"),
        ("a", 2, 14.0, 16.0, "completed"),
        ("b", 1, 16.0, 0.0, "scheduled"),
    ]
    svg = views.timeline(spans, now=20.0)
    assert svg.count("<rect") == 3 and "state-failed" in svg and "#2 2.0s" in svg and "#1 4.0s" in svg


def test_cosmos_console_serves_https_only_and_needs_the_token_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server.main(["--insecure"]) == process.EXIT_CONFIG
    assert "serves HTTPS only" in capsys.readouterr().err
    authority = pki.Authority.ensure(tmp_path)
    pki.issue_all(authority, tmp_path, [("console", pki.Subject("console", "console"))], pki.parse_ttl("1h"))
    assert server.main(["--pki-dir", str(tmp_path)]) == process.EXIT_CONFIG
    assert "no token public key" in capsys.readouterr().err


def test_pool_page_shows_allocation_and_buttons_for_operators_only() -> None:
    agent = agent_pb2.Agent(agent_id="a1", state=agent_pb2.AGENT_STATE_READY)
    agent.inventory.gpus.add(index=0, model="A100")
    agent.gpu_allocations.add(index=0, allocated_share=0.5)
    stats = pool_service_pb2.PoolStats(
        total_gpus=1, allocated_gpus=0.5, gpu_fragmentation=1.0, agents_total=1
    )
    stats.gpus_by_model.add(model="A100", total=1, allocated=0.5)
    operator = Principal("token", "o", "default", frozenset({"operator"}))
    viewer = Principal("token", "v", "default", frozenset({"viewer"}))
    page = views.pool_page(views.Page("Pool", operator, "c"), [agent], stats)
    assert "A100 (0.50)" in page and "0.50 of 1 allocated" in page and "1.00" in page
    assert 'action="/pool/a1/cordon"' in page and 'action="/pool/a1/drain"' in page
    assert "/pool/a1/" not in views.pool_page(views.Page("Pool", viewer, "c"), [agent], stats)
