"""Agents joining the pool with join tokens, and renewing their certificates: Stratum's side.

An admin creates a join token (``PoolService.CreateJoinToken``); Stratum stores a hash of its secret
in its own KV bucket (``stratum-join-tokens``). A new agent, which has no certificate yet, calls
``AgentService.JoinAgent`` on the token port with the token, its agent id and a CSR over a key it
made itself; Stratum checks the token, spends one use with a KV compare-and-set (two Stratum
processes cannot both spend the last use), and signs an agent certificate for that id with the CA
of ``--agent-ca-dir``. A joined agent renews over its mutual-TLS channel
(``AgentService.RenewAgentCertificate``), for its own identity only. Revoked agent ids can do
neither.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import stat
import time
from pathlib import Path

import nats.js.errors
from google.protobuf.message import DecodeError
from nats.js.kv import KeyValue

from cosmos import errors
from cosmos.runtime import kvscan, paging, wellknown
from cosmos.security import join, pki
from cosmos.security.principals import Principal
from cosmos.stratum.store import JOIN_TOKENS_BUCKET, JobStore
from cosmos.stratum.v1 import agent_service_pb2, join_token_pb2, pool_service_pb2

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 10
"""Compare-and-set retries of one join before it answers ABORTED (only under heavy contention)."""


def load_authority(directory: Path) -> pki.Authority:
    """The CA of ``--agent-ca-dir`` (``ca.pem`` + ``ca-key.pem``); a key readable by group or others
    stops the start: whoever reads it can mint any identity."""
    key = pki.Paths.named(directory, "ca").key
    try:
        mode = os.stat(key).st_mode
    except OSError as exc:
        raise errors.ConfigError(f"--agent-ca-dir: {key}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise errors.ConfigError(f"--agent-ca-dir: {key} is readable by group or others; chmod 600 it")
    return pki.Authority.load(directory)


@dataclasses.dataclass
class RateLimiter:
    """Token buckets: one per caller address and one for everyone, refilled continuously."""

    burst: float = 30.0
    """Calls one address may make at once."""
    rate: float = 0.5
    """Calls per second an address earns back."""
    total_burst: float = 300.0
    """Calls all addresses together may make at once."""
    total_rate: float = 20.0
    """Calls per second all addresses together earn back."""
    _levels: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def allow(self, key: str, now: float) -> bool:
        """Take one call for ``key`` at ``now`` (monotonic seconds); False when over either limit."""
        total = self._level("", now, self.total_burst, self.total_rate)
        mine = self._level(key, now, self.burst, self.rate)
        if total < 1 or mine < 1:
            return False
        self._levels[""] = (total - 1, now)
        self._levels[key] = (mine - 1, now)
        if len(self._levels) > 10_000:
            # Addresses whose bucket refilled are the same as never seen: forget them.
            full = [
                k for k, (level, at) in self._levels.items() if level + (now - at) * self.rate >= self.burst
            ]
            for k in full:
                self._levels.pop(k, None)
        return True

    def _level(self, key: str, now: float, burst: float, rate: float) -> float:
        level, at = self._levels.get(key, (burst, now))
        return min(burst, level + (now - at) * rate)


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:1.2.3.4:5678`` → ``ipv4:1.2.3.4``)."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def _check_agent_id(agent_id: str, field: str = "agent_id") -> None:
    try:
        pki.check_name(agent_id)
    except errors.ConfigError as exc:
        raise errors.invalid(field, str(exc)) from exc


class Enrollment:
    """Join tokens and agent certificates; ``authority`` None means this pool does not issue them."""

    def __init__(
        self,
        store: JobStore,
        revoked: set[str],
        authority: pki.Authority | None,
        cert_ttl: datetime.timedelta = pki.DEFAULT_TTL,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.store = store
        self.revoked = revoked
        self.authority = authority
        self.cert_ttl = cert_ttl
        self.limiter = limiter or RateLimiter()

    @property
    def tokens(self) -> KeyValue:
        """The join tokens bucket."""
        return self.store.join_tokens

    # ---------------------------------------------------------------------------------------------
    # Tokens (PoolService)

    async def create(
        self, request: pool_service_pb2.CreateJoinTokenRequest, caller: Principal
    ) -> pool_service_pb2.CreateJoinTokenResponse:
        """A new token; its secret is in the answer only."""
        errors.require(request.request_id, "request_id", "must not be empty")
        if request.agent_id:
            _check_agent_id(request.agent_id)
        ttl = request.ttl.ToTimedelta() if request.HasField("ttl") else None
        uses, lifetime = join.check_limits(request.uses, ttl, request.description)
        token = join.generate(join.token_id_for(request.request_id))
        record = join.new_record(
            token,
            uses=uses,
            ttl=lifetime,
            agent_id=request.agent_id,
            creator=caller.identity,
            description=request.description,
            now=wellknown.utcnow(),
        )
        try:
            await self.tokens.create(token.token_id, record.SerializeToString())
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise errors.AlreadyExistsError(
                f"a join token was already made for request_id {request.request_id!r}; its secret was "
                "shown once: create another with a new request_id",
                reason=errors.Reason.ERROR_REASON_REQUEST_ID_REUSED,
                metadata={"token_id": token.token_id},
            ) from exc
        log.info(
            "join token created",
            extra={"fields": {"token_id": token.token_id, "uses": uses, "agent_id": request.agent_id,
                              "expire_time": record.token.expire_time.ToJsonString()}},
        )  # fmt: skip
        return pool_service_pb2.CreateJoinTokenResponse(token=str(token), join_token=record.token)

    async def list(
        self, request: pool_service_pb2.ListJoinTokensRequest
    ) -> pool_service_pb2.ListJoinTokensResponse:
        """Every stored token (no secrets), soonest to expire first."""
        page = paging.parse(request.page_size, request.page_token)
        keys = await kvscan.keys(self.store.js, JOIN_TOKENS_BUCKET, self.tokens)
        views = []
        for key in keys:
            found = await self._read(key)
            if found is not None:
                views.append(found[0].token)
        views.sort(key=lambda v: (v.expire_time.ToNanoseconds(), v.token_id))
        chunk, next_token = paging.slice_page(views, page)
        return pool_service_pb2.ListJoinTokensResponse(join_tokens=chunk, next_page_token=next_token)

    async def delete(
        self, request: pool_service_pb2.DeleteJoinTokenRequest
    ) -> pool_service_pb2.DeleteJoinTokenResponse:
        """Forget a token: it cannot be used from then on."""
        errors.require(request.request_id, "request_id", "must not be empty")
        errors.require(request.token_id, "token_id", "must not be empty")
        if await self._read(request.token_id) is None:
            raise errors.NotFoundError(
                f"no join token {request.token_id!r}",
                reason=errors.Reason.ERROR_REASON_JOIN_TOKEN_NOT_FOUND,
                metadata={"token_id": request.token_id},
            )
        await self.tokens.delete(request.token_id)
        log.info("join token deleted", extra={"fields": {"token_id": request.token_id}})
        return pool_service_pb2.DeleteJoinTokenResponse(token_id=request.token_id)

    async def _read(self, token_id: str) -> tuple[join_token_pb2.JoinTokenRecord, int] | None:
        """The record of ``token_id`` and its revision, or None (a record that does not parse is
        logged and taken as absent: one garbage key must not break listings or joins)."""
        if not token_id or len(token_id) > 64 or not token_id.isalnum():
            return None
        try:
            entry = await self.tokens.get(token_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        try:
            record = join_token_pb2.JoinTokenRecord.FromString(entry.value or b"")
        except DecodeError:
            record = None
        if record is None or record.token.token_id != token_id:
            log.warning("unreadable join token record skipped", extra={"fields": {"key": token_id}})
            return None
        return record, int(entry.revision or 0)

    # ---------------------------------------------------------------------------------------------
    # Certificates (AgentService)

    def _authority(self) -> pki.Authority:
        if self.authority is None:
            raise errors.FailedPreconditionError(
                "this pool does not issue agent certificates (Stratum has no --agent-ca-dir)",
                reason=errors.Reason.ERROR_REASON_JOIN_NOT_CONFIGURED,
            )
        return self.authority

    async def _refuse_revoked(self, agent_id: str) -> None:
        # The KV too: another Stratum process may have revoked the agent since this one started.
        if agent_id in self.revoked or await self.store.is_revoked(agent_id):
            raise errors.PermissionDeniedError(
                f"agent {agent_id!r} is revoked",
                reason=errors.Reason.ERROR_REASON_AGENT_REVOKED,
                metadata={"agent_id": agent_id},
            )

    async def join(
        self, request: agent_service_pb2.JoinAgentRequest, peer: str
    ) -> agent_service_pb2.JoinAgentResponse:
        """Check the token, spend a use, sign an agent certificate for ``request.agent_id``."""
        try:
            return await self._join(request, peer)
        except errors.RpcError as exc:
            log.warning(
                "agent join refused",
                extra={"fields": {"agent_id": request.agent_id[:128], "peer": peer, "code": exc.code.name,
                                  "reason": exc.reason, "cause": exc.metadata.get("cause", ""),
                                  "token_id": exc.metadata.get("token_id", "")}},
            )  # fmt: skip
            raise

    async def _join(
        self, request: agent_service_pb2.JoinAgentRequest, peer: str
    ) -> agent_service_pb2.JoinAgentResponse:
        authority = self._authority()
        if not self.limiter.allow(peer_host(peer), time.monotonic()):
            raise errors.ResourceExhaustedError("too many join attempts from this address; retry in a minute")
        token = join.parse(request.token)  # the token is the caller's credential: checked first
        errors.require(request.request_id, "request_id", "must not be empty")
        _check_agent_id(request.agent_id)
        public_key = join.public_key_of(request.csr_pem)
        redeemed = join.redemption(request.request_id, request.agent_id, public_key)
        checked_revoked = False
        for _ in range(CAS_ATTEMPTS):
            found = await self._read(token.token_id)
            record, revision = found if found is not None else (None, 0)
            retry = join.check(record, token, request.agent_id, wellknown.utcnow(), redeemed)
            # Only a valid token learns whether its agent id is revoked; checked before a use is spent.
            if not checked_revoked:
                await self._refuse_revoked(request.agent_id)
                checked_revoked = True
            if retry:
                break  # a retry of a join already made: answer it again, spend nothing
            assert record is not None
            join.spend(record, request.agent_id, redeemed)
            try:
                await self.tokens.update(token.token_id, record.SerializeToString(), last=revision)
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another join (maybe on another Stratum) spent a use first: look again
        else:
            raise errors.AbortedError(
                "the join token is being used by many agents at once; retry",
                reason=errors.Reason.ERROR_REASON_CONCURRENT_MODIFICATION,
            )
        cert = authority.sign(public_key, pki.Subject("agent", request.agent_id), ttl=self.cert_ttl)
        log.info(
            "agent joined",
            extra={"fields": {"agent_id": request.agent_id, "token_id": token.token_id, "peer": peer,
                              "expire_time": cert.not_valid_after_utc.isoformat()}},
        )  # fmt: skip
        response = agent_service_pb2.JoinAgentResponse(
            agent_id=request.agent_id, certificate_chain_pem=join.chain_pem(cert, authority.cert)
        )
        response.expire_time.FromDatetime(cert.not_valid_after_utc)
        return response

    async def renew(
        self, request: agent_service_pb2.RenewAgentCertificateRequest, caller: Principal
    ) -> agent_service_pb2.RenewAgentCertificateResponse:
        """A new certificate for the calling agent's own id, over the CSR's key."""
        authority = self._authority()
        if caller.kind != "agent":
            raise errors.PermissionDeniedError(
                f"{caller.identity} is not an agent; only agents renew agent certificates",
                metadata={"identity": caller.identity},
            )
        errors.require(request.request_id, "request_id", "must not be empty")
        public_key = join.public_key_of(request.csr_pem)
        await self._refuse_revoked(caller.name)
        cert = authority.sign(public_key, pki.Subject("agent", caller.name), ttl=self.cert_ttl)
        log.info(
            "agent certificate renewed",
            extra={"fields": {"agent_id": caller.name, "expire_time": cert.not_valid_after_utc.isoformat()}},
        )
        response = agent_service_pb2.RenewAgentCertificateResponse(
            agent_id=caller.name, certificate_chain_pem=join.chain_pem(cert, authority.cert)
        )
        response.expire_time.FromDatetime(cert.not_valid_after_utc)
        return response
