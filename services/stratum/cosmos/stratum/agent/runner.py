"""Runs one attempt of a Stratum job on this host: stage inputs, run, report, stage outputs.

A :class:`JobRun` owns one attempt from assignment to its terminal state::

    run = JobRun(spec, job_id="j1", attempt=1, work_root=Path("/var/lib/cosmos/agent"),
                 gpu_indices=[1, 3], on_progress=send_progress, on_logs=send_logs)
    if await run.start():       # True once the process is running (report RUNNING)
        ...
    outcome = await run.wait()  # RunOutcome(state, result, reason, ...)
    await run.cancel(10.0)      # from anywhere: SIGTERM the group, 10 s grace, SIGKILL

The job runs as its own session and process group, so cancel and timeout reach every process it
started. See ``docs/stratum-jobs.md`` for the contract a job sees.

This module holds the attempt's life cycle; its steps are apart: :mod:`.preparation` (refusals,
staging, sandbox), :mod:`.process` (command line, environment, spawn), :mod:`.pipes` (output and
progress), :mod:`.supervision` (exit, cancel, timeout, usage) and :mod:`.reporting` (the outcome).
Those that take the :class:`JobRun` are its parts, split off for size: they read and set its private
state (pid, state, cancel, callbacks, stderr tail) as its methods did.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import shutil
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cosmos.stratum.agent import containers, orphans, reporting, sandbox, staging
from cosmos.stratum.agent.attempt import Refused, RunLimits, RunOutcome, Stopped
from cosmos.stratum.agent.preparation import prepare
from cosmos.stratum.agent.process import JobProcess
from cosmos.stratum.agent.progress import SecretMask
from cosmos.stratum.agent.rate_limits import LogsCallback, ProgressCallback
from cosmos.stratum.v1 import job_pb2

__all__ = ["STDERR_TAIL_BYTES", "STDERR_TAIL_LINES", "JobRun", "RunLimits", "RunOutcome"]

log = logging.getLogger(__name__)

T = TypeVar("T")

STDERR_TAIL_LINES = 50
STDERR_TAIL_BYTES = 4096


class JobRun:
    """One attempt of one job, run as a local process group (or a container).

    ``on_progress`` receives parsed progress at most every ``limits.progress_interval_s`` (always
    the final value); ``on_logs`` receives batches of stdout/stderr lines. Neither callback can
    block the job: output is read continuously and delivered from separate tasks.
    """

    def __init__(
        self,
        spec: job_pb2.JobSpec,
        *,
        job_id: str,
        attempt: int,
        work_root: Path,
        gpu_indices: Sequence[int] = (),
        on_progress: ProgressCallback | None = None,
        on_logs: LogsCallback | None = None,
        stores: staging.StoreRegistry | None = None,
        limits: RunLimits | None = None,
        keep_work_dir: bool = False,
        jail: sandbox.Sandbox | None = None,
    ) -> None:
        self.spec = spec
        self.job_id = job_id
        self.attempt = attempt
        self.work_dir = Path(work_root).absolute() / _safe_name(job_id) / str(attempt)
        """The attempt's work dir: the job's cwd, where inputs land and outputs are taken from."""
        self.gpu_indices = list(gpu_indices)
        self.limits = limits or RunLimits()
        self.stores = stores or staging.default_registry()
        self.keep_work_dir = keep_work_dir
        self.jail = jail
        """Who the process runs as and what it reaches (the agent always gives one); None runs it as
        the agent's own user, unconfined."""
        self._on_progress = on_progress or _ignore
        self._on_logs = on_logs or _ignore
        self._state: job_pb2.JobState.ValueType = job_pb2.JOB_STATE_ASSIGNED
        self._pid: int | None = None
        self._task: asyncio.Task[RunOutcome] | None = None
        self._started = asyncio.Event()
        self._stop = asyncio.Event()
        self._cancel_grace = self.limits.kill_grace_s
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.mask = SecretMask(spec.secrets.values())
        """Masks the job's secret values in everything the attempt reports."""

    # ---------------------------------------------------------------------------------- public API

    @property
    def pid(self) -> int | None:
        """Process id (and process group id) of the job's main process, once started."""
        return self._pid

    @property
    def state(self) -> job_pb2.JobState.ValueType:
        """ASSIGNED until the process starts, RUNNING while it runs, then the terminal state."""
        return self._state

    async def start(self) -> bool:
        """Stage inputs and start the process; True when it is running.

        False means the attempt already ended before start (invalid spec, missing input, no
        container engine, cancelled): :meth:`wait` returns why.
        """
        if self._task is not None:
            raise RuntimeError("JobRun.start() called twice")
        self._task = asyncio.create_task(self._main(), name=f"job {self.job_id}/{self.attempt}")
        await self._started.wait()
        return self._state == job_pb2.JOB_STATE_RUNNING

    async def wait(self) -> RunOutcome:
        """The outcome, once the attempt has ended (cancelling this wait does not stop the job)."""
        if self._task is None:
            raise RuntimeError("JobRun.wait() before start()")
        return await asyncio.shield(self._task)

    async def cancel(self, grace_seconds: float = 10.0) -> None:
        """Stop the attempt: SIGTERM to its process group, ``grace_seconds``, then SIGKILL.

        Returns once the attempt has ended (state CANCELLED unless it had already ended). Before
        the process starts, the attempt ends without starting it; after a successful exit, an
        output upload still in progress is abandoned.
        """
        self._cancel_grace = grace_seconds
        self._stop.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    # ---------------------------------------------------------------------------------- the attempt

    async def _main(self) -> RunOutcome:
        try:
            try:
                outcome = await self._attempt()
            except Stopped:
                outcome = reporting.outcome(
                    self, job_pb2.JOB_STATE_CANCELLED, "CANCELLED", "cancelled before start"
                )
            except Refused as exc:
                outcome = reporting.outcome(
                    self, job_pb2.JOB_STATE_FAILED, exc.reason, f"{exc.reason}: {exc}"
                )
            except Exception as exc:
                # An agent bug must still end the attempt with a terminal state Stratum can report.
                log.exception("job attempt crashed", extra={"fields": {"job_id": self.job_id}})
                outcome = reporting.outcome(
                    self, job_pb2.JOB_STATE_FAILED, "AGENT_ERROR", f"AGENT_ERROR: {exc!r}"
                )
            self._state = outcome.state
            if not self.keep_work_dir:
                await asyncio.to_thread(self._remove_work_dir)
            else:
                orphans.forget(self.work_dir)
        finally:
            self._started.set()  # start() returns even when the attempt never started
        log.info(
            "job attempt ended",
            extra={
                "fields": {
                    "job_id": self.job_id,
                    "attempt": self.attempt,
                    "state": job_pb2.JobState.Name(outcome.state),
                    "reason": outcome.reason,
                }
            },
        )
        return outcome

    async def _attempt(self) -> RunOutcome:
        try:
            prepared = await self._interruptible(prepare(self))
        except (staging.StagingError, containers.UnsupportedRuntime) as exc:
            raise Refused(exc.reason, str(exc)) from exc
        if self._stop.is_set():
            raise Stopped
        return await JobProcess(self, prepared).run()

    async def _interruptible(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` unless :meth:`cancel` is called first; raises :class:`Stopped` then."""
        if self._stop.is_set():
            work.close()
            raise Stopped
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise Stopped
        return task.result()

    def _remove_work_dir(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.work_dir.parent.rmdir()  # only when no other attempt of the job is there

    def stderr_tail(self) -> str:
        """The last stderr lines (at most 50 lines, 4 KiB), for failure diagnostics."""
        text = "\n".join(self._stderr_tail)
        data = text.encode()
        if len(data) <= STDERR_TAIL_BYTES:
            return text
        return data[-STDERR_TAIL_BYTES:].decode(errors="ignore")


def _safe_name(job_id: str) -> str:
    # A job id becomes a directory name: keep it one path component.
    name = job_id.replace("/", "_").replace("\\", "_")
    return "_" + name if name in ("", ".", "..") else name


async def _ignore(_: Any) -> None:
    return None
