"""Credentials for the servers a benchmark starts by hand (the embedded stack makes its own).

Since the security foundation every Cosmos server requires mutual TLS, or ``--insecure`` on loopback.
A benchmark that starts ``cosmos plato``/``stratum``/``agent`` itself makes a throwaway CA with
:class:`BenchPki` (the pattern of tests/support/security_harness.py), gives each server its certificate
(:meth:`BenchPki.server_args`, :meth:`BenchPki.agent_args`) and calls as the local admin
(:meth:`BenchPki.connect`). ``None`` instead of a :class:`BenchPki` means the insecure baseline:
servers get ``--insecure`` and clients dial plaintext, through the same :func:`channels.connect`, so
that an on/off comparison differs only in the security layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from cosmos.runtime import channels
from cosmos.security import pki
from cosmos.security.config import Security
from cosmos.security.tls import TlsFiles

SERVICES = ("plato", "stratum", "optimus", "nats")
ADMIN = "admin"
WORKER = "worker"
"""The step workers' certificate (a user with the worker role, as ``cosmos up`` issues it)."""


@dataclass(frozen=True)
class BenchPki:
    """A CA in ``directory`` with a certificate per service and the admin's (tenant default)."""

    directory: Path

    @classmethod
    def create(cls, directory: Path) -> BenchPki:
        """A fresh CA and the service and admin certificates under ``directory`` (made if missing)."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        authority = pki.Authority.create(directory)
        for name in SERVICES:
            authority.issue(pki.Paths.named(directory, name), pki.Subject(name, name))
        authority.issue(pki.Paths.named(directory, ADMIN), pki.Subject("user", ADMIN, "default", (ADMIN,)))
        authority.issue(
            pki.Paths.named(directory, WORKER), pki.Subject("user", WORKER, "default", ("worker",))
        )
        return cls(directory)

    def files(self, name: str) -> TlsFiles:
        """The CA, certificate and key of ``name`` (a service, ``admin`` or ``worker``)."""
        return TlsFiles.in_dir(self.directory, name)

    def server_args(self, name: str) -> list[str]:
        """Flags giving the server ``name`` (plato, stratum, optimus) its certificate."""
        return ["--pki-dir", str(self.directory), "--pki-name", name]

    def agent_args(self, agent_id: str) -> list[str]:
        """Flags giving an agent the certificate of ``agent_id`` (issued on first use)."""
        name = f"agent-{agent_id}"
        paths = pki.Paths.named(self.directory, name)
        if not paths.cert.exists():
            pki.Authority.load(self.directory).issue(paths, pki.Subject("agent", agent_id))
        return ["--pki-dir", str(self.directory), "--pki-name", name]

    @property
    def admin(self) -> Security:
        """The local admin as a client (tenant default, role admin)."""
        return Security(tls=TlsFiles.in_dir(self.directory, ADMIN))


def server_args(mesh: BenchPki | None, name: str) -> list[str]:
    """The security flags of server ``name``: its certificate, or ``--insecure`` for the baseline."""
    return ["--insecure"] if mesh is None else mesh.server_args(name)


def agent_args(mesh: BenchPki | None, agent_id: str) -> list[str]:
    """The security flags of agent ``agent_id``: its certificate, or ``--insecure`` for the baseline."""
    return ["--insecure"] if mesh is None else mesh.agent_args(agent_id)


def client(mesh: BenchPki | None) -> Security:
    """How the benchmark calls: as the admin, or plaintext for the baseline."""
    return Security(insecure=True) if mesh is None else mesh.admin


def connect(mesh: BenchPki | None, target: str, role: str) -> grpc.aio.Channel:
    """A channel to the ``role`` server at ``target``, the way Cosmos clients dial (``channels.connect``)."""
    return channels.connect(target, role, client(mesh))
