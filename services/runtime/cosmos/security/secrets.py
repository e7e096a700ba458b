"""Job secrets at rest: envelope encryption under the platform's secret keys (AES-256-GCM).

Each sealed job gets a fresh random data key; the secrets (a serialized ``SecretValues``) are encrypted
with it, and the data key is wrapped by the keyring's primary key. Both encryptions bind the job id as
associated data, so a sealed blob copied onto another job's record does not open.

The key file holds one key per line, ``<key-id> <base64 of 32 bytes>``; ``#`` starts a comment. The
first key is the primary: it seals. Every listed key unseals, so a key is rotated by putting a new one
first (:func:`rotate_key_file`) and removing the old line only once no stored job needs it. The file
must be readable by its owner only (0600): a key file open to group or others is refused.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets as random
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cosmos import errors
from cosmos.runtime import wellknown
from cosmos.security import pki
from cosmos.stratum.v1 import job_pb2

KEY_FILE = "secrets.key"
"""Name of the key file in a PKI dir (``cosmos up`` makes ``<data-dir>/pki/secrets.key``)."""
KEY_BYTES = 32
NONCE_BYTES = 12
REDACTED = "[REDACTED]"
"""What a secret's value reads as wherever it is shown (responses, the stored spec)."""
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Domain separation: a wrapped key and a ciphertext can never stand in for each other.
_WRAP_AAD = b"cosmos/secrets/data-key\0"
_DATA_AAD = b"cosmos/secrets/values\0"


class SecretsError(errors.CosmosError):
    """Sealed secrets cannot be opened: unknown key id, or tampered or moved to another job."""


class Keyring:
    """The platform's secret keys: the first seals, any of them unseals."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise errors.ConfigError("a secrets keyring needs at least one key")
        ids = [key_id for key_id, _ in keys]
        if len(set(ids)) != len(ids):
            raise errors.ConfigError(f"secrets keyring: duplicate key ids in {ids}")
        for key_id, key in keys:
            if not _KEY_ID.match(key_id) or len(key) != KEY_BYTES:
                raise errors.ConfigError(f"secrets keyring: key {key_id!r} must be {KEY_BYTES} bytes")
        self.primary = ids[0]
        """Id of the key that seals."""
        self._keys = dict(keys)

    @property
    def key_ids(self) -> list[str]:
        """Every key id, primary first."""
        return list(self._keys)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """The keyring in ``path``; :class:`ConfigError` if it is missing, open to others or malformed."""
        try:
            info = path.stat()
            text = path.read_text()
        except OSError as exc:
            raise errors.ConfigError(f"{path}: cannot read the secrets key file ({exc.strerror})") from exc
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise errors.ConfigError(
                f"{path}: the secrets key file is open to group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it"
            )
        keys: list[tuple[str, bytes]] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            try:
                if len(parts) != 2 or not _KEY_ID.match(parts[0]):
                    raise ValueError
                key = base64.b64decode(parts[1], validate=True)
            except (ValueError, binascii.Error):
                # Never echo the line: it may hold a key.
                raise errors.ConfigError(
                    f"{path}:{number}: expected '<key-id> <base64 of {KEY_BYTES} bytes>'"
                ) from None
            if len(key) != KEY_BYTES:
                raise errors.ConfigError(f"{path}:{number}: key {parts[0]!r} is not {KEY_BYTES} bytes")
            keys.append((parts[0], key))
        if not keys:
            raise errors.ConfigError(f"{path}: no key in the secrets key file")
        return cls(keys)

    def seal(self, values: Mapping[str, str], *, job_id: str) -> job_pb2.SealedSecrets:
        """``values`` encrypted for ``job_id``'s record under a fresh data key."""
        data_key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        plaintext = job_pb2.SecretValues(values=dict(values)).SerializeToString(deterministic=True)
        return job_pb2.SealedSecrets(
            key_id=self.primary,
            wrapped_key=_encrypt(self._keys[self.primary], data_key, _WRAP_AAD + self._aad(job_id)),
            ciphertext=_encrypt(data_key, plaintext, _DATA_AAD + self._aad(job_id)),
        )

    def unseal(self, sealed: job_pb2.SealedSecrets, *, job_id: str) -> dict[str, str]:
        """The values :meth:`seal` sealed for ``job_id``; :class:`SecretsError` if they do not open."""
        key = self._keys.get(sealed.key_id)
        if key is None:
            raise SecretsError(
                f"job {job_id!r}: its secrets are sealed with key {sealed.key_id!r}, which is not in the "
                f"keyring (has {', '.join(self._keys)})"
            )
        try:
            data_key = _decrypt(key, sealed.wrapped_key, _WRAP_AAD + self._aad(job_id))
            plaintext = _decrypt(data_key, sealed.ciphertext, _DATA_AAD + self._aad(job_id))
        except (InvalidTag, ValueError) as exc:
            raise SecretsError(
                f"job {job_id!r}: its sealed secrets do not open (tampered, or sealed for another job)"
            ) from exc
        return dict(job_pb2.SecretValues.FromString(plaintext).values)

    @staticmethod
    def _aad(job_id: str) -> bytes:
        return job_id.encode()


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) <= NONCE_BYTES:
        raise ValueError("sealed blob too short")
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


def new_key_id() -> str:
    """A fresh key id: the date (so rotations read in order) and a random suffix."""
    today = wellknown.utcnow().strftime("%Y%m%d")
    return f"{today}-{random.token_hex(4)}"


def _key_line(key_id: str) -> str:
    return f"{key_id} {base64.b64encode(AESGCM.generate_key(bit_length=KEY_BYTES * 8)).decode()}\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 from the first byte."""
    pki.write_file(path, text.encode(), 0o600)


def create_key_file(path: Path, key_id: str = "") -> str:
    """A new key file at ``path`` (0600) holding one random key; returns its id. Never overwrites."""
    if path.exists():
        raise errors.ConfigError(f"{path} exists; rotate it instead of replacing it (jobs need its keys)")
    key_id = key_id or new_key_id()
    if not _KEY_ID.match(key_id):
        raise errors.ConfigError(f"key id {key_id!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    _write_private(path, _key_line(key_id))
    return key_id


def ensure_key_file(path: Path) -> None:
    """The key file at ``path``, created on first use (the embedded stack)."""
    if not path.exists():
        create_key_file(path)


def rotate_key_file(path: Path, key_id: str = "") -> str:
    """Put a new primary key first in ``path``, keeping the others for unsealing; returns its id."""
    keyring = Keyring.load(path)  # refuses a malformed or open file before touching it
    key_id = key_id or new_key_id()
    if not _KEY_ID.match(key_id) or key_id in keyring.key_ids:
        raise errors.ConfigError(f"key id {key_id!r} is invalid or already in {path}")
    _write_private(path, _key_line(key_id) + path.read_text())
    return key_id
