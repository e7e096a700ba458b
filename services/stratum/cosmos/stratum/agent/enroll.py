"""The agent's certificate: joining the pool with a join token, and renewing before it expires.

``cosmos agent --join-token TOKEN --join-address HOST:TOKENPORT`` (or ``COSMOS_AGENT_JOIN_TOKEN``, so
the token is not on the command line, which every user of the host can read): when the agent's
certificate is missing or expired, the agent makes a key (it never leaves the host; 0600), sends a
CSR with the token to Stratum's token port (TLS, Stratum checked against the CA file the agent was
given, ``ca.pem``), and writes the certificate it gets. With a certificate it then renews it over its
mutual-TLS channel at about two thirds of its lifetime, writing key and certificate atomically; the
agent's channels pick the new files up for new connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import socket
import uuid

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from cosmos import errors
from cosmos.runtime import channels, config, wellknown
from cosmos.security import join, pki, tls
from cosmos.security.config import Security
from cosmos.security.tls import TlsFiles
from cosmos.stratum.v1 import agent_service_pb2, agent_service_pb2_grpc

log = logging.getLogger(__name__)

RENEW_AT = 2 / 3
"""Renew once this fraction of the certificate's lifetime has passed."""
MIN_RENEW_WAIT_S = 60.0
"""Never renew more often than this (a short certificate is renewed at half its remaining time)."""
JOIN_RETRY_S = 120.0
"""How long a join keeps trying while Stratum is unreachable or busy."""
RETRIED = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
)


def add_arguments(p: argparse.ArgumentParser, prefix: str) -> None:
    """``--join-token``, ``--join-address`` and ``--cert-renewal``."""
    config.add_env_argument(
        p,
        prefix,
        "--join-token",
        default="",
        help="join token (cosmos agents join-token create) to get a certificate with when there is none "
        "or it expired; prefer the environment variable: a command line is visible to every user",
    )
    config.add_env_argument(
        p, prefix, "--join-address", default="", help="Stratum's token port (HOST:PORT), for --join-token"
    )
    config.add_env_argument(
        p,
        prefix,
        "--cert-renewal",
        default="auto",
        help="auto: renew the certificate through Stratum at 2/3 of its lifetime; off: certificates "
        "are renewed by something else (cert-manager, cosmos pki renew)",
    )


def usable(files: TlsFiles) -> bool:
    """Whether the certificate and key are present and the certificate has not expired."""
    if not files.cert.exists() or not files.key.exists():
        return False
    try:
        return pki.remaining(pki.load_cert(files.cert)) > datetime.timedelta(0)
    except errors.ConfigError:
        return False


def _write(files: TlsFiles, key: ec.EllipticCurvePrivateKey, chain_pem: str) -> x509.Certificate:
    """Key first, then the certificate, each written atomically (the key 0600)."""
    cert = x509.load_pem_x509_certificate(chain_pem.encode())
    pki.write_key(files.key, key)
    pki.write_file(files.cert, chain_pem.encode(), 0o644)
    return cert


async def ensure_joined(args: argparse.Namespace, security: Security) -> None:
    """Join with ``--join-token`` when the agent's certificate is missing or expired."""
    if not args.join_token:
        return
    if security.tls is None:
        raise errors.ConfigError("--join-token needs a place for the certificate: --pki-dir or --tls-*")
    if not args.join_address:
        raise errors.ConfigError("--join-token needs --join-address, Stratum's token port (HOST:PORT)")
    files = security.tls
    if usable(files):
        log.info(
            "agent certificate present; the join token is not used",
            extra={"fields": {"cert": str(files.cert)}},
        )
        return
    if not files.ca.exists():
        raise errors.ConfigError(
            f"joining needs the platform CA certificate at {files.ca} (ca.pem is public: copy it from "
            "the CA's directory, e.g. <data-dir>/pki/ca.pem of cosmos up)"
        )
    agent_id = args.agent_id or socket.gethostname()
    address = config.parse_target(args.join_address, setting="--join-address")
    await join_pool(address, args.join_token, agent_id, files)


async def join_pool(address: str, token: str, agent_id: str, files: TlsFiles) -> x509.Certificate:
    """Make a key, join through ``address`` with ``token`` as ``agent_id``, write key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    request = agent_service_pb2.JoinAgentRequest(
        request_id=uuid.uuid4().hex, token=token, agent_id=agent_id, csr_pem=join.make_csr(key, agent_id)
    )
    # Server authentication only: the agent has no certificate yet. Stratum is checked against the
    # CA file and must present the stratum role's name.
    creds = grpc.ssl_channel_credentials(root_certificates=files.ca.read_bytes())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOIN_RETRY_S
    delay = 1.0
    dial, extra = channels.dial_target(address)
    options = [*tls.server_name_options("stratum"), *extra]
    async with grpc.aio.secure_channel(dial, creds, options=options) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        while True:
            try:
                # The same request_id on every try: a join that went through is answered again.
                reply = await stub.JoinAgent(request, timeout=30)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIED or loop.time() + delay > deadline:
                    raise errors.ConfigError(
                        f"joining through {address} as {agent_id!r} failed: "
                        f"{exc.code().name}: {exc.details()}"
                    ) from exc
                log.warning(
                    "join failed; retrying",
                    extra={
                        "fields": {"code": exc.code().name, "details": exc.details(), "retry_in_s": delay}
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
    cert = _write(files, key, reply.certificate_chain_pem)
    log.info(
        "joined the pool",
        extra={"fields": {"agent_id": reply.agent_id, "expire_time": cert.not_valid_after_utc.isoformat()}},
    )
    return cert


def renewal_delay(cert: x509.Certificate, now: datetime.datetime) -> float:
    """Seconds until ``cert`` is to be renewed: at :data:`RENEW_AT` of its lifetime, but not sooner than
    :data:`MIN_RENEW_WAIT_S` (or half the time left, for a certificate shorter than that)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    due = (start + (end - start) * RENEW_AT - now).total_seconds()
    left = (end - now).total_seconds()
    return max(due, min(MIN_RENEW_WAIT_S, left / 2), 0.0)


async def renew_once(stratum: str, security: Security) -> x509.Certificate:
    """A new key and certificate for this agent through Stratum (mutual TLS as the current one)."""
    assert security.tls is not None
    key = ec.generate_private_key(ec.SECP256R1())
    subject = pki.subject_of(pki.load_cert(security.tls.cert))
    request = agent_service_pb2.RenewAgentCertificateRequest(
        request_id=uuid.uuid4().hex, csr_pem=join.make_csr(key, subject.name)
    )
    async with channels.connect(stratum, "stratum", security) as channel:
        reply = await agent_service_pb2_grpc.AgentServiceStub(channel).RenewAgentCertificate(
            request, timeout=30
        )
    return _write(security.tls, key, reply.certificate_chain_pem)


async def keep_renewed(stratum: str, security: Security, stopping: asyncio.Event) -> None:
    """Renew the agent's certificate at about 2/3 of each lifetime until ``stopping`` is set.

    Stops for good when Stratum does not issue certificates (no ``--agent-ca-dir``) or refuses this
    agent; retries other failures while the certificate lasts.
    """
    assert security.tls is not None
    files = security.tls
    retry: float | None = None
    while not stopping.is_set():
        try:
            cert = pki.load_cert(files.cert)
        except errors.ConfigError as exc:
            log.error(
                "cannot read the agent certificate; not renewing", extra={"fields": {"error": str(exc)}}
            )
            return
        delay = retry if retry is not None else renewal_delay(cert, wellknown.utcnow())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
            return
        try:
            new = await renew_once(stratum, security)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED):
                log.warning(
                    "Stratum does not renew this agent's certificate; renew it otherwise "
                    "(or run with --cert-renewal off)",
                    extra={"fields": {"code": exc.code().name, "details": exc.details()}},
                )
                return
            retry = _retry_delay(cert)
            log.warning(
                "certificate renewal failed; retrying",
                extra={"fields": {"code": exc.code().name, "details": exc.details(), "retry_in_s": retry}},
            )
            continue
        except (errors.ConfigError, OSError) as exc:
            retry = _retry_delay(cert)
            log.warning(
                "certificate renewal failed; retrying",
                extra={"fields": {"error": str(exc), "retry_in_s": retry}},
            )
            continue
        retry = None
        log.info(
            "agent certificate renewed",
            extra={"fields": {"cert": str(files.cert), "expire_time": new.not_valid_after_utc.isoformat()}},
        )


def _retry_delay(cert: x509.Certificate) -> float:
    """After a failed renewal: try again within a minute, sooner when little time is left."""
    return max(5.0, min(MIN_RENEW_WAIT_S, pki.remaining(cert).total_seconds() / 4))
