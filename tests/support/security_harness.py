"""Credentials for tests: one throwaway CA per test session, certificates and tokens on demand.

Servers started by tests get ``--pki-dir``/``--pki-name`` (:func:`service_args`), agents an agent
certificate of their id (:func:`agent_args`), and test clients call as the local admin
(:func:`channel`) or as any user or token they ask for.
"""

from __future__ import annotations

import atexit
import datetime
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from cosmos.plato import task_tokens
from cosmos.runtime import jetstream
from cosmos.runtime.config import Address
from cosmos.security import pki, secrets, tls, tokens
from cosmos.security.tls import TlsFiles
from cosmos.stack import natsd

_dir: Path | None = None
SERVICES = ("plato", "stratum", "optimus", "console", "nats")


def pki_dir() -> Path:
    """The session's PKI: a CA, a certificate per service, the admin's, the token key pair and the
    secrets key (Stratum finds ``secrets.key`` through ``--pki-dir``)."""
    global _dir
    if _dir is None:
        directory = Path(tempfile.mkdtemp(prefix="cosmos-test-pki-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        authority = pki.Authority.create(directory)
        for name in SERVICES:
            authority.issue(pki.Paths.named(directory, name), pki.Subject(name, name))
        authority.issue(
            pki.Paths.named(directory, "admin"), pki.Subject("user", "admin", "default", ("admin",))
        )
        tokens.create_keypair(directory)
        secrets.create_key_file(directory / secrets.KEY_FILE)
        _dir = directory
    return _dir


def service_args(name: str) -> list[str]:
    """Flags giving the server ``name`` (plato, stratum, optimus) its certificate."""
    return ["--pki-dir", str(pki_dir()), "--pki-name", name]


def agent_args(agent_id: str) -> list[str]:
    """Flags giving an agent the certificate of ``agent_id`` (issued on first use)."""
    directory = pki_dir()
    name = f"agent-{agent_id}"
    paths = pki.Paths.named(directory, name)
    if not paths.cert.exists():
        pki.Authority.load(directory).issue(paths, pki.Subject("agent", agent_id))
    return ["--pki-dir", str(directory), "--pki-name", name]


def user(name: str, tenant: str, *roles: str) -> TlsFiles:
    """A user certificate (issued on first use) of ``tenant`` holding ``roles``."""
    directory = pki_dir()
    file_name = f"user-{name}-{tenant}-{'-'.join(roles) or 'none'}"
    paths = pki.Paths.named(directory, file_name)
    if not paths.cert.exists():
        pki.Authority.load(directory).issue(paths, pki.Subject("user", name, tenant, tuple(roles)))
    return TlsFiles.in_dir(directory, file_name)


def workload(role: str, name: str) -> TlsFiles:
    """A workload certificate (optimus, plato, agent, ...) named ``name``."""
    directory = pki_dir()
    file_name = f"{role}-{name}"
    paths = pki.Paths.named(directory, file_name)
    if not paths.cert.exists():
        pki.Authority.load(directory).issue(paths, pki.Subject(role, name))
    return TlsFiles.in_dir(directory, file_name)


def admin() -> TlsFiles:
    """The local admin (tenant default, role admin)."""
    return TlsFiles.in_dir(pki_dir(), "admin")


def token(tenant: str, *roles: str, ttl: float = 600.0, subject: str = "") -> str:
    """A platform token signed with the session's key."""
    key = tokens.load_private(pki_dir() / tokens.PRIVATE_KEY)
    return tokens.create(
        key,
        subject=subject or f"{tenant}-bot",
        tenant=tenant,
        roles=roles,
        ttl=datetime.timedelta(seconds=ttl),
    )


def channel(target: str, files: TlsFiles | None = None) -> grpc.aio.Channel:
    """A mutual-TLS channel to ``target`` as ``files`` (default: the admin)."""
    return grpc.aio.secure_channel(target, tls.channel_credentials(files or admin()))


def token_channel(target: str, bearer: str) -> grpc.aio.Channel:
    """A TLS channel to a token port presenting ``bearer``."""
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=(pki_dir() / "ca.pem").read_bytes()),
        grpc.access_token_call_credentials(bearer),
    )
    return grpc.aio.secure_channel(target, creds)


def anonymous_channel(target: str) -> grpc.aio.Channel:
    """A TLS channel that trusts the CA but presents no certificate."""
    ca = (pki_dir() / "ca.pem").read_bytes()
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca))


def sync_channel(
    target: str, files: TlsFiles | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A blocking mutual-TLS channel to ``target``."""
    return grpc.secure_channel(target, tls.channel_credentials(files or admin()), options=options)


def grpcurl_args(files: TlsFiles | None = None) -> list[str]:
    """grpcurl's TLS flags for ``files`` (default: the admin)."""
    files = files or admin()
    return ["-cacert", str(files.ca), "-cert", str(files.cert), "-key", str(files.key)]


WORKER = "worker"
"""User name of the step workers' certificate tests run SDK workers with (tenant default, role worker)."""


def worker_tls() -> TlsFiles:
    """The step workers' certificate: NATS maps it to the worker user (pull tasks, report, nothing more)."""
    return user(WORKER, "default", "worker")


def nats_argv(listen: Address, store_dir: Path) -> list[str]:
    """The locked-down nats-server of the stack: TLS with the session CA, users plato, stratum, worker."""
    worker_tls()
    users = natsd.default_users([pki.spiffe_id("user", WORKER)])
    return natsd.nats_server_argv(listen, store_dir, tls=TlsFiles.in_dir(pki_dir(), "nats"), users=users)


def nats_options(files: TlsFiles | None = None) -> dict[str, Any]:
    """``nats.connect`` keyword arguments connecting as ``files`` (default: Plato, which may read its
    streams and buckets)."""
    return jetstream.tls_options(files or TlsFiles.in_dir(pki_dir(), "plato"))


def task_token(workflow_id: str, step_id: str, attempt: int) -> bytes:
    """The task token Plato gives that attempt (Plato started with :func:`service_args` keeps its key in
    the session's PKI dir): for tests that play a gRPC step handler, or replay an old attempt."""
    key = task_tokens.load_or_create(pki_dir() / task_tokens.KEY_FILE)
    return key.token(workflow_id, step_id, attempt)
