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
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

from cosmos import errors
from cosmos.common.v1 import progress_pb2, resources_pb2
from cosmos.stratum.agent import containers, failures, orphans, sandbox, staging
from cosmos.stratum.agent.progress import (
    ChannelParser,
    FfmpegProgressParser,
    Line,
    LineSplitter,
    LogBatcher,
    LogsCallback,
    ProgressCallback,
    ProgressThrottle,
    SecretMask,
    duration,
)
from cosmos.stratum.v1 import job_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH")
"""Agent environment variables a job inherits (plus every ``LC_*``); nothing else leaks into jobs."""
PROGRESS_FIFO = ".cosmos/progress"
"""Progress channel of container jobs: a FIFO at this path in the work dir."""

STDERR_TAIL_LINES = 50
STDERR_TAIL_BYTES = 4096


@dataclass(frozen=True)
class RunLimits:
    """Tunables of a run; the defaults suit production, tests shrink them."""

    kill_grace_s: float = 10.0
    """Grace between SIGTERM and SIGKILL when the job times out."""
    leftover_grace_s: float = 1.0
    """Grace for processes the job left behind after its main process exited."""
    progress_interval_s: float = 0.25
    """At most one progress callback per this many seconds."""
    log_lines_per_s: int = 200
    log_bytes_per_s: int = 64 * 1024
    log_flush_s: float = 0.25
    line_bytes: int = 4096
    """Output lines are cut to this many bytes."""
    usage_interval_s: float = 0.5
    """How often the process tree is sampled for CPU time and RSS."""
    drain_s: float = 2.0
    """After exit, how long to wait for the pipes to close (a stray process may hold them)."""
    min_free_bytes: int = 128 << 20
    """Disk space a job must leave free on its work dir's disk: checked (with the inputs' size) before
    staging, and a job that fails with less left is classified ``NO_SPACE``."""


@dataclass(frozen=True)
class RunOutcome:
    """How an attempt ended."""

    state: job_pb2.JobState.ValueType
    """SUCCEEDED, FAILED, CANCELLED or TIMED_OUT."""
    result: job_pb2.JobResult
    """Exit code, signal, stored outputs, usage, error text and stderr tail."""
    reason: str = ""
    """Stable code of why it did not succeed: ``EXIT_CODE``, ``SIGNAL``, ``CANCELLED``, ``TIMED_OUT``,
    ``INVALID_SPEC``, ``UNSUPPORTED_RUNTIME``, ``UNSUPPORTED_SCHEME``, ``INPUT_FAILED``,
    ``OUTPUT_FAILED``, ``NO_SPACE``, ``SANDBOX_FAILED``, ``SPAWN_FAILED``, ``AGENT_ERROR``, or the
    code the job declared in its failure file; empty on success. Also ``result.failure_code``."""
    dropped_log_lines: int = 0
    """Log lines dropped over the rate limit."""
    malformed_progress_lines: int = 0
    """Progress channel lines that were not valid progress JSON."""


class _Stopped(errors.CosmosError):
    """A cancel arrived while the attempt was not running a process."""


class _Refused(errors.CosmosError):
    """The attempt cannot start; carries the reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Exit:
    """How the main process ended, from ``wait4``."""

    exit_code: int = 0
    signal: int = 0
    cpu_s: float = 0.0
    max_rss: int = 0


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
        self._plan: sandbox.Plan | None = None
        self._container_user: containers.ContainerUser | None = None
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
            except _Stopped:
                outcome = self._outcome(job_pb2.JOB_STATE_CANCELLED, "CANCELLED", "cancelled before start")
            except _Refused as exc:
                outcome = self._outcome(job_pb2.JOB_STATE_FAILED, exc.reason, f"{exc.reason}: {exc}")
            except Exception as exc:
                # An agent bug must still end the attempt with a terminal state Stratum can report.
                log.exception("job attempt crashed", extra={"fields": {"job_id": self.job_id}})
                outcome = self._outcome(job_pb2.JOB_STATE_FAILED, "AGENT_ERROR", f"AGENT_ERROR: {exc!r}")
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
            engine = await self._interruptible(self._prepare())
        except (staging.StagingError, containers.UnsupportedRuntime) as exc:
            raise _Refused(exc.reason, str(exc)) from exc
        if self._stop.is_set():
            raise _Stopped
        return await _Process(self, engine).run()

    async def _prepare(self) -> containers.Engine | None:
        """Everything before the process starts; cheap refusals first."""
        if not self.spec.argv or not self.spec.argv[0]:
            raise _Refused("INVALID_SPEC", "argv is empty")
        staging.check(self.stores, [*self.spec.inputs, *self.spec.outputs], self.work_dir)
        engine = await containers.resolve(self.spec)
        await asyncio.to_thread(self._check_space)
        try:
            await asyncio.to_thread(self._fresh_work_dir)
        except OSError as exc:
            full = staging.no_space(exc, "cannot create the work dir")
            if full is None:
                raise
            raise full from exc
        await staging.stage_inputs(
            self.stores, self.spec.inputs, self.work_dir, self.spec.tenant or "default"
        )
        try:
            if self.jail is not None and engine is None:
                # After staging: the staged inputs become the job's too.
                self._plan = await asyncio.to_thread(
                    self.jail.prepare, self.spec.tenant, self.work_dir, self.spec.resources.memory_bytes
                )
            elif engine is not None:
                self._container_user = await asyncio.to_thread(self._container_identity, engine)
        except (sandbox.SandboxError, OSError) as exc:
            raise _Refused("SANDBOX_FAILED", f"cannot sandbox the job: {exc}") from exc
        return engine

    def _output_owner(self) -> staging.Owner | None:
        """Who the job's stored outputs belong to: the uid it ran as, when the agent (root) made it
        someone else, so that its tenant's later jobs (an encode's clean-up) can remove them."""
        user = self._container_user
        if user is not None and not user.keep_id:
            return (user.uid, user.gid)
        if self._plan is not None and self._plan.identity is not None:
            return (self._plan.identity.uid, self._plan.identity.gid)
        return None

    def _container_identity(self, engine: containers.Engine) -> containers.ContainerUser:
        """Who a container job runs as, its work dir made its own: the tenant's sandbox uid (as for a
        process job), else ``nobody``; never root. A rootless agent runs it as itself (keep-id)."""
        if os.geteuid() != 0:
            if engine.name == "podman":
                return containers.ContainerUser(keep_id=True)
            return containers.ContainerUser(os.geteuid(), os.getegid())
        ident = None
        if self.jail is not None:
            # The process sandbox's plan is not used (the container is the sandbox), only its uid and
            # the ownership it gives the work dir.
            ident = self.jail.prepare(
                self.spec.tenant, self.work_dir, self.spec.resources.memory_bytes
            ).identity
        if ident is None:
            ident = sandbox.Identity(containers.UNPRIVILEGED_UID, containers.UNPRIVILEGED_UID)
            sandbox.chown_tree(self.work_dir, ident)
            os.chmod(self.work_dir, 0o700)
        return containers.ContainerUser(ident.uid, ident.gid)

    def _container_limits(self) -> containers.ContainerLimits:
        """The job's declared resources as container caps, with the process sandbox's rlimits."""
        limits = self.jail.limits if self.jail is not None else sandbox.Limits()
        res = self.spec.resources
        return containers.ContainerLimits(
            cpus=res.cpu_millis / 1000 if res.cpu_millis > 0 else 0.0,
            memory_bytes=limits.memory_for(res.memory_bytes),
            pids=limits.processes,
            open_files=limits.open_files,
            file_size_bytes=limits.file_size_bytes,
        )

    async def _interruptible(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` unless :meth:`cancel` is called first; raises :class:`_Stopped` then."""
        if self._stop.is_set():
            work.close()
            raise _Stopped
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
            raise _Stopped
        return task.result()

    def _check_space(self) -> None:
        """Refuse (``NO_SPACE``) a job whose inputs would not fit with the reserve left."""
        tenant = self.spec.tenant or "default"
        sources = []
        for i, artifact in enumerate(self.spec.inputs):
            if not artifact.uri.lower().startswith("file:"):
                continue  # other stores: size unknown before the fetch (ENOSPC then ends the job)
            # The same guard staging applies: only files this tenant may read are looked at.
            real = self.stores.guard(artifact.uri, tenant, f"spec.inputs[{i}].uri", is_input=True)
            sources.append(staging.file_uri_path(real))
        needed = failures.copied_bytes(sources, self.work_dir.parent)
        failures.check_space(self.work_dir, needed, self.limits.min_free_bytes)

    def _fresh_work_dir(self) -> None:
        # A re-sent assignment of the same attempt starts from scratch, not from a half-run's files.
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True)

    def _remove_work_dir(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.work_dir.parent.rmdir()  # only when no other attempt of the job is there

    def _outcome(
        self,
        state: job_pb2.JobState.ValueType,
        reason: str,
        error: str,
        *,
        result: job_pb2.JobResult | None = None,
        dropped: int = 0,
        malformed: int = 0,
        failure_class: job_pb2.FailureClass.ValueType | None = None,
    ) -> RunOutcome:
        result = result or job_pb2.JobResult()
        result.error = self.mask(error)
        result.failure_code = reason
        result.failure_class = failures.classify(reason) if failure_class is None else failure_class
        result.stderr_tail = self.mask(self.stderr_tail())
        return RunOutcome(state, result, reason, dropped, malformed)

    def stderr_tail(self) -> str:
        """The last stderr lines (at most 50 lines, 4 KiB), for failure diagnostics."""
        text = "\n".join(self._stderr_tail)
        data = text.encode()
        if len(data) <= STDERR_TAIL_BYTES:
            return text
        return data[-STDERR_TAIL_BYTES:].decode(errors="ignore")


class _Process:
    """The running part of an attempt: spawn, supervise, collect, stage outputs.

    A helper of :class:`JobRun` (same module): it updates its owner's pid, state and stderr tail.
    """

    def __init__(self, run: JobRun, engine: containers.Engine | None) -> None:
        self.owner = run
        self.spec = run.spec
        self.limits = run.limits
        self.engine = engine
        self.container = containers.container_name(run.job_id, run.attempt) if engine else ""
        self.progress_format = self.spec.progress_format
        self._child_fds: list[int] = []  # ends the child inherits; closed here after spawn
        self._fifo_writer: int | None = None
        self._transports: list[asyncio.ReadTransport] = []
        self._readers: list[asyncio.Task[None]] = []
        self.stdout_w = self.stderr_w = -1  # the child's ends of its stdout and stderr pipes
        self.progress_target = ""  # what the job writes progress to: "pipe:N" or the FIFO path

    async def run(self) -> RunOutcome:
        run = self.owner
        throttle = ProgressThrottle(run._on_progress, self.limits.progress_interval_s)
        batcher = LogBatcher(
            run._on_logs,
            max_lines_per_s=self.limits.log_lines_per_s,
            max_bytes_per_s=self.limits.log_bytes_per_s,
            flush_interval=self.limits.log_flush_s,
        )
        channel = ChannelParser()
        try:
            try:
                await self._open_pipes(throttle, batcher, channel)
                proc = self._spawn()
            except BaseException:
                self._close_fds()
                raise
            return await self._supervise(proc, throttle, batcher, channel)
        finally:
            for reader in self._readers:
                reader.cancel()
            for transport in self._transports:
                transport.close()
            if self._fifo_writer is not None:
                os.close(self._fifo_writer)
            await throttle.close()
            await batcher.close()

    # ------------------------------------------------------------------------------------- start-up

    async def _open_pipes(
        self, throttle: ProgressThrottle, batcher: LogBatcher, channel: ChannelParser
    ) -> None:
        def log_line(stream: job_pb2.LogStream.ValueType) -> Callable[[Line], None]:
            def on_line(line: Line) -> None:
                text = self.owner.mask(line.text())
                if stream == job_pb2.LOG_STREAM_STDERR:
                    self.owner._stderr_tail.append(text)
                batcher.add(stream, text)

            return on_line

        self.stdout_w = await self._pipe(log_line(job_pb2.LOG_STREAM_STDOUT))
        self.stderr_w = await self._pipe(log_line(job_pb2.LOG_STREAM_STDERR))
        if self.progress_format == job_pb2.PROGRESS_FORMAT_FFMPEG:
            media = self.spec.media_duration.ToTimedelta().total_seconds()
            ffmpeg = FfmpegProgressParser(media)
            self.progress_target = await self._progress_channel(
                lambda line: _offer(throttle, ffmpeg.feed(line.text()))
            )
        elif self.progress_format == job_pb2.PROGRESS_FORMAT_CHANNEL:
            self.progress_target = await self._progress_channel(
                lambda line: _offer(throttle, _masked(self.owner.mask, channel.feed(line.text())))
            )

    async def _pipe(self, on_line: Callable[[Line], None]) -> int:
        """A pipe whose read end feeds ``on_line``; returns the write end for the child."""
        read_fd, write_fd = os.pipe()
        self._child_fds.append(write_fd)
        await self._read(read_fd, on_line)
        return write_fd

    async def _progress_channel(self, on_line: Callable[[Line], None]) -> str:
        """Open the progress channel; returns what the job writes to (``pipe:N`` or a FIFO path)."""
        if self.engine is None:
            return f"pipe:{await self._pipe(on_line)}"
        # pass_fds cannot reach into a container; a FIFO in the mounted work dir can.
        fifo = self.owner.work_dir / PROGRESS_FIFO
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
        # The transport owns the fd from here on; closing it (always, in run()) closes the fd.
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

    def _argv(self) -> list[str]:
        argv = list(self.spec.argv)
        if self.progress_format == job_pb2.PROGRESS_FORMAT_FFMPEG:
            # Global options go first; -nostats keeps ffmpeg's \r status line out of the logs.
            argv[1:1] = ["-progress", self.progress_target, "-nostats"]
        if self.engine is None:
            return argv
        return containers.run_argv(
            self.engine,
            name=self.container,
            image=self.spec.image,
            argv=argv,
            work_dir=self.owner.work_dir,
            env_names=sorted(self._job_env()),
            gpu_indices=self.owner.gpu_indices,
            user=self.owner._container_user,
            limits=self.owner._container_limits(),
        )

    def _job_env(self) -> dict[str, str]:
        """What the job itself sees (inside the container, for container jobs)."""
        run = self.owner
        env = {} if self.engine else inherited_env(os.environ)
        if self.engine is None:
            # The agent's home and temp dir are not the job's (nor, sandboxed, reachable).
            env["HOME"] = env["TMPDIR"] = str(run.work_dir)
        else:
            # The image's root filesystem is read-only: its home is the writable work dir.
            env["HOME"] = containers.CONTAINER_WORK_DIR
        env.update(self.spec.env)
        # Secrets reach the job like env; container runs forward them by name, never on a command line.
        env.update(self.spec.secrets)
        # Set last: a job cannot override its GPU isolation or its identity.
        work_dir = containers.CONTAINER_WORK_DIR if self.engine else str(run.work_dir)
        env.update(COSMOS_JOB_ID=run.job_id, COSMOS_ATTEMPT=str(run.attempt), COSMOS_WORK_DIR=work_dir)
        env["COSMOS_RESULT_FILE"] = f"{work_dir}/{RESULT_FILE}"
        env["COSMOS_FAILURE_FILE"] = f"{work_dir}/{failures.FAILURE_FILE}"
        if self.engine is None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in run.gpu_indices)
            # CUDA numbers devices fastest-first by default; agents index GPUs in PCI order (NVML).
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        if self.progress_format == job_pb2.PROGRESS_FORMAT_CHANNEL:
            if self.engine is None:
                fd = self.progress_target.removeprefix("pipe:")
                env["COSMOS_PROGRESS_FD"] = fd
                env["COSMOS_PROGRESS_FILE"] = f"/dev/fd/{fd}"
            else:
                env["COSMOS_PROGRESS_FILE"] = self.progress_target
        return env

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = self._argv()
        env = self._job_env()
        if self.engine is not None:
            # The CLI runs on the host: it needs PATH and its engine settings, and forwards the
            # job's variables by name.
            env = {**inherited_env(os.environ), **containers.client_env(os.environ), **env}
        plan = self.owner._plan
        plan_fd = -1
        if plan is not None:
            if shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
                raise _Refused("SPAWN_FAILED", f"cannot start {argv[0]!r}: no such program")
            # The helper sets the sandbox up as root, then execs argv (same pid) with env.
            argv, plan_fd = plan.command(argv, env)
            self._child_fds.append(plan_fd)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.owner.work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self.stdout_w,
                stderr=self.stderr_w,
                pass_fds=[fd for fd in self._child_fds if fd not in (self.stdout_w, self.stderr_w)],
                start_new_session=True,  # own session and process group: cancel reaches every process
            )
        except OSError as exc:
            raise _Refused("SPAWN_FAILED", f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
        finally:
            self._close_fds()
        self.owner._pid = proc.pid
        # Outlives this agent if it is killed outright; a restarted agent stops it (orphans), and
        # removes its container.
        container = (
            None if self.engine is None else (self.engine.name, self.engine.oci_runtime, self.container)
        )
        orphans.remember(self.owner.work_dir, self.owner.job_id, self.owner.attempt, proc.pid, container)
        self.owner._state = job_pb2.JOB_STATE_RUNNING
        self.owner._started.set()
        log.info(
            "job attempt started",
            extra={"fields": {"job_id": self.owner.job_id, "attempt": self.owner.attempt, "pid": proc.pid}},
        )
        return proc

    def _close_fds(self) -> None:
        for fd in self._child_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._child_fds.clear()

    # ----------------------------------------------------------------------------------- supervise

    async def _supervise(
        self,
        proc: subprocess.Popen[bytes],
        throttle: ProgressThrottle,
        batcher: LogBatcher,
        channel: ChannelParser,
    ) -> RunOutcome:
        run = self.owner
        started = time.monotonic()
        sampler = _UsageSampler(proc.pid)
        sampling = asyncio.create_task(sampler.run(self.limits.usage_interval_s))
        exited = asyncio.create_task(_wait_exit(proc))
        stopped = asyncio.create_task(run._stop.wait())
        timeout = self.spec.timeout.ToTimedelta().total_seconds() if self.spec.HasField("timeout") else 0.0
        stop_reason = ""
        grace = 0.0
        escalated = False
        try:
            await asyncio.wait(
                [exited, stopped], timeout=timeout or None, return_when=asyncio.FIRST_COMPLETED
            )
            if not exited.done():
                stop_reason = "CANCELLED" if stopped.done() else "TIMED_OUT"
                grace = run._cancel_grace if stop_reason == "CANCELLED" else self.limits.kill_grace_s
                escalated = await self._terminate(exited, grace)
            else:
                # The job is over once its main process is: stray background processes go too.
                await self._terminate(exited, self.limits.leftover_grace_s, only_leftovers=True)
            status = await exited
        except BaseException:
            # The agent itself is going away: never leave the job running unsupervised.
            _signal_group(proc.pid, signal.SIGKILL)
            raise
        finally:
            stopped.cancel()
            sampling.cancel()
        wall = time.monotonic() - started
        await self._drain()
        await throttle.close()
        await batcher.close()

        result = job_pb2.JobResult(exit_code=status.exit_code, signal=status.signal)
        result.usage.CopyFrom(
            resources_pb2.ResourceUsage(
                cpu_seconds=max(sampler.cpu_seconds, status.cpu_s),
                max_rss_bytes=max(sampler.peak_rss, status.max_rss),
                wall_time=duration(wall),
            )
        )

        def outcome(
            state: job_pb2.JobState.ValueType,
            reason: str,
            error: str,
            failure_class: job_pb2.FailureClass.ValueType | None = None,
        ) -> RunOutcome:
            return run._outcome(
                state,
                reason,
                error,
                result=result,
                dropped=batcher.dropped,
                malformed=channel.malformed,
                failure_class=failure_class,
            )

        kill_note = (
            f"; still running {_seconds(grace)} after SIGTERM, killed with SIGKILL" if escalated else ""
        )
        if stop_reason == "CANCELLED":
            return outcome(job_pb2.JOB_STATE_CANCELLED, "CANCELLED", "cancelled" + kill_note)
        if stop_reason == "TIMED_OUT":
            return outcome(
                job_pb2.JOB_STATE_TIMED_OUT, "TIMED_OUT", f"timed out after {_seconds(timeout)}" + kill_note
            )
        tail = run.stderr_tail()
        tail_note = f"\n{tail}" if tail else ""
        if status.signal or status.exit_code != 0:
            how = f"exited with code {status.exit_code}"
            if status.signal:
                how = f"killed by signal {_signal_name(status.signal)}"
            declared = failures.read_declared(run.work_dir / failures.FAILURE_FILE)
            if declared is not None:
                # The job knows best why it failed (a corrupt source is not worth a retry).
                text = f"{declared.code}: {declared.message or how} ({how})"
                return outcome(job_pb2.JOB_STATE_FAILED, declared.code, text, declared.failure_class)
            full = await asyncio.to_thread(self._disk_full, tail)
            if full:
                return outcome(job_pb2.JOB_STATE_FAILED, "NO_SPACE", f"NO_SPACE: {full} ({how}){tail_note}")
        if status.signal:
            return outcome(
                job_pb2.JOB_STATE_FAILED,
                "SIGNAL",
                f"killed by signal {_signal_name(status.signal)}{tail_note}",
            )
        if status.exit_code != 0:
            return outcome(
                job_pb2.JOB_STATE_FAILED, "EXIT_CODE", f"exited with code {status.exit_code}{tail_note}"
            )
        if self.spec.outputs:
            try:
                stored = await run._interruptible(
                    staging.stage_outputs(
                        run.stores,
                        self.spec.outputs,
                        run.work_dir,
                        self.spec.tenant or "default",
                        self.owner._output_owner(),
                    )
                )
            except _Stopped:
                return outcome(job_pb2.JOB_STATE_CANCELLED, "CANCELLED", "cancelled while storing outputs")
            except staging.StagingError as exc:
                return outcome(job_pb2.JOB_STATE_FAILED, exc.reason, f"{exc.reason}: {exc}")
            result.outputs.extend(stored)
        try:
            output = read_result(run.work_dir / RESULT_FILE)
        except ValueError as exc:
            return outcome(job_pb2.JOB_STATE_FAILED, "BAD_RESULT", f"BAD_RESULT: {exc}")
        if output is not None:
            result.output.update(output)
        return outcome(job_pb2.JOB_STATE_SUCCEEDED, "", "")

    def _disk_full(self, tail: str) -> str:
        """Why the failed job's disk counts as full ("" when it does not)."""
        work_dir = self.owner.work_dir
        if failures.says_disk_full(tail):
            return "disk full: the job reported 'No space left on device'"
        try:
            free = failures.free_bytes(work_dir)
        except OSError:
            return ""
        if free < self.limits.min_free_bytes:
            return f"disk full: {work_dir} has {free} bytes free (reserve {self.limits.min_free_bytes})"
        return ""

    async def _terminate(
        self, exited: asyncio.Task[_Exit], grace: float, *, only_leftovers: bool = False
    ) -> bool:
        """SIGTERM the process group, wait up to ``grace`` for all of it to exit, then SIGKILL.

        Returns whether SIGKILL was needed. With ``only_leftovers`` the main process has already
        exited and only what remains of its group is stopped (nothing, usually).
        """
        pgid = self.owner._pid
        assert pgid is not None
        if only_leftovers and not _group_alive(pgid):
            return False
        _signal_group(pgid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), grace)
        # The main process may exit at once and leave children that ignore SIGTERM: wait for the group.
        # Nothing signals "the group is empty": poll it.
        while _group_alive(pgid) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        escalated = not exited.done() or _group_alive(pgid)
        if escalated:
            _signal_group(pgid, signal.SIGKILL)
        if self.engine is not None and not only_leftovers:
            # Killing the CLI does not stop its container.
            await containers.remove(self.engine, self.container)
        await asyncio.shield(exited)
        return escalated

    async def _drain(self) -> None:
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


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the agent's environment a job inherits: :data:`INHERITED_ENV` and ``LC_*``.

    The agent's own interpreter directory comes first on ``PATH``, so a job finds the tools installed
    with the agent (``python3 -m cosmos.optimus.media``, ``cosmos``) without an image.
    """
    env = {k: v for k, v in environ.items() if k in INHERITED_ENV or k.startswith("LC_")}
    tools = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(
        [tools, *(p for p in env.get("PATH", os.defpath).split(os.pathsep) if p != tools)]
    )
    return env


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


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs; zombies do not count.

    ``killpg(pgid, 0)`` alone also sees zombies: orphans are reparented to PID 1, and where PID 1
    never reaps (a container without an init, some sandboxes) they stay zombies for good.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member changed its uid (a setuid program): still there
    return bool(group_members(pgid)) if os.path.isdir("/proc/self") else True


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid``, from ``/proc``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # Fields after "(comm)": state, ppid, pgrp, ...; comm itself may hold spaces and parens.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


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


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)


def _seconds(value: float) -> str:
    """``30s``, ``1.5s``: durations as people write them."""
    return f"{value:g}s"


def _safe_name(job_id: str) -> str:
    # A job id becomes a directory name: keep it one path component.
    name = job_id.replace("/", "_").replace("\\", "_")
    return "_" + name if name in ("", ".", "..") else name


async def _ignore(_: Any) -> None:
    return None


RESULT_FILE = ".cosmos-result.json"
"""Where a job may write its structured result (``$COSMOS_RESULT_FILE``), relative to its work dir."""
MAX_RESULT_BYTES = 1 << 20


def read_result(path: Path) -> dict[str, Any] | None:
    """The JSON object a job wrote as its result, None if it wrote none; ValueError if malformed."""
    try:
        # The job owns its work dir: never follow a link it put there to a file only the agent may read.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"result file cannot be read: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("result file is not a regular file")
        data = handle.read(MAX_RESULT_BYTES + 1)
    if len(data) > MAX_RESULT_BYTES:
        raise ValueError(f"result file is larger than {MAX_RESULT_BYTES} bytes")
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"result file is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError("result file must hold a JSON object")
    return value
