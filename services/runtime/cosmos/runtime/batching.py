"""Coalescing many concurrent calls into few batch calls.

A caller under load (Optimus starting a workflow per submit) pays one RPC per item; most of that
cost is the call, not the item. :class:`Coalescer` sends an item at once when no batch is in flight
(no waiting to fill a batch, so a lone caller sees no delay) and otherwise queues it: each batch
call carries what arrived during the previous ones.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Send = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]
"""Sends one batch; answers one result per item, in order: a value, or the exception for that item."""


class Coalescer(Generic[T, R]):
    """Batches the items submitted while earlier batches are in flight."""

    def __init__(self, send: Send[T, R], *, max_batch: int = 256, max_in_flight: int = 2) -> None:
        self._send = send
        self.max_batch = max_batch
        """Items per batch call at most."""
        self.max_in_flight = max_in_flight
        """Batch calls in flight at once; more items wait for one of them to return."""
        self._pending: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Send ``item`` in the next batch; its result, or raise its exception."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._in_flight < self.max_in_flight:
            self._in_flight += 1
            # A context of its own: the batch call belongs to none of the callers whose items it holds.
            task = asyncio.get_running_loop().create_task(self._drain(), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
                live = [(item, future) for item, future in batch if not future.done()]  # not cancelled
                if live:
                    await self._send_batch(live)
        finally:
            self._in_flight -= 1

    async def _send_batch(self, live: list[tuple[T, asyncio.Future[R]]]) -> None:
        results: Sequence[R | BaseException]
        try:
            results = await self._send([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch of {len(live)} answered with {len(results)} results")
        except asyncio.CancelledError:
            for _, future in live:
                future.cancel()
            raise
        except Exception as exc:
            results = [exc] * len(live)
        for (_, future), result in zip(live, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def aclose(self) -> None:
        """Wait for the batches in flight (their callers are waiting for them too)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
