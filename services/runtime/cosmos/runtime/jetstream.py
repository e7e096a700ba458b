"""Connecting to NATS JetStream, the only durable store and event bus of Cosmos."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from cosmos import errors

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_URL = "nats://127.0.0.1:4222"


async def _log_error(exc: Exception) -> None:
    # nats-py logs every failed (re)connect with a traceback by default; one debug line is enough.
    log.debug("nats client error", extra={"fields": {"error": repr(exc)}})


async def connect(url: str, name: str, *, timeout: float = 10.0) -> tuple[NatsClient, JetStreamContext]:
    """Connect to ``url`` and check JetStream answers; raise :class:`UnavailableError` naming the URL."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            nc = await nats.connect(
                url,
                name=name,
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=_log_error,
            )
        except (OSError, nats.errors.Error) as exc:
            last = exc
            await asyncio.sleep(0.2)
            continue
        js = nc.jetstream()
        try:
            await js.account_info()
        except nats.errors.Error as exc:
            await nc.close()
            raise errors.UnavailableError(f"NATS at {url} has no JetStream: {exc}") from exc
        log.info("connected to NATS", extra={"fields": {"url": url}})
        return nc, js
    raise errors.UnavailableError(f"cannot reach NATS at {url} within {timeout:.0f}s: {last}")


# JetStream answers "no suitable peers for placement" (10005) or a 503 while a cluster is still
# forming or a peer restarts; both pass.
_NOT_READY_CODES = frozenset({10005})


async def until_ready(op: Callable[[], Awaitable[T]], what: str, *, timeout: float = 60.0) -> T:
    """Run ``op`` (e.g. creating a replicated stream), retrying while JetStream is not ready for it."""
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.2
    while True:
        try:
            return await op()
        except (nats.js.errors.APIError, nats.errors.TimeoutError) as exc:
            code = getattr(exc, "err_code", None)
            retryable = (
                isinstance(exc, nats.errors.TimeoutError)
                or code in _NOT_READY_CODES
                or getattr(exc, "code", None) == 503
            )
            if not retryable or asyncio.get_running_loop().time() + delay > deadline:
                raise errors.UnavailableError(f"{what}: JetStream is not ready: {exc}") from exc
            log.info("JetStream not ready; retrying", extra={"fields": {"what": what, "error": str(exc)}})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
