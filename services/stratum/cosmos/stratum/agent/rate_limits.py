"""Delivering what a running job reports: progress at most once per interval (the latest value wins)
and log lines in batches bounded per second in lines and bytes (lines over the limit are dropped and
counted).

Readers never wait for a callback: values are handed over and delivered from a task of their own,
so a slow consumer can never block the job writing to its pipes, and a failing one never fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cosmos.common.v1 import progress_pb2
from cosmos.runtime import wellknown
from cosmos.stratum.v1 import job_pb2

# The name these reports were logged under before they left progress.py: log queries keep working.
log = logging.getLogger("cosmos.stratum.agent.progress")

ProgressCallback = Callable[[progress_pb2.Progress], Awaitable[None]]
"""Receives rate-limited progress of a running job."""
LogsCallback = Callable[[list[job_pb2.LogLine]], Awaitable[None]]
"""Receives batches of log lines of a running job."""


class ProgressThrottle:
    """Delivers progress to a callback at most once per ``interval`` seconds; the latest value wins.

    :meth:`update` never waits (it is called from pipe readers); a background task calls the
    callback. :meth:`close` delivers the last pending value, so the final progress is never lost.
    """

    def __init__(self, callback: ProgressCallback, interval: float = 0.25) -> None:
        self.callback = callback
        self.interval = interval
        self.delivered = 0
        self._pending: progress_pb2.Progress | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    def update(self, progress: progress_pb2.Progress) -> None:
        """Offer a new progress value."""
        self._pending = progress
        self._wake.set()

    async def close(self) -> None:
        """Deliver what is pending now, then stop."""
        self._closing.set()
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, None
            if pending is not None:
                await _deliver(self.callback, pending)
                self.delivered += 1
            if self._closing.is_set():
                if self._pending is None:
                    return
                continue
            # Rate limit; closing cuts the pause short so the final value is not delayed.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval)


class LogBatcher:
    """Collects log lines and delivers them in batches, bounded per second in lines and bytes.

    Lines over the budget of the current one-second window are dropped and counted; the next batch
    carries a note with the count, so a reader of the logs knows lines are missing.
    """

    def __init__(
        self,
        callback: LogsCallback,
        *,
        max_lines_per_s: int = 200,
        max_bytes_per_s: int = 64 * 1024,
        flush_interval: float = 0.25,
    ) -> None:
        self.callback = callback
        self.max_lines_per_s = max_lines_per_s
        self.max_bytes_per_s = max_bytes_per_s
        self.flush_interval = flush_interval
        self.dropped = 0
        """Lines dropped so far over the rate limit."""
        self._unreported = 0
        self._batch: list[job_pb2.LogLine] = []
        self._window_start = time.monotonic()
        self._window_lines = 0
        self._window_bytes = 0
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    def add(self, stream: job_pb2.LogStream.ValueType, text: str) -> None:
        """Queue one line (already truncated) for delivery, or drop it when over the budget."""
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_lines, self._window_bytes = now, 0, 0
        size = len(text.encode())
        if self._window_lines + 1 > self.max_lines_per_s or self._window_bytes + size > self.max_bytes_per_s:
            self.dropped += 1
            self._unreported += 1
            self._wake.set()
            return
        self._window_lines += 1
        self._window_bytes += size
        self._batch.append(job_pb2.LogLine(stream=stream, text=text, time=wellknown.now()))
        self._wake.set()

    async def close(self) -> None:
        """Deliver everything queued, then stop."""
        self._closing.set()
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Gather lines for a moment: one callback per batch, not per line.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.flush_interval)
            self._wake.clear()
            batch, self._batch = self._batch, []
            if self._unreported:
                batch.append(
                    job_pb2.LogLine(
                        stream=job_pb2.LOG_STREAM_STDERR,
                        text=f"[cosmos agent] {self._unreported} log lines dropped (limit "
                        f"{self.max_lines_per_s} lines and {self.max_bytes_per_s} bytes per second)",
                        time=wellknown.now(),
                    )
                )
                self._unreported = 0
            if batch:
                await _deliver(self.callback, batch)
            if self._closing.is_set() and not self._batch and not self._unreported:
                return


async def _deliver(callback: Callable[[Any], Awaitable[None]], value: object) -> None:
    # A failing consumer (say, a stream being reconnected) must not take the job down with it.
    try:
        await callback(value)
    except Exception:
        log.exception("job report callback failed; report dropped")
