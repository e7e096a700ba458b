"""Task tokens: proof that a step result or heartbeat comes from whoever was given that attempt's task.

Plato puts into every :class:`StepTask` an HMAC-SHA256, by a key only Plato holds, over the workflow
id, step id and attempt. Workers echo it in their results and heartbeats (over NATS or
``StepService``); Plato applies a report only when the token is right for the attempt it names, and
the state machine applies it only when that attempt is still the current one. So even workers sharing
NATS credentials can complete only tasks they received, and nobody can forge one.

Every Plato replica of a deployment must read the same key file: ``--task-key`` (by default
``task.key`` in Plato's ``--pki-dir``, created 0600 on first start).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from cosmos import errors

log = logging.getLogger(__name__)

KEY_FILE = "task.key"
"""File name of the key in Plato's PKI directory."""
KEY_BYTES = 32


class TaskKey:
    """Signs and checks task tokens."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise errors.ConfigError("task key: expected at least 16 bytes")
        self._key = key

    def token(self, workflow_id: str, step_id: str, attempt: int) -> bytes:
        """The token of one attempt."""
        # Length-prefixed fields: no two (workflow, step, attempt) triples share a message.
        message = b"".join(
            len(part).to_bytes(4, "big") + part
            for part in (workflow_id.encode(), step_id.encode(), str(attempt).encode())
        )
        return hmac.new(self._key, b"cosmos-task-v1\x00" + message, hashlib.sha256).digest()

    def verify(self, workflow_id: str, step_id: str, attempt: int, token: bytes) -> bool:
        """Whether ``token`` is the token of this attempt (constant time)."""
        return hmac.compare_digest(self.token(workflow_id, step_id, attempt), token)


def load_or_create(path: Path) -> TaskKey:
    """The key in ``path``, created (random, 0600) when missing.

    Creation links a complete file into place, so replicas starting together agree on one key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            log.info("task key created", extra={"fields": {"path": str(path)}})
        except FileExistsError:
            pass  # another replica won; use its key
        finally:
            tmp.unlink(missing_ok=True)
    try:
        return TaskKey(path.read_bytes())
    except OSError as exc:
        raise errors.ConfigError(f"task key {path}: {exc.strerror or exc}") from exc


def ephemeral() -> TaskKey:
    """A random key for this process only (``--insecure`` development without a key file)."""
    log.warning("no --task-key: using a random task key; tasks outstanding at a restart will be refused")
    return TaskKey(secrets.token_bytes(KEY_BYTES))
