"""Every RPC of every server refuses callers without credentials and callers with too little role.

The servers are real processes; the RPCs are found through each server's reflection service (not a
list kept here), and each is called with an empty request: the refusal comes before the request is
looked at.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import security_harness
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from servers import ServiceProcess

from cosmos.common.v1 import access_pb2
from cosmos.optimus.v1 import encode_service_pb2
from cosmos.plato.v1 import step_service_pb2, workflow_service_pb2
from cosmos.runtime import rpc_errors
from cosmos.runtime.config import free_port
from cosmos.security import pki
from cosmos.security.tls import TlsFiles
from cosmos.stratum.v1 import agent_service_pb2, job_service_pb2, pool_service_pb2

# The contracts whose access rules the reflected RPCs are checked against.
CONTRACTS = (encode_service_pb2, step_service_pb2, workflow_service_pb2, agent_service_pb2, job_service_pb2,
             pool_service_pb2)  # fmt: skip

COSMOS_PREFIX = "cosmos."


@dataclass(frozen=True)
class Rpc:
    """One RPC as reflection describes it, with the rule its contract declares."""

    path: str
    client_streaming: bool
    server_streaming: bool
    permission: str
    anonymous: bool = False
    """Needs no credentials: it authenticates its request itself (an agent's join token)."""

    def call(self, channel: grpc.aio.Channel, timeout: float = 10.0) -> Any:
        """Call it with an empty request; returns the awaitable or stream."""
        ident: Callable[[Any], bytes] = lambda _: b""  # noqa: E731

        def raw(data: bytes) -> bytes:
            return data

        if self.client_streaming:

            async def nothing() -> AsyncIterator[bytes]:
                # Sends nothing: the refusal comes before the stream's first message is read.
                await asyncio.Event().wait()
                yield b""

            return channel.stream_stream(self.path, ident, raw)(nothing(), timeout=timeout)
        if self.server_streaming:
            return channel.unary_stream(self.path, ident, raw)(b"", timeout=timeout)
        return channel.unary_unary(self.path, ident, raw)(b"", timeout=timeout)


async def refusal(rpc: Rpc, channel: grpc.aio.Channel) -> grpc.aio.AioRpcError | None:
    """The error calling ``rpc`` ended with, or None if it got through to the handler."""
    try:
        call = rpc.call(channel)
        if rpc.server_streaming:
            async for _ in call:
                break
            call.cancel()
            if rpc.client_streaming:
                return None
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


def reflected_rpcs(target: str) -> list[Rpc]:
    """Every Cosmos RPC a server announces through reflection, with its access rule."""
    with security_harness.sync_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        rpcs = []
        for name in database.get_services():
            if not name.startswith(COSMOS_PREFIX):
                continue
            for method in pool.FindServiceByName(name).methods:
                rule = descriptor_pool.Default().FindMethodByName(method.full_name).GetOptions()
                access = rule.Extensions[access_pb2.access]
                rpcs.append(
                    Rpc(
                        f"/{name}/{method.name}",
                        method.client_streaming,
                        method.server_streaming,
                        access_pb2.Permission.Name(access.permission),
                        access.anonymous,
                    )
                )
    return rpcs


@dataclass
class Mesh:
    """Plato, Stratum and Optimus, each with a token port."""

    targets: dict[str, str]
    token_targets: dict[str, str]
    processes: dict[str, ServiceProcess]


@pytest.fixture(scope="module")
def mesh(module_start_service: Callable[..., ServiceProcess], module_nats_url: str) -> Mesh:
    """One mesh for the module: its tests are refused or read, and leave nothing behind."""
    start, nats_url = module_start_service, module_nats_url
    token_ports = {name: f"127.0.0.1:{free_port()}" for name in ("plato", "stratum", "optimus")}
    plato = start("plato", "--nats", nats_url, "--token-listen", token_ports["plato"])
    stratum = start(
        "stratum", "--nats", nats_url, "--token-listen", token_ports["stratum"],
        "--agent-ca-dir", str(security_harness.pki_dir()),
    )  # fmt: skip
    optimus = start("optimus", "--plato", plato.target, "--token-listen", token_ports["optimus"])
    processes = {"plato": plato, "stratum": stratum, "optimus": optimus}
    return Mesh({n: p.target for n, p in processes.items()}, token_ports, processes)


def _reason(exc: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    info, _ = rpc_errors.details_of(exc)
    return (info.reason, dict(info.metadata)) if info is not None else ("", {})


async def test_reflection_finds_every_service(mesh: Mesh) -> None:
    found = {rpc.path.split("/")[1] for name in mesh.targets for rpc in reflected_rpcs(mesh.targets[name])}
    assert found == {
        "cosmos.plato.v1.WorkflowService",
        "cosmos.plato.v1.StepService",
        "cosmos.stratum.v1.JobService",
        "cosmos.stratum.v1.AgentService",
        "cosmos.stratum.v1.PoolService",
        "cosmos.optimus.v1.EncodeService",
    }


async def test_every_rpc_refuses_callers_without_credentials(mesh: Mesh) -> None:
    for name, target in mesh.targets.items():
        rpcs = reflected_rpcs(target)
        # The main port is mutual TLS: without a client certificate the handshake itself fails.
        async with security_harness.anonymous_channel(target) as channel:
            for rpc in rpcs:
                exc = await refusal(rpc, channel)
                assert exc is not None and exc.code() == grpc.StatusCode.UNAVAILABLE, (rpc.path, exc)
        # The token port asks no certificate: without a token every RPC is UNAUTHENTICATED, with why.
        # An anonymous RPC (an agent's join) checks the credential its request carries, its join token.
        async with security_harness.anonymous_channel(mesh.token_targets[name]) as channel:
            for rpc in rpcs:
                exc = await refusal(rpc, channel)
                assert exc is not None and exc.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc.path, exc)
                if rpc.anonymous:
                    assert _reason(exc) == ("ERROR_REASON_JOIN_TOKEN_INVALID", {"cause": "malformed"})
                    continue
                assert _reason(exc)[0] == "ERROR_REASON_UNAUTHENTICATED"
                assert "no credentials" in (exc.details() or "")


async def test_every_rpc_refuses_a_caller_with_too_little_role(mesh: Mesh) -> None:
    nobody = security_harness.user("nobody", "acme")  # a valid certificate holding no role
    viewer = security_harness.user("val", "acme", "viewer")
    agent = security_harness.workload("agent", "some-host")
    read = {"PERMISSION_ENCODES_READ", "PERMISSION_WORKFLOWS_READ", "PERMISSION_DEFINITIONS_READ",
            "PERMISSION_JOBS_READ", "PERMISSION_POOL_READ"}  # fmt: skip
    checked = 0
    for target in mesh.targets.values():
        rpcs = reflected_rpcs(target)
        for files, allowed in ((nobody, set()), (viewer, read), (agent, {"PERMISSION_AGENT_CONNECT"})):
            async with security_harness.channel(target, files) as channel:
                for rpc in rpcs:
                    exc = await refusal(rpc, channel)
                    if rpc.permission in allowed or rpc.anonymous:
                        # Let through to the handler: whatever it answers, it is not a refusal of the caller.
                        refused = ("ERROR_REASON_PERMISSION_DENIED", "ERROR_REASON_UNAUTHENTICATED")
                        assert exc is None or _reason(exc)[0] not in refused, (rpc.path, exc)
                        continue
                    assert exc is not None and exc.code() == grpc.StatusCode.PERMISSION_DENIED, (
                        rpc.path,
                        exc,
                    )
                    reason, metadata = _reason(exc)
                    assert reason == "ERROR_REASON_PERMISSION_DENIED"
                    assert metadata["permission"] == rpc.permission, rpc.path
                    checked += 1
    assert checked > 60


async def test_tokens_expired_tampered_or_forged_are_unauthenticated(mesh: Mesh) -> None:
    target = mesh.token_targets["plato"]
    path = "/cosmos.plato.v1.WorkflowService/ListWorkflows"
    rpc = Rpc(path, False, False, "PERMISSION_WORKFLOWS_READ")
    good = security_harness.token("acme", "viewer")
    async with security_harness.token_channel(target, good) as channel:
        assert await refusal(rpc, channel) is None

    expired = security_harness.token("acme", "viewer", ttl=1)
    await asyncio.sleep(2.1)
    head, body, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["roles"] = ["admin"]  # raise one's own role, keep the signature
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    tampered = f"{head}.{forged_body}.{signature}"
    flipped = f"{head}.{body}.{signature[:-4]}{'AAAA' if not signature.endswith('AAAA') else 'BBBB'}"
    for token, why in (
        (expired, "expired"),
        (tampered, "signature"),
        (flipped, "signature"),
        ("x.y", "not valid"),
    ):
        async with security_harness.token_channel(target, token) as channel:
            exc = await refusal(rpc, channel)
        assert exc is not None and exc.code() == grpc.StatusCode.UNAUTHENTICATED, (token, exc)
        assert why in (exc.details() or ""), exc.details()


async def test_a_certificate_from_another_ca_is_refused(mesh: Mesh, tmp_path: Any) -> None:
    other = pki.Authority.create(tmp_path)
    other.issue(pki.Paths.named(tmp_path, "mallory"), pki.Subject("user", "admin", "default", ("admin",)))
    files = TlsFiles(
        security_harness.pki_dir() / "ca.pem", tmp_path / "mallory.pem", tmp_path / "mallory-key.pem"
    )
    rpc = Rpc("/cosmos.stratum.v1.PoolService/ListAgents", False, False, "PERMISSION_POOL_READ")
    async with security_harness.channel(mesh.targets["stratum"], files) as channel:
        exc = await refusal(rpc, channel)
    assert exc is not None and exc.code() == grpc.StatusCode.UNAVAILABLE
