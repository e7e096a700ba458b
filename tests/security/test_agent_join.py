"""Agents join with join tokens and renew their certificates: a real Stratum (with ``--agent-ca-dir``
and a token port) and real agent processes.

A token joins an agent, which then runs a job; a single-use token works once; expired, garbage,
tampered, deleted and wrongly bound tokens are refused (UNAUTHENTICATED, audited); the certificate
issued is an agent's and nothing more; renewal gives the same identity a new certificate, for agents
only; a revoked agent can neither join nor renew; the join RPC is reachable without a certificate
only on the token port.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import security_harness
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from servers import ServiceProcess, stop_process
from stratum_harness import JobsClient, python_job, wait_agents

from cosmos.runtime import rpc_errors, wellknown
from cosmos.runtime.config import free_port
from cosmos.security import join, pki
from cosmos.security.tls import TlsFiles
from cosmos.stratum.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    job_pb2,
    join_token_pb2,
    pool_service_pb2,
    pool_service_pb2_grpc,
)

JOIN = "/cosmos.stratum.v1.AgentService/JoinAgent"


@dataclass
class Pool:
    """A Stratum that signs agent certificates, and its token port."""

    stratum: ServiceProcess
    token_target: str

    @property
    def target(self) -> str:
        return self.stratum.target


def _start(start_service: Callable[..., ServiceProcess], nats_url: str, *extra: str) -> Pool:
    token_target = f"127.0.0.1:{free_port()}"
    stratum = start_service(
        "stratum", "--nats", nats_url, "--token-listen", token_target, "--lease-seconds", "5",
        "--heartbeat-interval", "0.5", *extra,
    )  # fmt: skip
    return Pool(stratum, token_target)


@pytest.fixture
def pool(start_service: Callable[..., ServiceProcess], nats_url: str) -> Pool:
    return _start(start_service, nats_url, "--agent-ca-dir", str(security_harness.pki_dir()))


def _reason(exc: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    info, _ = rpc_errors.details_of(exc)
    return (info.reason, dict(info.metadata)) if info is not None else ("", {})


async def create_token(target: str, *, uses: int = 1, ttl: float = 600, agent_id: str = "") -> str:
    async with security_harness.channel(target) as channel:
        reply = await pool_service_pb2_grpc.PoolServiceStub(channel).CreateJoinToken(
            pool_service_pb2.CreateJoinTokenRequest(
                request_id=uuid.uuid4().hex, uses=uses, ttl=wellknown.duration(ttl), agent_id=agent_id
            )
        )
    return reply.token


async def list_tokens(target: str) -> dict[str, join_token_pb2.JoinToken]:
    async with security_harness.channel(target) as channel:
        reply = await pool_service_pb2_grpc.PoolServiceStub(channel).ListJoinTokens(
            pool_service_pb2.ListJoinTokensRequest()
        )
    return {t.token_id: t for t in reply.join_tokens}


async def call_join(
    target: str,
    token: str,
    agent_id: str,
    key: ec.EllipticCurvePrivateKey | None = None,
    request_id: str = "",
) -> agent_service_pb2.JoinAgentResponse:
    """JoinAgent as an agent without a certificate does it (TLS, server checked, no client certificate)."""
    request = agent_service_pb2.JoinAgentRequest(
        request_id=request_id or uuid.uuid4().hex,
        token=token,
        agent_id=agent_id,
        csr_pem=join.make_csr(key or ec.generate_private_key(ec.SECP256R1()), agent_id),
    )
    async with security_harness.anonymous_channel(target) as channel:
        return await agent_service_pb2_grpc.AgentServiceStub(channel).JoinAgent(request, timeout=20)


async def refused_join(target: str, token: str, agent_id: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call_join(target, token, agent_id)
    return caught.value


def joined_files(directory: Path, name: str, reply: agent_service_pb2.JoinAgentResponse,
                 key: ec.EllipticCurvePrivateKey) -> TlsFiles:  # fmt: skip
    """Write what a join returned as ``cosmos agent`` would, next to the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(security_harness.pki_dir() / "ca.pem", directory / "ca.pem")
    paths = pki.Paths.named(directory, name)
    pki.write_key(paths.key, key)
    pki.write_file(paths.cert, reply.certificate_chain_pem.encode(), 0o644)
    return TlsFiles.in_dir(directory, name)


async def renew(target: str, files: TlsFiles) -> agent_service_pb2.RenewAgentCertificateResponse:
    request = agent_service_pb2.RenewAgentCertificateRequest(
        request_id=uuid.uuid4().hex, csr_pem=join.make_csr(ec.generate_private_key(ec.SECP256R1()), "x")
    )
    async with security_harness.channel(target, files) as channel:
        return await agent_service_pb2_grpc.AgentServiceStub(channel).RenewAgentCertificate(
            request, timeout=20
        )


@pytest.fixture
def agent_procs(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop_process(proc)


def start_joining_agent(
    procs: list[subprocess.Popen[bytes]], pool: Pool, directory: Path, agent_id: str, token: str
) -> subprocess.Popen[bytes]:
    """``cosmos agent`` with only ca.pem in its pki dir, the token in its environment."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(security_harness.pki_dir() / "ca.pem", directory / "ca.pem")
    log = (directory.parent / f"{agent_id}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosmos.cli", "agent", "--stratum", pool.target, "--agent-id", agent_id,
         "--work-dir", str(directory.parent / f"work-{agent_id}"), "--log-format", "text",
         "--pki-dir", str(directory), "--join-address", pool.token_target],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "COSMOS_AGENT_JOIN_TOKEN": token},
    )  # fmt: skip
    procs.append(proc)
    return proc


async def test_a_token_joins_an_agent_which_then_runs_a_job_and_a_single_use_token_works_once(
    pool: Pool, tmp_path: Path, agent_procs: list[subprocess.Popen[bytes]]
) -> None:
    token = await create_token(pool.target)
    token_id = join.parse(token).token_id
    directory = tmp_path / "joiner-pki"
    start_joining_agent(agent_procs, pool, directory, "joiner-1", token)
    await wait_agents(pool.target, 1)

    files = TlsFiles.in_dir(directory, "agent")
    assert pki.subject_of(pki.load_cert(files.cert)) == pki.Subject("agent", "joiner-1")
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    jobs = JobsClient.connect(pool.target)
    try:
        job = await jobs.submit(python_job("print('joined')"))
        done = await jobs.wait(job.job_id)
        assert (done.state, done.agent_id) == (job_pb2.JOB_STATE_SUCCEEDED, "joiner-1")
    finally:
        await jobs.channel.close(None)

    listed = (await list_tokens(pool.target))[token_id]
    assert (listed.uses, listed.uses_left, list(listed.joined_agent_ids)) == (1, 0, ["joiner-1"])
    # The same single-use token again (another agent, another key): refused, nothing issued.
    exc = await refused_join(pool.token_target, token, "joiner-2")
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _reason(exc) == ("ERROR_REASON_JOIN_TOKEN_INVALID", {"cause": "used_up", "token_id": token_id})
    assert "used up" in (exc.details() or "")


async def test_a_used_up_token_stops_a_second_agent_process_with_the_reason(
    pool: Pool, tmp_path: Path, agent_procs: list[subprocess.Popen[bytes]]
) -> None:
    token = await create_token(pool.target)
    await call_join(pool.token_target, token, "first")
    proc = start_joining_agent(agent_procs, pool, tmp_path / "second-pki", "second", token)
    assert proc.wait(60) == 2
    log = (tmp_path / "second.log").read_text()
    assert "UNAUTHENTICATED" in log and "used up" in log
    assert not (tmp_path / "second-pki" / "agent.pem").exists()


async def test_expired_garbage_tampered_deleted_and_misbound_tokens_are_refused_and_audited(
    pool: Pool,
) -> None:
    expired = await create_token(pool.target, ttl=1)
    bound = await create_token(pool.target, agent_id="host-a")
    deleted = await create_token(pool.target)
    async with security_harness.channel(pool.target) as channel:
        await pool_service_pb2_grpc.PoolServiceStub(channel).DeleteJoinToken(
            pool_service_pb2.DeleteJoinTokenRequest(request_id="d1", token_id=join.parse(deleted).token_id)
        )
    good = await create_token(pool.target, uses=5)
    parsed = join.parse(good)
    flipped = parsed.secret[:-1] + ("A" if parsed.secret[-1] != "A" else "B")
    tampered = str(join.Token(parsed.token_id, flipped))
    await asyncio.sleep(1.5)  # past the first token's end
    cases = [
        (expired, "a1", "expired"),
        ("garbage", "a1", "malformed"),
        ("", "a1", "malformed"),
        (tampered, "a1", "unknown"),
        (deleted, "a1", "unknown"),
        (bound, "host-b", "agent_mismatch"),
    ]
    for token, agent_id, cause in cases:
        exc = await refused_join(pool.token_target, token, agent_id)
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, (cause, exc)
        reason, metadata = _reason(exc)
        assert (reason, metadata["cause"]) == ("ERROR_REASON_JOIN_TOKEN_INVALID", cause), exc.details()
    # None of the refusals spent a use of the good token, which still joins the bound one's agent.
    assert (await list_tokens(pool.target))[parsed.token_id].uses_left == 5
    assert (await call_join(pool.token_target, bound, "host-a")).agent_id == "host-a"

    deadline = time.monotonic() + 10
    refused: list[dict[str, object]] = []
    while time.monotonic() < deadline and len(refused) < len(cases):
        audits = [json.loads(line) for line in pool.stratum.output().splitlines()
                  if line.startswith("{") and '"cosmos.audit"' in line]  # fmt: skip
        refused = [a for a in audits if a["method"] == JOIN and a["code"] == "UNAUTHENTICATED"]
        await asyncio.sleep(0.1)
    assert len(refused) == len(cases)
    assert {a["identity"] for a in refused} == {"anonymous"}
    assert {a["resource"] for a in refused} == {"a1", "host-b"}
    assert good not in pool.stratum.output() and flipped not in pool.stratum.output()  # no secrets logged


async def test_an_issued_certificate_is_an_agent_renewing_itself_and_nothing_more(
    pool: Pool, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    reply = await call_join(pool.token_target, await create_token(pool.target), "ident-1", key)
    files = joined_files(tmp_path / "pki", "agent", reply, key)
    cert = pki.load_cert(files.cert)
    assert pki.subject_of(cert) == pki.Subject("agent", "ident-1")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cosmos/agent/ident-1"]
    assert reply.expire_time.ToDatetime(datetime.UTC) == cert.not_valid_after_utc

    # It acts as an agent only: operator and admin RPCs are refused with the permission they need.
    async with security_harness.channel(pool.target, files) as channel:
        stub = pool_service_pb2_grpc.PoolServiceStub(channel)
        for call in (
            stub.DrainAgent(pool_service_pb2.DrainAgentRequest(request_id="x", agent_id="ident-1")),
            stub.CreateJoinToken(pool_service_pb2.CreateJoinTokenRequest(request_id="y")),
            stub.ListAgents(pool_service_pb2.ListAgentsRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert _reason(caught.value)[0] == "ERROR_REASON_PERMISSION_DENIED"

    renewed = await renew(pool.target, files)
    new = x509.load_pem_x509_certificate(renewed.certificate_chain_pem.encode())
    assert renewed.agent_id == "ident-1" and pki.subject_of(new) == pki.Subject("agent", "ident-1")
    assert new.serial_number != cert.serial_number and new.public_key() != cert.public_key()

    # Renewal is for agents: a user (even admin), or another workload, is refused.
    for caller in (security_harness.admin(), security_harness.workload("plato", "plato-x")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await renew(pool.target, caller)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Creating join tokens is admin's: an operator may revoke agents but not mint them.
    operator = security_harness.user("opal", "default", "operator")
    async with security_harness.channel(pool.target, operator) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pool_service_pb2_grpc.PoolServiceStub(channel).CreateJoinToken(
                pool_service_pb2.CreateJoinTokenRequest(request_id="op")
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(caught.value)[1]["permission"] == "PERMISSION_AGENTS_ENROLL"


async def test_a_revoked_agent_can_neither_join_nor_renew(pool: Pool, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    reply = await call_join(pool.token_target, await create_token(pool.target), "rev-1", key)
    files = joined_files(tmp_path / "pki", "agent", reply, key)
    async with security_harness.channel(pool.target) as channel:
        await pool_service_pb2_grpc.PoolServiceStub(channel).RevokeAgent(
            pool_service_pb2.RevokeAgentRequest(request_id="rv", agent_id="rev-1", reason="test")
        )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await renew(pool.target, files)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(caught.value)[0] == "ERROR_REASON_AGENT_REVOKED"

    token = await create_token(pool.target)
    exc = await refused_join(pool.token_target, token, "rev-1")
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED and _reason(exc)[0] == "ERROR_REASON_AGENT_REVOKED"
    assert (await list_tokens(pool.target))[join.parse(token).token_id].uses_left == 1  # nothing spent


async def test_join_is_reachable_without_a_certificate_only_on_the_token_port(pool: Pool) -> None:
    token = await create_token(pool.target)
    csr = join.make_csr(ec.generate_private_key(ec.SECP256R1()), "nocert")
    request = agent_service_pb2.JoinAgentRequest(request_id="r", token=token, agent_id="nocert", csr_pem=csr)
    # The main port: mutual TLS (no client certificate, no handshake) and no plaintext at all.
    for channel in (security_harness.anonymous_channel(pool.target), grpc.aio.insecure_channel(pool.target)):
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await agent_service_pb2_grpc.AgentServiceStub(channel).JoinAgent(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await list_tokens(pool.target))[join.parse(token).token_id].uses_left == 1
    # Plaintext on the token port does not reach it either; TLS without a certificate does.
    async with grpc.aio.insecure_channel(pool.token_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_service_pb2_grpc.AgentServiceStub(channel).JoinAgent(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await call_join(pool.token_target, token, "nocert")).agent_id == "nocert"


async def test_a_pool_without_an_agent_ca_says_it_issues_no_certificates(
    start_service: Callable[..., ServiceProcess], nats_url: str
) -> None:
    pool = _start(start_service, nats_url)
    token = await create_token(pool.target)  # tokens can be made; nothing can be signed with them
    exc = await refused_join(pool.token_target, token, "a1")
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(exc)[0] == "ERROR_REASON_JOIN_NOT_CONFIGURED" and "--agent-ca-dir" in (exc.details() or "")


@pytest.mark.slow
async def test_a_joined_agent_renews_its_short_certificate_and_stays_in_the_pool(
    start_service: Callable[..., ServiceProcess],
    nats_url: str,
    tmp_path: Path,
    agent_procs: list[subprocess.Popen[bytes]],
) -> None:
    # 30 s certificates: the agent renews every 15 s (half the time left), each time over mutual TLS
    # with the certificate it got the time before.
    pool = _start(start_service, nats_url, "--agent-ca-dir", str(security_harness.pki_dir()),
                  "--agent-cert-ttl", "30s")  # fmt: skip
    directory = tmp_path / "short-pki"
    start_joining_agent(agent_procs, pool, directory, "short-1", await create_token(pool.target))
    await wait_agents(pool.target, 1)
    cert_file = TlsFiles.in_dir(directory, "agent").cert
    serials = [pki.load_cert(cert_file).serial_number]
    deadline = time.monotonic() + 120
    while len(serials) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        serial = pki.load_cert(cert_file).serial_number
        if serial != serials[-1]:
            serials.append(serial)
    assert len(serials) == 3, (tmp_path / "short-1.log").read_text()
    assert pki.subject_of(pki.load_cert(cert_file)) == pki.Subject("agent", "short-1")
    async with security_harness.channel(pool.target) as channel:
        agent = (
            await pool_service_pb2_grpc.PoolServiceStub(channel).GetAgent(
                pool_service_pb2.GetAgentRequest(agent_id="short-1")
            )
        ).agent
    assert agent.state == agent_pb2.AGENT_STATE_READY
