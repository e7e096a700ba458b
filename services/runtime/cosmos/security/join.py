"""Agent join tokens and certificate signing requests: the pure parts of joining an agent to the pool.

A join token is ``cjt_<id>.<secret>``: the id names the stored record (it is not secret), the secret
is 32 random bytes that only the token's holder knows; Stratum keeps SHA-256 of id and secret and
compares in constant time. A record grants a bounded number of joins until it expires, optionally for
one agent id only. Checking a token against its record (:func:`check`), spending a use
(:func:`spend`) and reading a CSR (:func:`public_key_of`) are here, free of I/O, so that Stratum's
store (:mod:`cosmos.stratum.enrollment`) only adds the compare-and-set around them.

Refusals of a token are :class:`UnauthenticatedError` with reason ``ERROR_REASON_JOIN_TOKEN_INVALID``
and a ``cause``; a wrong secret reads exactly like an unknown id, so that guessing ids teaches nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import re
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cosmos import errors
from cosmos.stratum.v1 import join_token_pb2

PREFIX = "cjt_"
ID_BYTES = 8
SECRET_BYTES = 32
DEFAULT_USES = 1
MAX_USES = 100
DEFAULT_TTL = datetime.timedelta(hours=1)
MAX_TTL = datetime.timedelta(days=7)
MAX_TOKEN_CHARS = 200
MAX_CSR_BYTES = 8192
MAX_DESCRIPTION = 200
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
"""Key types a CSR may carry: the EC curves every gRPC TLS stack speaks (pki issues P-256)."""

_TOKEN = re.compile(r"cjt_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
REASON = errors.Reason.ERROR_REASON_JOIN_TOKEN_INVALID


@dataclasses.dataclass(frozen=True)
class Token:
    """A join token split into its parts."""

    token_id: str
    """Public part: the key of the stored record."""
    secret: str
    """Secret part: only its hash is stored."""

    def __str__(self) -> str:
        return f"{PREFIX}{self.token_id}.{self.secret}"


def token_id_for(request_id: str) -> str:
    """The token id a create request makes: derived from its ``request_id``, so a retry cannot create a
    second token."""
    return hashlib.sha256(f"cosmos-join-token:{request_id}".encode()).hexdigest()[: ID_BYTES * 2]


def generate(token_id: str) -> Token:
    """A new token with ``token_id`` and a fresh random secret."""
    return Token(token_id, secrets.token_urlsafe(SECRET_BYTES))


def parse(text: str) -> Token:
    """The parts of ``text``; :class:`UnauthenticatedError` (cause ``malformed``) when it is no token."""
    match = _TOKEN.fullmatch(text.strip()) if len(text) <= MAX_TOKEN_CHARS else None
    if match is None:
        raise refusal("malformed", "the join token is malformed: expected cjt_<16 hex>.<43 base64url>")
    return Token(match[1], match[2])


def secret_hash(token: Token) -> bytes:
    """What Stratum stores instead of the secret (the id is bound in, so a hash is useless elsewhere)."""
    return hashlib.sha256(f"{token.token_id}.{token.secret}".encode()).digest()


def refusal(cause: str, message: str, **metadata: str) -> errors.UnauthenticatedError:
    """The error refusing a join token, with its ``cause``."""
    return errors.UnauthenticatedError(message, reason=REASON, metadata={"cause": cause, **metadata})


def new_record(
    token: Token,
    *,
    uses: int,
    ttl: datetime.timedelta,
    agent_id: str,
    creator: str,
    description: str,
    now: datetime.datetime,
) -> join_token_pb2.JoinTokenRecord:
    """The record of a new token (limits already checked by :func:`check_limits`)."""
    record = join_token_pb2.JoinTokenRecord(secret_hash=secret_hash(token))
    view = record.token
    view.token_id = token.token_id
    view.agent_id = agent_id
    view.uses = uses
    view.uses_left = uses
    view.creator = creator
    view.description = description
    view.create_time.FromDatetime(now)
    view.expire_time.FromDatetime(now + ttl)
    return record


def check_limits(
    uses: int, ttl: datetime.timedelta | None, description: str
) -> tuple[int, datetime.timedelta]:
    """``(uses, ttl)`` with defaults applied; :class:`InvalidArgumentError` naming a field out of bounds."""
    violations = []
    if uses > MAX_USES:
        violations.append(errors.FieldViolation("uses", f"{uses} is above the limit of {MAX_USES}"))
    if ttl is not None and ttl <= datetime.timedelta(0):
        violations.append(errors.FieldViolation("ttl", "must be positive"))
    elif ttl is not None and ttl > MAX_TTL:
        violations.append(errors.FieldViolation("ttl", f"{ttl} is above the limit of {MAX_TTL}"))
    if len(description) > MAX_DESCRIPTION:
        violations.append(errors.FieldViolation("description", f"at most {MAX_DESCRIPTION} characters"))
    if violations:
        raise errors.InvalidArgumentError(
            "; ".join(f"{v.field}: {v.description}" for v in violations), violations=violations
        )
    return uses or DEFAULT_USES, ttl or DEFAULT_TTL


def redemption(request_id: str, agent_id: str, public_key: ec.EllipticCurvePublicKey) -> bytes:
    """What a join leaves in its token's record, so that the same join retried is recognised."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(request_id.encode() + b"\0" + agent_id.encode() + b"\0" + der).digest()


def check(
    record: join_token_pb2.JoinTokenRecord | None,
    token: Token,
    agent_id: str,
    now: datetime.datetime,
    redeemed: bytes = b"",
) -> bool:
    """Whether ``token`` may join ``agent_id`` now: True when ``redeemed`` is a join it already made
    (a retry: answer again, spend nothing), False when a use is to be spent; refusals otherwise."""
    if record is None or not hmac.compare_digest(record.secret_hash, secret_hash(token)):
        # An unknown id and a wrong secret read the same: nothing is learnt by guessing ids.
        raise refusal("unknown", "unknown join token (deleted, never created, or the secret is wrong)")
    view = record.token
    if now >= view.expire_time.ToDatetime(datetime.UTC):
        raise refusal("expired", f"join token {view.token_id} expired", token_id=view.token_id)
    if view.agent_id and view.agent_id != agent_id:
        raise refusal(
            "agent_mismatch",
            f"join token {view.token_id} is for agent {view.agent_id!r}, not {agent_id!r}",
            token_id=view.token_id,
        )
    if redeemed and redeemed in record.redemptions:
        return True
    if view.uses_left == 0:
        raise refusal("used_up", f"join token {view.token_id} is used up", token_id=view.token_id)
    return False


def spend(record: join_token_pb2.JoinTokenRecord, agent_id: str, redeemed: bytes) -> None:
    """Take one use of ``record`` for ``agent_id`` (after :func:`check` said a use is to be spent)."""
    record.token.uses_left -= 1
    record.token.joined_agent_ids.append(agent_id)
    record.redemptions.append(redeemed)


def public_key_of(csr_pem: str, field: str = "csr_pem") -> ec.EllipticCurvePublicKey:
    """The public key of a PEM CSR whose signature is valid and whose key is an allowed EC curve;
    :class:`InvalidArgumentError` naming ``field`` otherwise. Nothing else in the CSR is used."""
    data = csr_pem.encode()

    def invalid(why: str) -> errors.InvalidArgumentError:
        return errors.invalid(field, why, reason=errors.Reason.ERROR_REASON_INVALID_CSR)

    if not data:
        raise invalid("a PEM certificate signing request is required")
    if len(data) > MAX_CSR_BYTES:
        raise invalid(f"{len(data)} bytes is above the limit of {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise invalid(f"not a PEM certificate signing request ({exc})") from exc
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ALLOWED_CURVES):
        raise invalid("the key must be EC P-256 or P-384")
    if not csr.is_signature_valid:
        raise invalid("its signature is not valid (it must be signed by the key it carries)")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, agent_id: str) -> str:
    """A PEM CSR over ``key`` naming ``agent_id`` (the name is informative: Stratum decides the identity)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def chain_pem(cert: x509.Certificate, issuer: x509.Certificate) -> str:
    """``cert`` as PEM, followed by ``issuer`` when that is an intermediate (not self-signed), so a
    peer that trusts only the root can build the chain."""
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if issuer.issuer != issuer.subject:
        pem += issuer.public_bytes(serialization.Encoding.PEM)
    return pem.decode()
