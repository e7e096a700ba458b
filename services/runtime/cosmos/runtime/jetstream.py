"""Connecting to NATS JetStream, the only durable store and event bus of Cosmos."""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from cosmos import errors

log = logging.getLogger(__name__)

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
