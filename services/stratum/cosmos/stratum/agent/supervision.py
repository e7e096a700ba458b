"""Supervision of a running job process: waiting for it to exit, for a cancel or for its timeout;
stopping its process group (SIGTERM, grace, SIGKILL) and its container; sampling its CPU time and
memory; reaping it with ``wait4``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from cosmos.common.v1 import resources_pb2
from cosmos.stratum.agent import containers
from cosmos.stratum.agent.process_group import group_alive, signal_group
from cosmos.stratum.agent.progress import duration

if TYPE_CHECKING:
    from cosmos.stratum.agent.runner import JobRun


@dataclass
class _Exit:
    """How the main process ended, from ``wait4``."""

    exit_code: int = 0
    signal: int = 0
    cpu_s: float = 0.0
    max_rss: int = 0


@dataclass(frozen=True)
class Ended:
    """How a supervised process ended, and whether the agent ended it."""

    status: _Exit
    stop_reason: str
    """``CANCELLED`` or ``TIMED_OUT`` when the agent stopped it; empty when it exited by itself."""
    grace: float
    """The grace it was given after SIGTERM (when stopped)."""
    escalated: bool
    """Whether it was still running after the grace and got SIGKILL."""
    timeout: float
    """The job's timeout in seconds; 0: none."""
    usage: resources_pb2.ResourceUsage


async def supervise(
    run: JobRun, proc: subprocess.Popen[bytes], engine: containers.Engine | None, container: str
) -> Ended:
    """Wait until the process exits, is cancelled or times out; stop what is left of its group."""
    limits = run.limits
    spec = run.spec
    started = time.monotonic()
    sampler = _UsageSampler(proc.pid)
    sampling = asyncio.create_task(sampler.run(limits.usage_interval_s))
    exited = asyncio.create_task(_wait_exit(proc))
    stopped = asyncio.create_task(run._stop.wait())
    timeout = spec.timeout.ToTimedelta().total_seconds() if spec.HasField("timeout") else 0.0
    stop_reason = ""
    grace = 0.0
    escalated = False
    try:
        await asyncio.wait([exited, stopped], timeout=timeout or None, return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            stop_reason = "CANCELLED" if stopped.done() else "TIMED_OUT"
            grace = run._cancel_grace if stop_reason == "CANCELLED" else limits.kill_grace_s
            escalated = await _terminate(proc.pid, exited, grace, engine, container)
        else:
            # The job is over once its main process is: stray background processes go too.
            leftover = limits.leftover_grace_s
            await _terminate(proc.pid, exited, leftover, engine, container, only_leftovers=True)
        status = await exited
    except BaseException:
        # The agent itself is going away: never leave the job running unsupervised.
        signal_group(proc.pid, signal.SIGKILL)
        raise
    finally:
        stopped.cancel()
        sampling.cancel()
    wall = time.monotonic() - started
    usage = resources_pb2.ResourceUsage(
        cpu_seconds=max(sampler.cpu_seconds, status.cpu_s),
        max_rss_bytes=max(sampler.peak_rss, status.max_rss),
        wall_time=duration(wall),
    )
    return Ended(status, stop_reason, grace, escalated, timeout, usage)


async def _terminate(
    pgid: int,
    exited: asyncio.Task[_Exit],
    grace: float,
    engine: containers.Engine | None,
    container: str,
    *,
    only_leftovers: bool = False,
) -> bool:
    """SIGTERM the process group, wait up to ``grace`` for all of it to exit, then SIGKILL.

    Returns whether SIGKILL was needed. With ``only_leftovers`` the main process has already
    exited and only what remains of its group is stopped (nothing, usually).
    """
    if only_leftovers and not group_alive(pgid):
        return False
    signal_group(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(exited), grace)
    # The main process may exit at once and leave children that ignore SIGTERM: wait for the group.
    # Nothing signals "the group is empty": poll it.
    while group_alive(pgid) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    escalated = not exited.done() or group_alive(pgid)
    if escalated:
        signal_group(pgid, signal.SIGKILL)
    if engine is not None and not only_leftovers:
        # Killing the CLI does not stop its container.
        await containers.remove(engine, container)
    await asyncio.shield(exited)
    return escalated


class _UsageSampler:
    """Samples CPU time and RSS of the process tree (psutil), which ``wait4`` alone cannot see:
    descendants that are never reaped by the main process (killed, orphaned) count too."""

    def __init__(self, pid: int) -> None:
        self._cpu: dict[tuple[int, float], float] = {}
        self.peak_rss = 0
        try:
            self._root: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._root = None

    @property
    def cpu_seconds(self) -> float:
        """User + system CPU seconds of every process seen, as last sampled."""
        return sum(self._cpu.values())

    def sample(self) -> None:
        """One sample of the whole tree."""
        root = self._root
        # is_running() compares the start time too: never sample a recycled pid.
        if root is None or not root.is_running():
            return
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    self._cpu[(proc.pid, proc.create_time())] = times.user + times.system
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue  # exited between listing and reading
        self.peak_rss = max(self.peak_rss, rss)

    async def run(self, interval: float) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(interval)


async def _wait_exit(proc: subprocess.Popen[bytes]) -> _Exit:
    """Reap the process with ``wait4`` (its rusage covers the descendants it reaped), without a thread.

    A pidfd becomes readable when the process exits; where pidfds are missing, poll.
    """
    pid = proc.pid
    loop = asyncio.get_running_loop()
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        ready: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            await ready
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    while True:
        try:
            reaped, status, usage = os.wait4(pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG never blocks)
        except ChildProcessError:
            # Someone else reaped it (a process-wide waitpid(-1)); the status is lost.
            proc.returncode = -1
            return _Exit(exit_code=-1)
        if reaped:
            break
        await asyncio.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    # Tell Popen it is reaped: otherwise its finalizer could waitpid() a recycled pid.
    proc.returncode = code
    rss = usage.ru_maxrss * 1024  # kilobytes on Linux
    cpu = usage.ru_utime + usage.ru_stime
    if code < 0:
        return _Exit(exit_code=128 - code, signal=-code, cpu_s=cpu, max_rss=rss)
    return _Exit(exit_code=code, cpu_s=cpu, max_rss=rss)
