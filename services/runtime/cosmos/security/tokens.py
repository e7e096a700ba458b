"""Platform tokens: JWTs signed with the platform's Ed25519 key (PyJWT), for people and programs.

Claims: ``sub`` (who), ``tenant``, ``roles``, ``iat``/``exp`` (a token always expires), ``iss`` and
``aud`` (``cosmos``), ``jti``. A server verifies with the public key only; a verified token is cached
until it expires, so a signature is checked once per token, not once per call.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cosmos import errors
from cosmos.security import pki
from cosmos.security.principals import Principal, check_roles

ISSUER = "cosmos"
AUDIENCE = "cosmos"
ALGORITHM = "EdDSA"
PRIVATE_KEY = "token-key.pem"
PUBLIC_KEY = "token-key.pub.pem"
MAX_CACHED = 4096


def create_keypair(directory: Path) -> ed25519.Ed25519PrivateKey:
    """A new signing key in ``<dir>/token-key.pem`` (0600) and its public half beside it."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pki.write_file(directory / PRIVATE_KEY, private, 0o600)
    pki.write_file(directory / PUBLIC_KEY, public, 0o644)
    return key


def ensure_keypair(directory: Path) -> None:
    """The signing key pair in ``directory``, created on first use."""
    if not (directory / PRIVATE_KEY).exists():
        create_keypair(directory)


def load_private(path: Path) -> ed25519.Ed25519PrivateKey:
    """The signing key at ``path``."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise errors.ConfigError(f"{path}: not a readable token signing key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise errors.ConfigError(f"{path}: expected an Ed25519 private key")
    return key


def load_public(path: Path) -> ed25519.Ed25519PublicKey:
    """The verification key at ``path``."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise errors.ConfigError(f"{path}: not a readable token public key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise errors.ConfigError(f"{path}: expected an Ed25519 public key")
    return key


def create(
    key: ed25519.Ed25519PrivateKey,
    *,
    subject: str,
    tenant: str,
    roles: Iterable[str],
    ttl: datetime.timedelta,
) -> str:
    """A signed token for ``subject`` of ``tenant`` holding ``roles``, valid for ``ttl``."""
    checked = check_roles(roles)
    if not checked:
        raise errors.ConfigError("a token needs at least one role")
    if not tenant or any(c in tenant for c in ";=,/") or not subject:
        raise errors.ConfigError("a token needs a subject and a tenant (no ';', '=', ',' or '/')")
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "tenant": tenant,
        "roles": sorted(checked),
        "iat": now,
        "exp": now + int(ttl.total_seconds()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


class Verifier:
    """Checks tokens against the platform's public key, remembering good ones until they expire."""

    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        self.key = key
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    def verify(self, token: str) -> Principal:
        """The principal ``token`` proves; :class:`UnauthenticatedError` saying why not."""
        cached = self._cache.get(token)
        if cached is not None:
            if cached[0] > time.time():
                return cached[1]
            del self._cache[token]
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _refused("the token has expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise _refused("the token's signature is not the platform's") from exc
        except jwt.InvalidTokenError as exc:
            raise _refused(f"the token is not valid: {exc}") from exc
        roles = claims.get("roles")
        tenant = claims.get("tenant")
        if not isinstance(roles, list) or not isinstance(tenant, str) or not tenant:
            raise _refused("the token lacks tenant or roles")
        try:
            principal = Principal(
                "token", str(claims["sub"]), tenant, check_roles(map(str, roles)), via="token"
            )
        except errors.ConfigError as exc:
            raise _refused(str(exc)) from exc
        self._cache[token] = (float(claims["exp"]), principal)
        if len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return principal


def _refused(why: str) -> errors.UnauthenticatedError:
    return errors.UnauthenticatedError(
        why, reason=errors.Reason.ERROR_REASON_UNAUTHENTICATED, metadata={"credential": "token"}
    )
