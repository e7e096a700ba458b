"""The job's output: its stdout and stderr pipes and its progress channel, read line by line into
the log batcher, the stderr tail and the progress throttle while it runs.

A container job cannot be handed a pipe, so its progress channel is a FIFO in its work dir.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from cosmos.common.v1 import progress_pb2
from cosmos.stratum.agent import containers
from cosmos.stratum.agent.attempt import RunLimits
from cosmos.stratum.agent.progress import (
    ChannelParser,
    FfmpegProgressParser,
    Line,
    LineSplitter,
    SecretMask,
)
from cosmos.stratum.agent.rate_limits import LogBatcher, ProgressThrottle
from cosmos.stratum.v1 import job_pb2

PROGRESS_FIFO = ".cosmos/progress"
"""Progress channel of container jobs: a FIFO at this path in the work dir."""


class JobPipes:
    """The pipes (or FIFO) of one attempt's process, the agent's read ends and their reader tasks."""

    def __init__(self, limits: RunLimits, work_dir: Path, container: bool) -> None:
        self.limits = limits
        self.work_dir = work_dir
        self.container = container
        self.child_fds: list[int] = []  # ends the child inherits; closed here after spawn
        self._fifo_writer: int | None = None
        self._transports: list[asyncio.ReadTransport] = []
        self._readers: list[asyncio.Task[None]] = []
        self.stdout_w = self.stderr_w = -1  # the child's ends of its stdout and stderr pipes
        self.progress_target = ""  # what the job writes progress to: "pipe:N" or the FIFO path

    async def open(
        self,
        spec: job_pb2.JobSpec,
        mask: SecretMask,
        stderr_tail: collections.deque[str],
        throttle: ProgressThrottle,
        batcher: LogBatcher,
        channel: ChannelParser,
    ) -> None:
        """Open stdout, stderr and (as ``spec.progress_format`` says) the progress channel."""

        def log_line(stream: job_pb2.LogStream.ValueType) -> Callable[[Line], None]:
            def on_line(line: Line) -> None:
                text = mask(line.text())
                if stream == job_pb2.LOG_STREAM_STDERR:
                    stderr_tail.append(text)
                batcher.add(stream, text)

            return on_line

        self.stdout_w = await self._pipe(log_line(job_pb2.LOG_STREAM_STDOUT))
        self.stderr_w = await self._pipe(log_line(job_pb2.LOG_STREAM_STDERR))
        if spec.progress_format == job_pb2.PROGRESS_FORMAT_FFMPEG:
            media = spec.media_duration.ToTimedelta().total_seconds()
            ffmpeg = FfmpegProgressParser(media)
            self.progress_target = await self._progress_channel(
                lambda line: _offer(throttle, ffmpeg.feed(line.text()))
            )
        elif spec.progress_format == job_pb2.PROGRESS_FORMAT_CHANNEL:
            self.progress_target = await self._progress_channel(
                lambda line: _offer(throttle, _masked(mask, channel.feed(line.text())))
            )

    async def _pipe(self, on_line: Callable[[Line], None]) -> int:
        """A pipe whose read end feeds ``on_line``; returns the write end for the child."""
        read_fd, write_fd = os.pipe()
        self.child_fds.append(write_fd)
        await self._read(read_fd, on_line)
        return write_fd

    async def _progress_channel(self, on_line: Callable[[Line], None]) -> str:
        """Open the progress channel; returns what the job writes to (``pipe:N`` or a FIFO path)."""
        if not self.container:
            return f"pipe:{await self._pipe(on_line)}"
        # pass_fds cannot reach into a container; a FIFO in the mounted work dir can.
        fifo = self.work_dir / PROGRESS_FIFO
        fifo.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(fifo, 0o666)
        # The agent's umask narrows mkfifo's mode; the job (another uid) must be able to write it.
        os.chmod(fifo, 0o666)
        read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer keeps the FIFO from reading as EOF before (and between) the job's opens.
        self._fifo_writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        await self._read(read_fd, on_line)
        return f"{containers.CONTAINER_WORK_DIR}/{PROGRESS_FIFO}"

    async def _read(self, read_fd: int, on_line: Callable[[Line], None]) -> None:
        """Feed ``read_fd``'s lines to ``on_line`` from a reader task until EOF."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 16)
        # The transport owns the fd from here on; closing it (always, in close()) closes the fd.
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        self._transports.append(transport)
        self._readers.append(asyncio.create_task(self._pump(reader, on_line)))

    async def _pump(self, reader: asyncio.StreamReader, on_line: Callable[[Line], None]) -> None:
        splitter = LineSplitter(self.limits.line_bytes)
        while chunk := await reader.read(1 << 16):
            for line in splitter.feed(chunk):
                on_line(line)
        for line in splitter.close():
            on_line(line)

    def close_child_fds(self) -> None:
        """Close the child's ends (once it has them, or when it will never start)."""
        for fd in self.child_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child_fds.clear()

    async def drain(self) -> None:
        """Let the readers reach EOF, bounded: a process that escaped the group may hold a pipe."""
        if self._fifo_writer is not None:
            os.close(self._fifo_writer)
            self._fifo_writer = None
        if not self._readers:
            return
        _, pending = await asyncio.wait(self._readers, timeout=self.limits.drain_s)
        for reader in pending:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def close(self) -> None:
        """Stop reading and close the agent's ends, whatever state the attempt is in."""
        for reader in self._readers:
            reader.cancel()
        for transport in self._transports:
            transport.close()
        if self._fifo_writer is not None:
            os.close(self._fifo_writer)


def _offer(throttle: ProgressThrottle, progress: progress_pb2.Progress | None) -> None:
    if progress is not None:
        throttle.update(progress)


def _masked(
    mask: Callable[[str], str], progress: progress_pb2.Progress | None
) -> progress_pb2.Progress | None:
    """Progress with its free-text message masked (the only field a job writes text into)."""
    if progress is not None and progress.message:
        progress.message = mask(progress.message)
    return progress
