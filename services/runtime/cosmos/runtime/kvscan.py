"""Reading every key (or every latest value) of a JetStream KV bucket without leaving consumers behind.

nats-py's ``KeyValue.keys()`` and a watch each create an ephemeral consumer that the server keeps for
five minutes after the read is done, and since nats-server 2.15 a stream holds at most 1,000
consumers unless told otherwise: a listing or a workflow read polled a few times a second filled
that up within minutes and every later read failed ("maximum consumers limit reached"). A scan here
deletes its consumer as soon as it is done, and asks the server to drop it after a few idle seconds
should this process die first.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from cosmos import errors

IDLE_CONSUMER_S = 5.0
"""Seconds the server keeps a scan's consumer once nobody listens (a crashed reader's)."""
SCAN_TRIES = 8
"""Scans made before a listing that keeps missing a key is given up (see :func:`entries`)."""
MAX_SUBJECT_DETAILS = 100_000
"""Subjects nats-server lists in one stream info before it pages (past it, no check is made)."""
_REMOVED = {"DEL", "PURGE"}


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
    ``meta_only``); ``timeout`` bounds the wait for each entry.

    A watch can report itself caught up while a key is still undelivered (its ordered consumer
    restarted, a key rewritten mid-scan): every key the stream held before the scan began must have
    been delivered, or the scan is made again; still short after a few tries, the scan raises
    :class:`~cosmos.errors.UnavailableError` rather than answer a partial listing.
    """
    missing: set[str] = set()
    for attempt in range(SCAN_TRIES):
        before = await _subjects(js, bucket, pattern)
        found, seen = await _scan(js, bucket, kv, pattern, meta_only=meta_only, timeout=timeout)
        missing = set() if before is None else before - seen
        if not missing:
            return found
        await asyncio.sleep(0.05 * (attempt + 1))
    raise errors.UnavailableError(
        f"listing {bucket!r} missed {len(missing)} key(s) it holds (e.g. {sorted(missing)[0]!r}); try again"
    )


async def _subjects(js: JetStreamContext, bucket: str, pattern: str) -> set[str] | None:
    """The keys holding a message (a value or a delete marker) now; None when the server pages the
    answer (too many to check this way)."""
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{pattern}")
    subjects = info.state.subjects or {}
    if len(subjects) >= MAX_SUBJECT_DETAILS:
        return None
    prefix = len(f"$KV.{bucket}.")
    return {subject[prefix:] for subject in subjects}


async def _scan(
    js: JetStreamContext, bucket: str, kv: KeyValue, pattern: str, *, meta_only: bool, timeout: float
) -> tuple[list[KeyValue.Entry], set[str]]:
    """One watch to its caught-up marker: the live entries, and every key delivered (deleted ones too)."""
    watcher = await kv.watch(pattern, meta_only=meta_only, inactive_threshold=IDLE_CONSUMER_S)
    found: list[KeyValue.Entry] = []
    seen: set[str] = set()
    try:
        while True:
            entry = await watcher.updates(timeout=timeout)  # type: ignore[no-untyped-call]
            if entry is None:
                return found, seen  # caught up: every key's last value was delivered
            seen.add(entry.key)
            if entry.operation not in _REMOVED:
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
