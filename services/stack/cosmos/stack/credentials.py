"""The embedded stack's dev CA and every certificate it needs, made on first run under ``<data-dir>/pki``.

``ca.pem`` (+ ``ca-key.pem``) is the dev CA; ``plato``, ``stratum``, ``optimus``, ``console`` and ``nats``
get server certificates, the local agent an agent certificate, and the local admin a user certificate
(tenant ``default``, role ``admin``): ``admin.pem`` and ``admin-key.pem``; local step workers (SDK handlers)
connect to NATS with ``worker.pem`` (role ``worker``). ``token-key.pem`` signs platform tokens
(``cosmos token create``), ``secrets.key`` encrypts job secrets at rest. Certificates near their end
are renewed at every start.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cosmos.security import pki, secrets, tokens
from cosmos.security.config import Security
from cosmos.security.tls import TlsFiles

ADMIN = "admin"
ADMIN_TENANT = "default"
WORKER = "worker"
"""File name of the local step workers' certificate (a user with the worker role): NATS maps it to the
worker user, which may only pull step tasks and report on them."""
WORKER_IDENTITY = pki.spiffe_id("user", WORKER)


@dataclasses.dataclass(frozen=True)
class StackCredentials:
    """Where the stack's credentials are."""

    directory: Path
    """``<data-dir>/pki`` (0700)."""
    agent_name: str
    """File name (and agent id) of the local agent's certificate."""

    @property
    def admin(self) -> Security:
        """The local admin, as a client."""
        return Security(tls=TlsFiles.in_dir(self.directory, ADMIN))

    def files(self, name: str) -> TlsFiles:
        """The CA, certificate and key of ``name``."""
        return TlsFiles.in_dir(self.directory, name)


def prepare(data_dir: Path, agent_id: str, *, ttl: str = "24h") -> StackCredentials:
    """Create the CA and certificates that are missing or near their end; keys 0600, the dir 0700."""
    directory = (data_dir / "pki").absolute()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    authority = pki.Authority.ensure(directory)
    lifetime = pki.parse_ttl(ttl)
    pki.issue_all(
        authority,
        directory,
        [
            ("plato", pki.Subject("plato", "plato")),
            ("stratum", pki.Subject("stratum", "stratum")),
            ("optimus", pki.Subject("optimus", "optimus")),
            ("console", pki.Subject("console", "console")),
            ("nats", pki.Subject("nats", "nats")),
            ("agent", pki.Subject("agent", agent_id)),
            (ADMIN, pki.Subject("user", ADMIN, tenant=ADMIN_TENANT, user_roles=("admin",))),
            (WORKER, pki.Subject("user", WORKER, tenant=ADMIN_TENANT, user_roles=("worker",))),
        ],
        lifetime,
    )
    tokens.ensure_keypair(directory)
    secrets.ensure_key_file(directory / secrets.KEY_FILE)
    return StackCredentials(directory, "agent")
