"""Connecting to NATS JetStream, the only durable store and event bus of Cosmos."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StreamConfig
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from cosmos import errors
from cosmos.security import pki
from cosmos.security.tls import TlsFiles

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_URL = "nats://127.0.0.1:4222"
JETSTREAM_READY_TIMEOUT = 60.0
"""Seconds a connecting service waits for JetStream to answer (a cluster elects its leader first)."""


async def _log_error(exc: Exception) -> None:
    # nats-py logs every failed (re)connect with a traceback by default; one debug line is enough.
    log.debug("nats client error", extra={"fields": {"error": repr(exc)}})


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A client TLS context presenting ``files``' certificate and trusting only its CA.

    NATS maps the certificate's SPIFFE id to a user (see :mod:`cosmos.stack.natsd`), so the certificate
    is the whole of a client's NATS credentials.
    """
    files.read()  # a ConfigError naming the unreadable file, rather than ssl's bare errno
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    return context


def tls_options(files: TlsFiles | None) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for ``files`` (none for a plaintext, ``--insecure`` setup).

    The server must present the certificate of the ``nats`` role (``nats.cosmos``), whatever address
    the URL names.
    """
    if files is None:
        return {}
    return {"tls": tls_context(files), "tls_hostname": pki.server_name("nats")}


def servers(url: str) -> list[str]:
    """The server URLs of ``url``, a comma-separated list (every node of a cluster, so that a client
    fails over to the next when its node dies; nats-py takes a list, not a comma-separated string)."""
    out = [u.strip() for u in url.split(",") if u.strip()]
    if not out:
        raise errors.ConfigError("no NATS URL given")
    return out


async def connect(
    url: str, name: str, *, tls: TlsFiles | None = None, timeout: float = 10.0
) -> tuple[NatsClient, JetStreamContext]:
    """Connect to ``url`` (as ``tls``' certificate, when given) and check JetStream answers.

    Raises :class:`UnavailableError` naming the URL.
    """
    options = tls_options(tls)
    last: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        # nats-py retries the first connect forever (max_reconnect_attempts=-1) and reports each
        # failure here; the last one (e.g. an authorization violation) is what the timeout names.
        last[:] = [exc]
        await _log_error(exc)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                servers(url),
                name=name,
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=error_cb,
                **options,
            ),
            timeout,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        cause = last[0] if last else exc
        raise errors.UnavailableError(f"cannot reach NATS at {url} within {timeout:.0f}s: {cause!r}") from exc
    js = nc.jetstream()
    # A cluster still forming (nodes started together, a meta leader not yet elected) answers nothing
    # or 503 for a few seconds: asked again with short requests, for up to ``JETSTREAM_READY_TIMEOUT``.
    probe = nc.jetstream(timeout=2.0)
    try:
        await until_ready(probe.account_info, f"NATS at {url}", timeout=max(timeout, JETSTREAM_READY_TIMEOUT))
    except (nats.errors.Error, errors.UnavailableError) as exc:
        await close(nc)
        raise errors.UnavailableError(f"NATS at {url} has no JetStream: {exc}") from exc
    log.info("connected to NATS", extra={"fields": {"url": url}})
    return nc, js


async def close(nc: NatsClient) -> None:
    """Close ``nc``, NATS up or away: a service stopped during a NATS outage exits cleanly.

    While NATS is away, nats-py (2.16) holds what was published for the reconnect and, on close, writes
    it into the dead TLS transport, which raises. Nothing buffered could be delivered any more, so it
    is dropped first (the publishers of anything that matters wait for JetStream's ack, so they know).
    """
    if not nc.is_connected and nc._pending_data_size:  # private: nats-py has no way to drop it
        log.warning(
            "closing while NATS is away: unsent data dropped",
            extra={"fields": {"bytes": nc._pending_data_size}},
        )
        nc._pending = []
        nc._pending_data_size = 0
    await nc.close()


# JetStream answers "no suitable peers for placement" (10005) or a 503 while a cluster is still
# forming or a peer restarts; both pass.
_NOT_READY_CODES = frozenset({10005})
# 503s that waiting does not cure: JetStream disabled on the server (10076) or for the account (10039).
_NEVER_READY_CODES = frozenset({10039, 10076})


async def until_ready(op: Callable[[], Awaitable[T]], what: str, *, timeout: float = 60.0) -> T:
    """Run ``op`` (e.g. creating a replicated stream), retrying while JetStream is not ready for it."""
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.2
    while True:
        try:
            return await op()
        except (nats.js.errors.APIError, nats.errors.TimeoutError) as exc:
            code = getattr(exc, "err_code", None)
            retryable = code not in _NEVER_READY_CODES and (
                isinstance(exc, nats.errors.TimeoutError)
                or code in _NOT_READY_CODES
                or getattr(exc, "code", None) == 503
            )
            if not retryable or asyncio.get_running_loop().time() + delay > deadline:
                raise errors.UnavailableError(f"{what}: JetStream is not ready: {exc}") from exc
            log.info("JetStream not ready; retrying", extra={"fields": {"what": what, "error": str(exc)}})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


# "stream name already in use with a different configuration": what creating a stream (a KV bucket,
# an object store) answers when it exists with other settings, e.g. R1 where we now ask for R3.
STREAM_NAME_IN_USE = 10058


def _in_use(exc: nats.js.errors.BadRequestError) -> bool:
    return exc.err_code == STREAM_NAME_IN_USE


async def _scale(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Bring the existing ``stream`` to ``replicas``, keeping the rest of its configuration.

    nats-server (2.10+, clustered) accepts a replica change as a stream update; it refuses changing
    e.g. the storage type or retention, so those are left as they are, and the stream's own current
    configuration is what is sent back (asking for the caller's would be refused again).
    """
    info = await js.stream_info(stream)
    current = info.config.num_replicas or 1
    if current == replicas:
        return
    await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
    log.warning(
        "migrated JetStream stream replicas",
        extra={"fields": {"stream": stream, "from": current, "to": replicas}},
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create ``config``'s stream, or update an existing one to it (a new replica count included)."""
    try:
        await js.add_stream(config)
        return
    except nats.js.errors.BadRequestError as exc:
        if not _in_use(exc):
            raise
    assert config.name is not None
    info = await js.stream_info(config.name)
    before = info.config.num_replicas or 1
    await js.update_stream(config)
    after = config.num_replicas or 1
    if before != after:
        log.warning(
            "migrated JetStream stream replicas",
            extra={"fields": {"stream": config.name, "from": before, "to": after}},
        )


async def ensure_key_value(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Create the bucket, or open the existing one scaled to ``config.replicas`` (its ``KV_<bucket>``
    stream updated: nats-py's create refuses a bucket that exists with another replica count)."""
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:
        if not _in_use(exc):
            raise
    await _scale(js, f"KV_{config.bucket}", config.replicas)
    return await js.key_value(config.bucket)


async def ensure_object_store(js: JetStreamContext, bucket: str, config: ObjectStoreConfig) -> ObjectStore:
    """Create the object store, or open the existing one scaled to ``config.replicas`` (``OBJ_<bucket>``)."""
    try:
        return await js.create_object_store(bucket, config)
    except nats.js.errors.BadRequestError as exc:
        if not _in_use(exc):
            raise
    await _scale(js, f"OBJ_{bucket}", config.replicas)
    return await js.object_store(bucket)
