"""What a server exposes, and to whom: plaintext only with --insecure on loopback, a health-only port
for probes, renewed certificates served without a restart, one audit line per mutating call."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import security_harness
from grpc_health.v1 import health_pb2, health_pb2_grpc
from plato_harness import CARD_WORKFLOW
from servers import ServiceProcess

from cosmos.plato.v1 import workflow_service_pb2 as ws
from cosmos.plato.v1 import workflow_service_pb2_grpc
from cosmos.runtime.config import free_port
from cosmos.security import pki


def _plato(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cosmos.cli", "plato", "--nats", "nats://127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _non_loopback_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: picks the outgoing interface
            address = str(probe.getsockname()[0])
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        pytest.skip("this host has no non-loopback IPv4 address")
    return address


def test_plaintext_beyond_loopback_is_refused_with_the_reason() -> None:
    for host in ("0.0.0.0", _non_loopback_address()):
        done = _plato("--insecure", "--listen", f"{host}:{free_port()}")
        assert done.returncode == 2, done.stderr
        assert "refusing to serve plaintext without authentication" in done.stderr
        assert host in done.stderr


def test_a_server_without_credentials_does_not_start() -> None:
    done = _plato("--listen", f"127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert "no TLS credentials" in done.stderr and "cosmos pki" in done.stderr


def test_the_health_port_serves_health_and_nothing_else(
    start_service: Callable[..., ServiceProcess], nats_url: str
) -> None:
    health = f"127.0.0.1:{free_port()}"
    start_service("plato", "--nats", nats_url, "--health-listen", health)
    with grpc.insecure_channel(health) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            workflow_service_pb2_grpc.WorkflowServiceStub(channel).ListWorkflows(
                ws.ListWorkflowsRequest(), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _served_serial(target: str) -> int:
    """The serial number of the certificate the server presents to a new connection."""
    files = security_harness.admin()
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["h2"])
    host, port = target.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="plato.cosmos") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_renewed_certificate_is_served_without_a_restart(
    start_service: Callable[..., ServiceProcess], nats_url: str, tmp_path: Path
) -> None:
    own = tmp_path / "pki"
    shutil.copytree(security_harness.pki_dir(), own)
    plato = start_service("plato", "--nats", nats_url, "--pki-dir", str(own), "--pki-name", "plato")
    before = _served_serial(plato.target)
    assert pki.renew(pki.Authority.load(own), pki.Paths.named(own, "plato"), before=pki.CA_TTL)
    deadline = time.monotonic() + 10
    while (after := _served_serial(plato.target)) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after != before
    assert plato.proc.poll() is None


async def test_every_mutating_call_is_one_audit_line(
    start_service: Callable[..., ServiceProcess], nats_url: str
) -> None:
    plato = start_service("plato", "--nats", nats_url)
    alice = security_harness.user("alice", "acme", "submitter")
    async with security_harness.channel(plato.target) as admin:
        await workflow_service_pb2_grpc.WorkflowServiceStub(admin).RegisterDefinition(
            ws.RegisterDefinitionRequest(request_id="reg", source_yaml=CARD_WORKFLOW)
        )
    async with security_harness.channel(plato.target, alice) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        started = await stub.StartWorkflow(
            ws.StartWorkflowRequest(request_id="a1", definition_id="encode-workflow-v3")
        )
        await stub.GetWorkflow(ws.GetWorkflowRequest(workflow_id=started.workflow.workflow_id))  # not audited
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.RegisterDefinition(
                ws.RegisterDefinitionRequest(request_id="r2", source_yaml=CARD_WORKFLOW)
            )
    deadline = time.monotonic() + 5
    audits: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        audits = [
            json.loads(line)
            for line in plato.output().splitlines()
            if line.startswith("{") and '"cosmos.audit"' in line
        ]
        if len(audits) >= 3:
            break
        await asyncio.sleep(0.1)
    methods = [a["method"] for a in audits]
    assert methods == [
        "/cosmos.plato.v1.WorkflowService/RegisterDefinition",
        "/cosmos.plato.v1.WorkflowService/StartWorkflow",
        "/cosmos.plato.v1.WorkflowService/RegisterDefinition",
    ], audits
    start = audits[1]
    assert (start["identity"], start["tenant"], start["code"]) == ("user/alice", "acme", "OK")
    assert start["resource"] == started.workflow.workflow_id
    refused = audits[2]
    assert (refused["identity"], refused["code"]) == ("user/alice", "PERMISSION_DENIED")


async def test_an_insecure_stack_runs_on_loopback(tmp_path: Path) -> None:
    from cosmos.stack.embedded import EmbeddedStack, StackConfig

    cfg = StackConfig(
        optimus_port=free_port(), plato_port=free_port(), stratum_port=free_port(), nats_port=free_port(),
        data_dir=tmp_path / "data", insecure=True, token_port_offset=0,
    )  # fmt: skip
    async with EmbeddedStack(cfg) as stack:  # start() waits until the agent is READY
        assert stack.credentials is None and not (tmp_path / "data" / "pki").exists()
        assert stack.context().insecure
