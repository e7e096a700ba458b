"""The job's process: its command line and environment, and one run of it from spawn to outcome.

:class:`JobProcess` is the running half of a :class:`~cosmos.stratum.agent.runner.JobRun`: it sets
its owner's pid and state when the process starts. The job runs as its own session and process group,
so cancel and timeout reach every process it started.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cosmos.stratum.agent import containers, failures, orphans, reporting
from cosmos.stratum.agent.attempt import Refused, RunOutcome
from cosmos.stratum.agent.pipes import JobPipes
from cosmos.stratum.agent.preparation import Prepared, container_limits
from cosmos.stratum.agent.progress import ChannelParser
from cosmos.stratum.agent.rate_limits import LogBatcher, ProgressThrottle
from cosmos.stratum.agent.result_file import RESULT_FILE
from cosmos.stratum.agent.supervision import supervise
from cosmos.stratum.v1 import job_pb2

if TYPE_CHECKING:
    from cosmos.stratum.agent.runner import JobRun

# The runner's logger, as before the split: "job attempt started" and "ended" share one logger name.
log = logging.getLogger("cosmos.stratum.agent.runner")

INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH")
"""Agent environment variables a job inherits (plus every ``LC_*``); nothing else leaks into jobs."""


class JobProcess:
    """The running part of an attempt: spawn, supervise, collect, stage outputs."""

    def __init__(self, run: JobRun, prepared: Prepared) -> None:
        self.owner = run
        self.spec = run.spec
        self.limits = run.limits
        self.prepared = prepared
        self.engine = prepared.engine
        self.container = containers.container_name(run.job_id, run.attempt) if self.engine else ""
        self.progress_format = self.spec.progress_format
        self.pipes = JobPipes(self.limits, run.work_dir, container=self.engine is not None)

    async def run(self) -> RunOutcome:
        """Open the pipes, spawn, supervise until the end, then report; the pipes close whatever happens."""
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
                await self.pipes.open(self.spec, run.mask, run._stderr_tail, throttle, batcher, channel)
                proc = self._spawn()
            except BaseException:
                self.pipes.close_child_fds()
                raise
            ended = await supervise(run, proc, self.engine, self.container)
            await self.pipes.drain()
            await throttle.close()
            await batcher.close()
            return await reporting.report(
                run, self.prepared, ended, dropped=batcher.dropped, malformed=channel.malformed
            )
        finally:
            self.pipes.close()
            await throttle.close()
            await batcher.close()

    def _argv(self) -> list[str]:
        argv = list(self.spec.argv)
        if self.progress_format == job_pb2.PROGRESS_FORMAT_FFMPEG:
            # Global options go first; -nostats keeps ffmpeg's \r status line out of the logs.
            argv[1:1] = ["-progress", self.pipes.progress_target, "-nostats"]
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
            user=self.prepared.container_user,
            limits=container_limits(self.owner.jail, self.spec),
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
                fd = self.pipes.progress_target.removeprefix("pipe:")
                env["COSMOS_PROGRESS_FD"] = fd
                env["COSMOS_PROGRESS_FILE"] = f"/dev/fd/{fd}"
            else:
                env["COSMOS_PROGRESS_FILE"] = self.pipes.progress_target
        return env

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = self._argv()
        env = self._job_env()
        if self.engine is not None:
            # The CLI runs on the host: it needs PATH and its engine settings, and forwards the
            # job's variables by name.
            env = {**inherited_env(os.environ), **containers.client_env(os.environ), **env}
        pipes = self.pipes
        plan = self.prepared.plan
        plan_fd = -1
        if plan is not None:
            if shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
                raise Refused("SPAWN_FAILED", f"cannot start {argv[0]!r}: no such program")
            # The helper sets the sandbox up as root, then execs argv (same pid) with env.
            argv, plan_fd = plan.command(argv, env)
            pipes.child_fds.append(plan_fd)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.owner.work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=pipes.stdout_w,
                stderr=pipes.stderr_w,
                pass_fds=[fd for fd in pipes.child_fds if fd not in (pipes.stdout_w, pipes.stderr_w)],
                start_new_session=True,  # own session and process group: cancel reaches every process
            )
        except OSError as exc:
            raise Refused("SPAWN_FAILED", f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
        finally:
            pipes.close_child_fds()
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
