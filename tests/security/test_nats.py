"""NATS is locked down: no anonymous or plaintext client, per-role permissions, unforgeable step reports.

Each test asserts the refusal (the connection error or NATS permission violation, the gRPC code and
reason, the warning Plato logs) and that nothing happened (streams still there, the workflow record at
the same revision, the step still waiting).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.errors
import pytest
import security_harness
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig
from plato_harness import PlatoClient
from servers import ServiceProcess

from cosmos.plato.v1 import (
    engine_pb2,
    step_service_pb2,
    step_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from cosmos.protocol import inputs, subjects
from cosmos.runtime import jetstream, rpc_errors
from cosmos.runtime.config import free_port
from cosmos.security.tls import TlsFiles
from cosmos.stack import credentials
from cosmos.stack.embedded import EmbeddedStack, StackConfig
from cosmos.stratum.v1 import job_service_pb2, job_service_pb2_grpc

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState

GUARDED = """\
workflow:
  id: guarded
  rules:
    - when: workflow.started
      do: [work]
    - when: any.failed
      retry: {max: 2, backoff: fixed, initialInterval: 1s}
"""


class Plato:
    """A Plato server process, a client to it, and its log."""

    def __init__(self, service: ServiceProcess, client: PlatoClient) -> None:
        self.service = service
        self.client = client

    async def wait_log(self, text: str, count: int = 1, timeout: float = 15.0) -> None:
        """Until ``text`` appears ``count`` times in Plato's log."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.service.output().count(text) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{text!r} not logged {count} times:\n{self.service.output()[-4000:]}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def plato(start_service: Callable[..., ServiceProcess], nats_url: str) -> AsyncIterator[Plato]:
    service = start_service("plato", "--nats", nats_url)
    async with security_harness.channel(service.target) as channel:
        client = PlatoClient(
            service.target, nats_url, channel, workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        )
        yield Plato(service, client)


async def connect_as(url: str, files: TlsFiles | None) -> tuple[NatsClient, list[Exception]]:
    """A NATS client as ``files`` (default Plato) and the asynchronous errors the server sends it."""
    seen: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        seen.append(exc)

    nc = await nats.connect(
        url,
        connect_timeout=2,
        allow_reconnect=False,
        error_cb=on_error,
        **security_harness.nats_options(files),
    )
    return nc, seen


def violations(seen: list[Exception]) -> list[str]:
    """The permission violations among ``seen`` (nats-py lower-cases the server's message)."""
    return [str(e).lower() for e in seen if "permissions violation" in str(e).lower()]


async def waiting_workflow(plato: Plato) -> tuple[str, engine_pb2.WorkflowRecord, int]:
    """A workflow whose step ``work`` is scheduled (attempt 1) with nobody serving it, and its record."""
    await plato.client.register(GUARDED)
    wf_id = await plato.client.start("guarded")
    record, revision = await stored_record(plato.client.nats_url, wf_id)
    for _ in range(100):
        if record.workflow.steps and record.workflow.steps[0].state == SS.STEP_STATE_SCHEDULED:
            return wf_id, record, revision
        await asyncio.sleep(0.05)
        record, revision = await stored_record(plato.client.nats_url, wf_id)
    raise AssertionError(f"step never scheduled: {record.workflow}")


async def stored_record(url: str, wf_id: str) -> tuple[engine_pb2.WorkflowRecord, int]:
    """The stored header with its workflow's stored steps filled in, and the header's revision."""
    nc, _ = await connect_as(url, None)
    try:
        for _ in range(50):
            # Steps first: a step key is written only after the header commit that made it, so the
            # header read next is at least that commit (read the other way round, a start could
            # commit in between).
            steps = await (await nc.jetstream().key_value(subjects.STEPS_BUCKET)).watch(f"{wf_id}.*")
            stored = []
            while (step := await steps.updates(timeout=5)) is not None:  # type: ignore[no-untyped-call]
                stored.append(engine_pb2.StepRecord.FromString(step.value or b""))
            await steps.stop()  # type: ignore[no-untyped-call]
            entry = await (await nc.jetstream().key_value(subjects.WORKFLOWS_BUCKET)).get(wf_id)
            assert entry.value is not None
            record = engine_pb2.WorkflowRecord.FromString(entry.value)
            # Fewer step keys than the header counts: read while a key was being written (a watch
            # started as a key's new revision replaces the old can see neither), or before it was.
            if len(stored) >= record.step_count:
                break
            await asyncio.sleep(0.05)
        record.workflow.steps.extend(s.step for s in sorted(stored, key=lambda s: s.ordinal))
        return record, entry.revision or 0
    finally:
        await nc.close()


async def test_plaintext_anonymous_and_unknown_certificates_are_refused(nats_url: str) -> None:
    host, port = nats_url.removeprefix("nats://").split(":")
    # Plaintext: the server demands TLS before anything else; a CONNECT and PUB never get a PONG.
    with socket.create_connection((host, int(port)), timeout=3) as raw:
        info = raw.recv(4096).decode()
        assert info.startswith("INFO ") and '"tls_required":true' in info
        raw.sendall(b'CONNECT {"verbose":false}\r\nPUB cosmos.plato.inbox.x 1\r\nx\r\nPING\r\n')
        try:
            answer = raw.recv(4096)
        except OSError:
            answer = b""
        assert b"PONG" not in answer
    # TLS trusting the CA, but no client certificate: the handshake is refused.
    anonymous = ssl.create_default_context(cafile=str(security_harness.pki_dir() / "ca.pem"))
    with pytest.raises((OSError, nats.errors.Error, TimeoutError)):
        await nats.connect(
            nats_url, connect_timeout=2, allow_reconnect=False, tls=anonymous, tls_hostname="nats.cosmos"
        )
    # Certificates of the platform CA that map to no NATS user: Optimus (needs no NATS) and a person.
    for files in (
        security_harness.workload("optimus", "optimus"),
        security_harness.admin(),
        security_harness.user("mallory", "acme", "submitter"),
    ):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                nats_url, connect_timeout=2, allow_reconnect=False, **security_harness.nats_options(files)
            )


async def test_workers_and_stratum_cannot_touch_platos_streams_inboxes_or_buckets(plato: Plato) -> None:
    url = plato.client.nats_url
    wf_id, before, revision = await waiting_workflow(plato)
    forged = engine_pb2.EngineInput(workflow_id=wf_id, cancel=engine_pb2.CancelInput(reason="forged"))
    for files in (security_harness.worker_tls(), TlsFiles.in_dir(security_harness.pki_dir(), "stratum")):
        nc, seen = await connect_as(url, files)
        js = nc.jetstream(timeout=1)
        try:
            await nc.publish(subjects.inbox(wf_id), forged.SerializeToString())
            await nc.publish(f"$KV.{subjects.WORKFLOWS_BUCKET}.{wf_id}", b"\xff garbage")
            await nc.publish(subjects.events(wf_id), b"forged event")
            with pytest.raises(nats.errors.TimeoutError):
                await js.delete_stream(subjects.INBOX_STREAM)
            with pytest.raises(nats.errors.TimeoutError):
                await js.add_stream(StreamConfig(name="ROGUE", subjects=["rogue.>"]))
            with pytest.raises(nats.errors.TimeoutError):
                await js.delete_key_value(subjects.WORKFLOWS_BUCKET)
            await nc.flush()
            await asyncio.sleep(0.3)
        finally:
            await nc.close()
        denied = "\n".join(violations(seen))
        for subject in (
            subjects.inbox(wf_id),
            f"$KV.{subjects.WORKFLOWS_BUCKET}.{wf_id}",
            subjects.events(wf_id),
            f"$JS.API.STREAM.DELETE.{subjects.INBOX_STREAM}",
            "$JS.API.STREAM.CREATE.ROGUE",
            f"$JS.API.STREAM.DELETE.KV_{subjects.WORKFLOWS_BUCKET}",
        ):
            assert f'publish to "{subject.lower()}"' in denied, (
                f"{files.cert.name}: no permissions violation for {subject}: {denied}"
            )

    # Nothing changed: every stream is there, no rogue one, the record is at the same revision.
    nc, _ = await connect_as(url, None)
    try:
        js = nc.jetstream()
        for stream in (subjects.INBOX_STREAM, subjects.EVENTS_STREAM, f"KV_{subjects.WORKFLOWS_BUCKET}"):
            assert (await js.stream_info(stream)).config.name == stream
        names = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)).data)["streams"]
        assert subjects.INBOX_STREAM in names and "ROGUE" not in names
    finally:
        await nc.close()
    after, after_revision = await stored_record(url, wf_id)
    assert (
        after_revision == revision
        and after.workflow.state == before.workflow.state == WS.WORKFLOW_STATE_RUNNING
    )


async def test_forged_step_completions_are_refused_and_logged(plato: Plato) -> None:
    url = plato.client.nats_url
    wf_id, _, revision = await waiting_workflow(plato)

    def completion(token: bytes) -> bytes:
        inp, _ = inputs.result(wf_id, "work", 1, output={"forged": True}, task_token=token)
        return inp.SerializeToString()

    # Plato's own credentials, right subject: absent and wrong tokens.
    nc, _ = await connect_as(url, None)
    js = nc.jetstream()
    await js.publish(subjects.inbox(wf_id), completion(b""), headers={"Nats-Msg-Id": uuid.uuid4().hex})
    await js.publish(subjects.inbox(wf_id), completion(secrets.token_bytes(32)))
    await nc.close()
    # A worker's report subject: a wrong token, another attempt's token, and a cancel (not a report).
    worker, _ = await connect_as(url, security_harness.worker_tls())
    wjs = worker.jetstream()
    await wjs.publish(subjects.report(wf_id), completion(secrets.token_bytes(32)))
    await wjs.publish(subjects.report(wf_id), completion(security_harness.task_token(wf_id, "work", 2)))
    cancel = engine_pb2.EngineInput(workflow_id=wf_id, cancel=engine_pb2.CancelInput(reason="forged"))
    await wjs.publish(subjects.report(wf_id), cancel.SerializeToString())
    await plato.wait_log("engine input refused", count=5)
    log = plato.service.output()
    assert log.count("missing or wrong task token") >= 4 and "carries only results and heartbeats" in log

    after, after_revision = await stored_record(url, wf_id)
    assert after_revision == revision
    assert after.workflow.state == WS.WORKFLOW_STATE_RUNNING
    assert after.workflow.steps[0].state == SS.STEP_STATE_SCHEDULED and not after.workflow.output.fields

    # gRPC StepService: a forged token is PERMISSION_DENIED, and changes nothing either.
    steps = step_service_pb2_grpc.StepServiceStub(plato.client.channel)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await steps.CompleteStep(
            step_service_pb2.CompleteStepRequest(
                request_id="forged", workflow_id=wf_id, step_id="work", attempt=1, task_token=b"x" * 32
            )
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info, _ = rpc_errors.details_of(denied.value)
    assert info is not None and info.reason == "ERROR_REASON_PERMISSION_DENIED"
    assert info.metadata["field"] == "task_token"
    assert (await stored_record(url, wf_id))[1] == revision

    # The control: the right token, on the worker's subject, is applied.
    await wjs.publish(subjects.report(wf_id), completion(security_harness.task_token(wf_id, "work", 1)))
    await worker.close()
    done = await plato.client.wait(wf_id, timeout=20)
    assert done.state == WS.WORKFLOW_STATE_COMPLETED


async def test_a_replayed_completion_of_an_old_attempt_is_refused(plato: Plato) -> None:
    url = plato.client.nats_url
    wf_id, _, _ = await waiting_workflow(plato)
    steps = step_service_pb2_grpc.StepServiceStub(plato.client.channel)
    first = security_harness.task_token(wf_id, "work", 1)
    await steps.FailStep(
        step_service_pb2.FailStepRequest(
            request_id="fail-1", workflow_id=wf_id, step_id="work", attempt=1, error="boom", task_token=first
        )
    )
    for _ in range(200):
        record, revision = await stored_record(url, wf_id)
        step = record.workflow.steps[0]
        if step.attempt == 2 and step.state == SS.STEP_STATE_SCHEDULED:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"attempt 2 never scheduled: {record.workflow}")

    # Attempt 1's genuine completion, replayed on NATS (a new message id, past JetStream's de-duplication).
    replayed, _ = inputs.result(wf_id, "work", 1, output={"replayed": True}, task_token=first)
    worker, _ = await connect_as(url, security_harness.worker_tls())
    await worker.jetstream().publish(subjects.report(wf_id), replayed.SerializeToString())
    await worker.close()
    await plato.wait_log("stale or unknown step attempt refused")
    # ... and through gRPC: stale for attempt 1, and attempt 1's token does not complete attempt 2.
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await steps.CompleteStep(
            step_service_pb2.CompleteStepRequest(
                request_id="replay", workflow_id=wf_id, step_id="work", attempt=1, task_token=first
            )
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    info, _ = rpc_errors.details_of(stale.value)
    assert info is not None and info.reason == "ERROR_REASON_STALE_ATTEMPT"
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await steps.CompleteStep(
            step_service_pb2.CompleteStepRequest(
                request_id="borrowed", workflow_id=wf_id, step_id="work", attempt=2, task_token=first
            )
        )
    assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED

    after, after_revision = await stored_record(url, wf_id)
    assert after_revision == revision
    assert after.workflow.steps[0].attempt == 2 and after.workflow.steps[0].state == SS.STEP_STATE_SCHEDULED
    assert after.workflow.state == WS.WORKFLOW_STATE_RUNNING and not after.workflow.output.fields


async def test_a_garbage_key_does_not_break_list_workflows(plato: Plato) -> None:
    wf_id, _, _ = await waiting_workflow(plato)
    nc, _ = await connect_as(plato.client.nats_url, None)
    kv = await nc.jetstream().key_value(subjects.WORKFLOWS_BUCKET)
    await kv.put("garbage", b"\xff\xfe this is not a workflow record")
    await kv.put(
        "impostor",
        engine_pb2.WorkflowRecord(workflow=workflow_pb2.Workflow(workflow_id="other")).SerializeToString(),
    )
    await nc.close()
    listed = await plato.client.stub.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest())
    assert [wf.workflow_id for wf in listed.workflows] == [wf_id]
    assert "unreadable workflow record skipped" in plato.service.output()


async def test_a_garbage_key_does_not_break_list_jobs(
    start_service: Callable[..., ServiceProcess], nats_url: str
) -> None:
    stratum = start_service("stratum", "--nats", nats_url)
    nc, _ = await connect_as(nats_url, TlsFiles.in_dir(security_harness.pki_dir(), "stratum"))
    kv = await nc.jetstream().key_value("stratum-jobs")
    await kv.put("garbage", b"\xff\xfe this is not a job")
    await nc.close()
    async with security_harness.channel(stratum.target) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        listed: Any = await jobs.ListJobs(job_service_pb2.ListJobsRequest())
    assert list(listed.jobs) == []
    assert "unreadable job record skipped" in stratum.output()


async def test_the_embedded_stack_runs_the_locked_down_nats(tmp_path: Path) -> None:
    cfg = StackConfig(
        optimus_port=free_port(), plato_port=free_port(), stratum_port=free_port(), nats_port=free_port(),
        data_dir=tmp_path / "data", token_port_offset=0,
    )  # fmt: skip
    async with EmbeddedStack(cfg) as stack:
        assert stack.credentials is not None
        with pytest.raises((OSError, nats.errors.Error, TimeoutError)):
            await nats.connect(cfg.nats_url, connect_timeout=2, allow_reconnect=False)
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await connect_as(cfg.nats_url, stack.credentials.files(credentials.ADMIN))
        nc, seen = await connect_as(cfg.nats_url, stack.credentials.files(credentials.WORKER))
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream(timeout=1).delete_stream(subjects.INBOX_STREAM)
        await nc.close()
        assert f'publish to "$js.api.stream.delete.{subjects.INBOX_STREAM.lower()}"' in "".join(
            violations(seen)
        )
        plato, _ = await connect_as(cfg.nats_url, stack.credentials.files("plato"))
        assert (
            await plato.jetstream().stream_info(subjects.INBOX_STREAM)
        ).config.name == subjects.INBOX_STREAM
        await plato.close()
        assert (stack.credentials.directory / "task.key").stat().st_mode & 0o077 == 0


async def test_insecure_setups_keep_a_plain_nats(insecure_nats_url: str) -> None:
    # What --insecure Plato and Stratum do: no credentials, plaintext, on loopback.
    nc, js = await jetstream.connect(insecure_nats_url, "insecure-dev", tls=None, timeout=10)
    await js.add_stream(StreamConfig(name=subjects.INBOX_STREAM, subjects=[subjects.INBOX_ALL]))
    await nc.close()
