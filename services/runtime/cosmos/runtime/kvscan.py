"""Reading every key (or every latest value) of a JetStream KV bucket without leaving consumers behind.

nats-py's ``KeyValue.keys()`` and a watch each create an ephemeral consumer that the server keeps for
five minutes after the read is done, and since nats-server 2.15 a stream holds at most 1,000
consumers unless told otherwise: a listing or a workflow read polled a few times a second filled
that up within minutes and every later read failed ("maximum consumers limit reached"). A scan here
deletes its consumer as soon as it is done, and asks the server to drop it after a few idle seconds
should this process die first.
"""

from __future__ import annotations

import contextlib

import nats.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

IDLE_CONSUMER_S = 5.0
"""Seconds the server keeps a scan's consumer once nobody listens (a crashed reader's)."""


async def entries(
    js: JetStreamContext,
    bucket: str,
    kv: KeyValue,
    pattern: str = ">",
    *,
    meta_only: bool = False,
    timeout: float = 5.0,
) -> list[KeyValue.Entry]:
    """The latest entry of every live key of ``bucket`` matching ``pattern`` (values left out with
    ``meta_only``); ``timeout`` bounds the wait for each entry."""
    watcher = await kv.watch(
        pattern, ignore_deletes=True, meta_only=meta_only, inactive_threshold=IDLE_CONSUMER_S
    )
    found: list[KeyValue.Entry] = []
    try:
        while True:
            entry = await watcher.updates(timeout=timeout)  # type: ignore[no-untyped-call]
            if entry is None:
                return found  # caught up: every key's last value was delivered
            found.append(entry)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
        # nats-py keeps the consumer's name private; without it the idle threshold still frees it.
        consumer = getattr(getattr(watcher, "_sub", None), "_consumer", None)
        if isinstance(consumer, str):
            with contextlib.suppress(nats.errors.Error):
                await js.delete_consumer(f"KV_{bucket}", consumer)


async def keys(js: JetStreamContext, bucket: str, kv: KeyValue, pattern: str = ">") -> list[str]:
    """Every live key of ``bucket`` matching ``pattern``, sorted."""
    return sorted(entry.key for entry in await entries(js, bucket, kv, pattern, meta_only=True))
