"""Riding out a server's restart: unary calls retried and streams reopened, with jittered backoff.

A restart of Plato, Stratum or Optimus is a short ``UNAVAILABLE`` (or a stream that ends before its
last event); a client that treats it as a failure turns every restart into failed work. These helpers
retry the call, and reopen a watch stream where it left off (the caller's ``open`` knows the last
event seen: ``from_sequence`` of WatchWorkflow/WatchJob; WatchEncode sends whole snapshots, so a
reopened watch simply starts with the current one). Any other status is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Answers meaning "not there right now": retried, never the caller's failure."""


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: doubling from ``initial`` to ``maximum``, each jittered by ±20 %."""

    initial: float = 0.5
    """Seconds before the first retry."""
    maximum: float = 10.0
    """Longest wait between two attempts."""

    def delays(self) -> AsyncIterator[float]:
        """Sleep the next delay each time it is advanced (forever); yields the seconds slept."""

        async def gen() -> AsyncIterator[float]:
            delay = self.initial
            while True:
                pause = delay * random.uniform(0.8, 1.2)
                await asyncio.sleep(pause)
                yield pause
                delay = min(delay * 2, self.maximum)

        return gen()


DEFAULT = Backoff()
"""Half a second, doubling to ten."""


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a gRPC error worth retrying (the server is away, not saying no)."""
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in TRANSIENT


async def retrying(
    call: Callable[[], Awaitable[T]],
    waiting: Callable[[], Awaitable[None]] | None = None,
    backoff: Backoff = DEFAULT,
    what: str = "call",
) -> T:
    """``call()``, repeated while it fails transiently; ``waiting()`` runs before each wait."""
    delays = backoff.delays()
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if not transient(exc):
                raise
            log.warning(f"{what}: server unavailable; retrying", extra={"fields": {"code": exc.code().name}})
        if waiting is not None:
            await waiting()
        await anext(delays)


FINISH_S = 1.0
"""How long a stream that delivered its last item may take to end before it is cancelled."""


async def finish(stream: AsyncIterable[object], timeout: float = FINISH_S) -> None:
    """Read ``stream`` to its end (a server ends a watch right after its final item), so the call,
    and its client span, end now rather than when the call is collected at shutdown; a stream still
    open after ``timeout`` is cancelled."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in stream:
                pass
    except (TimeoutError, grpc.aio.AioRpcError):
        cancel = getattr(stream, "cancel", None)
        if cancel is not None:
            cancel()


async def reconnecting(
    open_stream: Callable[[], AsyncIterable[T]],
    done: Callable[[T], bool],
    backoff: Backoff = DEFAULT,
    what: str = "watch",
) -> AsyncIterator[T]:
    """Every item of the stream ``open_stream()`` until ``done(item)``, reopening it (with backoff)
    when it breaks transiently or ends early. ``open_stream`` resumes after what was already seen."""
    delays = backoff.delays()
    while True:
        try:
            stream = open_stream()
            async for item in stream:
                delays = backoff.delays()  # it worked again: the next break starts from a short wait
                yield item
                if done(item):
                    await finish(stream)
                    return
            log.info(f"{what}: stream ended early; reopening")
        except grpc.aio.AioRpcError as exc:
            if not transient(exc):
                raise
            log.warning(f"{what}: server unavailable; reopening", extra={"fields": {"code": exc.code().name}})
        await anext(delays)
