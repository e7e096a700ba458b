"""Optimus's webhook: a signed HTTPS POST (an S3 event notification) starts the configured encode.

The card's "external system triggers → Optimus webhook + Plato saga". ``POST /v1/webhooks/s3`` on
``--webhook-listen`` (HTTPS with Optimus's own mesh certificate; plain HTTP only with ``--insecure``,
on loopback) takes an S3 event-notification JSON body. Every request must be signed:

- ``X-Cosmos-Timestamp``: Unix seconds when it was sent; more than :data:`TOLERANCE` away from now is
  refused (a captured request cannot be replayed later);
- ``X-Cosmos-Signature``: ``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``, checked in
  constant time against every configured secret (two during a rotation).

A missing or bad signature, or a stale timestamp, is ``401`` and an audit line; the body is never
logged nor echoed. A body over ``max_body_bytes`` is ``413`` before it is read whole. Each record
whose ``eventName`` is ``ObjectCreated:*`` and whose bucket and key match a rule starts that rule's
encode through the same ``SubmitEncode`` code as the gRPC API, as the rule's identity and tenant
(never anything the body says), with a request id derived from the event's identity: a redelivered
or replayed event names the same encode and starts nothing. Other events are acknowledged and
ignored. The answer is ``202`` with the encode ids; ``503`` when Plato is away (the sender retries,
and the retry is deduplicated).

aiohttp rather than Starlette + uvicorn: it runs on Optimus's own event loop as one more task (no
second server framework and loop policy), and it is the HTTP stack aiobotocore (the S3 client)
already brings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote_plus

import yaml
from aiohttp import web

from cosmos import errors
from cosmos.common.v1 import access_pb2
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2
from cosmos.runtime import rpc_errors
from cosmos.runtime.config import Address
from cosmos.security import auth, tls
from cosmos.security.config import Security
from cosmos.security.principals import Principal

log = logging.getLogger(__name__)

PATH = "/v1/webhooks/s3"
TIMESTAMP_HEADER = "X-Cosmos-Timestamp"
SIGNATURE_HEADER = "X-Cosmos-Signature"
TOLERANCE = 300.0
"""Seconds a request's timestamp may be away from the server's clock (either way)."""
MAX_BODY = 1 << 20
"""Default largest body accepted (S3 sends one to a few records per notification)."""
MAX_RECORDS = 100
"""Records in one notification at most (S3 sends one; each may start an encode)."""
SUBMIT_METHOD = "/cosmos.optimus.v1.EncodeService/SubmitEncode"
WEBHOOK_METHOD = f"POST {PATH}"
QUALITY = {
    "sampled": encode_pb2.QUALITY_MODE_SAMPLED,
    "full": encode_pb2.QUALITY_MODE_FULL,
    "off": encode_pb2.QUALITY_MODE_OFF,
}
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Cosmos-Signature`` value of ``body`` sent at ``timestamp`` (what a sender computes)."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def create_secret(path: Path) -> Path:
    """A new random secret at ``path`` (0600, its directory 0700) unless one is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(os.urandom(32).hex() + "\n")
    return path


@dataclasses.dataclass(frozen=True)
class Rule:
    """New objects matching ``bucket``/``prefix`` start an encode of this shape."""

    name: str
    """Names the rule in logs and in request ids (so two rules on one object are two encodes)."""
    output: str
    """Output URI template: ``{bucket}``, ``{key}``, ``{stem}`` (key without extension), ``{name}``."""
    tenant: str
    """The tenant the encode belongs to."""
    identity: str
    """The user name it is submitted as (audit lines show ``user/<identity>``)."""
    bucket: str = ""
    """Only this bucket (empty: any)."""
    prefix: str = ""
    """Only keys starting with this."""
    source: str = "s3://{bucket}/{key}"
    """Source URI template (e.g. ``file:///mnt/{bucket}/{key}`` where the bucket is mounted)."""
    ladder: str = ""
    profiles: tuple[str, ...] = ()
    quality: str = "sampled"
    priority: int = 0
    overwrite: bool = False
    """Replace an earlier Cosmos publish at the output (a key written again, with a per-key output)."""

    def matches(self, bucket: str, key: str) -> bool:
        return (not self.bucket or bucket == self.bucket) and key.startswith(self.prefix)

    def principal(self) -> Principal:
        # A submitter of its tenant, nothing more: the rule may start encodes there and only there.
        return Principal("user", self.identity, self.tenant, frozenset({"submitter"}), via="webhook")

    def request(self, bucket: str, key: str, request_id: str) -> encode_service_pb2.SubmitEncodeRequest:
        path = PurePosixPath(key)
        names = {"bucket": bucket, "key": key, "stem": str(path.with_suffix("")), "name": path.name}
        return encode_service_pb2.SubmitEncodeRequest(
            request_id=request_id,
            source_uri=self.source.format(**names),
            output_uri=self.output.format(**names),
            ladder=self.ladder,
            profiles=list(self.profiles),
            quality=QUALITY[self.quality],
            priority=self.priority,
            overwrite=self.overwrite,
        )


@dataclasses.dataclass(frozen=True)
class WebhookConfig:
    """The webhook's YAML file (docs/webhooks.md)."""

    secret_files: tuple[Path, ...]
    """Files holding the shared secrets (each file's stripped text); any of them signs validly."""
    rules: tuple[Rule, ...] = ()
    max_body_bytes: int = MAX_BODY
    tolerance_seconds: float = TOLERANCE

    @classmethod
    def load(cls, path: Path) -> WebhookConfig:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise errors.ConfigError(f"--webhook-config {path}: {exc}") from exc
        return cls.parse(data, path.parent, str(path))

    @classmethod
    def parse(cls, data: Any, base: Path, where: str = "webhook config") -> WebhookConfig:
        if not isinstance(data, dict):
            raise errors.ConfigError(f"{where}: expected a mapping with secret_files and rules")
        unknown = set(data) - {"secret_files", "rules", "max_body_bytes", "tolerance_seconds"}
        if unknown:
            raise errors.ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        files = tuple(base / str(f) for f in data.get("secret_files") or [])
        if not files:
            raise errors.ConfigError(f"{where}: secret_files must name at least one secret file")
        rules = []
        fields = {f.name for f in dataclasses.fields(Rule)}
        for i, entry in enumerate(data.get("rules") or []):
            if not isinstance(entry, dict) or set(entry) - fields:
                raise errors.ConfigError(f"{where}: rules[{i}]: a mapping of {', '.join(sorted(fields))}")
            missing = sorted({"name", "output", "tenant", "identity"} - set(entry))
            if missing:
                raise errors.ConfigError(
                    f"{where}: rules[{i}]: name, output, tenant and identity are required "
                    f"(missing {', '.join(missing)})"
                )
            try:
                rule = Rule(**{**entry, "profiles": tuple(entry.get("profiles") or ())})
            except TypeError as exc:
                raise errors.ConfigError(f"{where}: rules[{i}]: {exc}") from exc
            if not _NAME.match(rule.name) or not rule.tenant or not _NAME.match(rule.identity):
                why = "name and identity: 1 to 64 of [A-Za-z0-9._-]; tenant: not empty"
                raise errors.ConfigError(f"{where}: rules[{i}]: {why}")
            if rule.quality not in QUALITY:
                raise errors.ConfigError(f"{where}: rules[{i}].quality: one of {', '.join(QUALITY)}")
            rules.append(rule)
        if len({r.name for r in rules}) != len(rules):
            raise errors.ConfigError(f"{where}: rule names must be unique")
        config = cls(
            files,
            tuple(rules),
            int(data.get("max_body_bytes", MAX_BODY)),
            float(data.get("tolerance_seconds", TOLERANCE)),
        )
        config.secrets()  # unreadable secrets fail at start, not at the first request
        return config

    def secrets(self) -> list[bytes]:
        """The current secrets, read again each time: rotating one is writing its file (no restart)."""
        found = []
        for path in self.secret_files:
            try:
                text = path.read_text().strip()
            except OSError as exc:
                raise errors.ConfigError(f"webhook secret {path}: {exc.strerror or exc}") from exc
            if len(text) < 16:
                raise errors.ConfigError(f"webhook secret {path}: shorter than 16 characters")
            found.append(text.encode())
        return found


Submit = Callable[
    [encode_service_pb2.SubmitEncodeRequest], Awaitable[encode_service_pb2.SubmitEncodeResponse]
]


def event_identity(record: dict[str, Any], bucket: str, key: str) -> str:
    """What names one S3 event, for de-duplication: its ``eventID`` where the store sends one
    (MinIO, SeaweedFS), else bucket, key and the object's ``sequencer`` (AWS: unique and ordered per
    key); empty when neither is there (the event cannot be de-duplicated, so it is not acted on)."""
    if isinstance(record.get("eventID"), str) and record["eventID"]:
        return f"id:{record['eventID']}"
    obj = record.get("s3", {}).get("object", {})
    sequencer = obj.get("sequencer") if isinstance(obj, dict) else None
    if isinstance(sequencer, str) and sequencer:
        return f"seq:{bucket}/{key}@{sequencer}"
    return ""


class Webhook:
    """The handler: verify, parse, start encodes. ``submit`` is Optimus's own SubmitEncode."""

    def __init__(self, config: WebhookConfig, submit: Submit) -> None:
        self.config = config
        self.submit = submit

    def app(self) -> web.Application:
        # client_max_size makes aiohttp answer 413 itself once a body passes the bound, before the
        # whole body is buffered.
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post(PATH, self.handle)
        return app

    def _refuse(self, request: web.Request, why: str) -> web.Response:
        # Who was refused is all we know: the peer address. Never the body (it may be anything).
        peer = request.remote or "unknown"
        log.warning("webhook refused", extra={"fields": {"why": why, "peer": peer}})
        auth.write_audit(f"webhook/{peer}", "", "webhook", WEBHOOK_METHOD, "", "UNAUTHENTICATED")
        return web.json_response({"error": "unauthenticated"}, status=401)

    def verify(self, timestamp: str | None, signature: str | None, body: bytes) -> str:
        """Empty when the request is authentic and fresh, else why not (for the log)."""
        if not timestamp or not signature:
            return "missing signature headers"
        try:
            sent = int(timestamp)
        except ValueError:
            return "malformed timestamp"
        if abs(time.time() - sent) > self.config.tolerance_seconds:
            return "timestamp outside the tolerance (stale or replayed)"
        valid = [sign(secret, timestamp, body) for secret in self.config.secrets()]
        # compare_digest with every secret, so the time taken says nothing about which one is in use.
        if not any([hmac.compare_digest(v.encode(), signature.encode()) for v in valid]):
            return "bad signature"
        return ""

    async def handle(self, request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > self.config.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.config.max_body_bytes, actual_size=length)
        body = await request.read()
        try:
            why = self.verify(
                request.headers.get(TIMESTAMP_HEADER), request.headers.get(SIGNATURE_HEADER), body
            )
        except errors.ConfigError as exc:  # a secret file vanished or was cut short: ours, not theirs
            log.error("webhook secrets unreadable", extra={"fields": {"error": str(exc)}})
            return web.json_response({"error": "webhook misconfigured"}, status=500)
        if why:
            return self._refuse(request, why)
        try:
            event = json.loads(body)
            records = event.get("Records") if isinstance(event, dict) else None
            if not isinstance(records, list):
                raise ValueError("no Records list")
        except ValueError:
            return web.json_response({"error": "not an S3 event notification"}, status=400)
        if len(records) > MAX_RECORDS:  # each record may be an encode: bound the work one request asks
            return web.json_response({"error": f"more than {MAX_RECORDS} records"}, status=400)
        started: list[dict[str, Any]] = []
        ignored = 0
        for record in records:
            try:
                outcome = await self._record(record)
            except errors.UnavailableError as exc:
                # Plato is away: the sender delivers again later, and that delivery is de-duplicated.
                return web.json_response(
                    {"error": "unavailable", "message": exc.message, "encodes": started}, status=503
                )
            if outcome is None:
                ignored += 1
            else:
                started.extend(outcome)
        return web.json_response({"encodes": started, "ignored": ignored}, status=202)

    async def _record(self, record: Any) -> list[dict[str, Any]] | None:
        """What one record started (one entry per matching rule), or None when it is not for us."""
        if not isinstance(record, dict):
            return None
        name = str(record.get("eventName", "")).removeprefix("s3:")  # MinIO prefixes "s3:"
        s3 = record.get("s3")
        if not name.startswith("ObjectCreated:") or not isinstance(s3, dict):
            return None
        bucket = str((s3.get("bucket") or {}).get("name", ""))
        key = unquote_plus(str((s3.get("object") or {}).get("key", "")))  # S3 sends keys form-encoded
        rules = [r for r in self.config.rules if bucket and key and r.matches(bucket, key)]
        if not rules:
            return None
        identity = event_identity(record, bucket, key)
        if not identity:
            log.warning("webhook event without eventID or sequencer ignored", extra={"fields": {"key": key}})
            return None
        return [await self._start(rule, bucket, key, identity) for rule in rules]

    async def _start(self, rule: Rule, bucket: str, key: str, identity: str) -> dict[str, Any]:
        digest = hashlib.sha256(f"{rule.name}\n{identity}".encode()).hexdigest()
        request = rule.request(bucket, key, f"webhook-{digest}")
        principal = rule.principal()
        principal.require(access_pb2.PERMISSION_ENCODES_WRITE)
        entry: dict[str, Any] = {"rule": rule.name, "source_uri": request.source_uri}
        with auth.acting_as(principal):
            try:
                reply = await self.submit(request)
            except Exception as exc:
                # What the gRPC error interceptor would answer: an RpcError as it is, anything else
                # classified (Plato's UNAVAILABLE passed on, a bug as INTERNAL).
                error = exc if isinstance(exc, errors.RpcError) else rpc_errors.as_rpc_error(exc)
                if isinstance(error, errors.UnavailableError):
                    raise error from exc
                # Refused (bad rule, source unreadable...): a permanent answer, so the event is
                # acknowledged (a sender retrying it would be refused the same way).
                code = error.code.name
                auth.write_audit(principal.identity, principal.tenant, "webhook", SUBMIT_METHOD, "", code)
                log.warning(
                    "webhook encode refused",
                    extra={"fields": {"rule": rule.name, "code": code, "why": error.message}},
                )
                refused = {"code": code, "reason": error.reason, "message": rpc_errors.clip(error.message)}
                return {**entry, "error": refused}
        encode_id = reply.encode.encode_id
        auth.write_audit(principal.identity, principal.tenant, "webhook", SUBMIT_METHOD, encode_id, "OK")
        log.info(
            "webhook started an encode" if not reply.deduplicated else "webhook event already handled",
            extra={"fields": {"rule": rule.name, "encode_id": encode_id, "source_uri": request.source_uri}},
        )
        return {**entry, "encode_id": encode_id, "deduplicated": reply.deduplicated}


def ssl_context(security: Security) -> ssl.SSLContext | None:
    """The webhook's server TLS context; None only for an ``--insecure`` (loopback) Optimus."""
    if security.insecure or security.tls is None:
        return None
    return tls.HttpsServerContext(security.tls).current


async def start(
    listen: Address, security: Security, webhook: Webhook, *, what: str = "--webhook-listen"
) -> web.AppRunner:
    """Serve ``webhook`` on ``listen``; the runner to ``cleanup()`` at stop."""
    security.check_listen(listen.host, f"optimus webhook ({what})")
    runner = web.AppRunner(webhook.app(), access_log=None)  # requests are logged by the handler
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, ssl_context=ssl_context(security))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise errors.PortInUseError(listen.host, listen.port, "optimus webhook", what) from exc
    return runner
