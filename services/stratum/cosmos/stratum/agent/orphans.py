"""Job processes left behind by an agent that died without stopping them, found and stopped.

Every job process runs in its own session (so a cancel reaches all of it), which also means it
outlives an agent killed with SIGKILL or lost with its container's init. Such a process keeps using
the host's CPU and GPUs while Stratum, once the agent's lease expires, runs the job again elsewhere.

A container job's process is the engine's CLI, and its container may outlive even that: its marker
also names the container, which a restarted agent force-removes through the engine.

When the agent starts a job process it writes a marker into the attempt's work dir (:data:`MARKER`):
the job's pid and start time, and the agent's own. On start-up an agent reads the markers under its
work root; a marker whose agent process is gone (no process with that pid and start time) belongs to
a dead agent, and its job process, if still the same process, is killed with its process group. An
agent still running (another agent sharing the work root) keeps its jobs. The dead attempt's work
dir is removed: its job runs again elsewhere as a new attempt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = ["MARKER", "Reaped", "forget", "reap", "remember"]

log = logging.getLogger(__name__)

MARKER = ".cosmos-job.json"
"""The marker's file name in an attempt's work dir."""


@dataclass(frozen=True)
class Reaped:
    """A job process of a dead agent that was stopped."""

    job_id: str
    attempt: int
    pid: int


def _started(pid: int) -> float | None:
    """The start time of process ``pid``, or None when there is none."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _same(pid: int, started: float) -> bool:
    # A pid is reused once its process is gone; the start time tells the two apart.
    now = _started(pid)
    return now is not None and abs(now - started) < 0.01


def remember(
    work_dir: Path, job_id: str, attempt: int, pid: int, container: tuple[str, str, str] | None = None
) -> None:
    """Write the marker of a job process this agent has just started; ``container``: (engine name,
    OCI runtime, container name) of a container job."""
    data: dict[str, Any] = {
        "job_id": job_id,
        "attempt": attempt,
        "pid": pid,
        "started": _started(pid),
        "agent_pid": os.getpid(),
        "agent_started": _started(os.getpid()),
    }
    if container is not None:
        data["engine"], data["oci_runtime"], data["container"] = container
    # The work dir belongs to the (running) job: never write through a name it may have planted.
    tmp = work_dir / f".{MARKER}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(data) + "\n")
    os.replace(tmp, work_dir / MARKER)


def forget(work_dir: Path) -> None:
    """Remove the marker of a job process that has ended (its work dir is kept)."""
    with contextlib.suppress(FileNotFoundError):
        (work_dir / MARKER).unlink()


def _kill_group(pid: int, started: float, wait_s: float) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the job leads its own process group
    deadline = time.monotonic() + wait_s
    while _same(pid, started) and time.monotonic() < deadline:
        time.sleep(0.02)


def reap(work_root: Path, wait_s: float = 5.0) -> list[Reaped]:
    """Stop the job processes of dead agents found under ``work_root``; returns what was stopped."""
    reaped: list[Reaped] = []
    for marker in sorted(work_root.glob(f"*/*/{MARKER}")):
        try:
            info = marker.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                # Only this agent's user writes markers; a sandboxed job could forge one naming
                # any process (pid 1) for the next agent to kill.
                raise ValueError(f"not a marker written by the agent (owner uid {info.st_uid})")
            data: dict[str, Any] = json.loads(marker.read_text())
            pid, started = int(data["pid"]), data.get("started")
            agent_pid, agent_started = int(data["agent_pid"]), data.get("agent_started")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable job marker", extra={"fields": {"path": str(marker), "error": repr(exc)}})
            continue
        if isinstance(agent_started, float) and _same(agent_pid, agent_started):
            continue  # its agent is alive (another agent sharing this work root)
        if isinstance(started, float) and _same(pid, started):
            _kill_group(pid, started, wait_s)
            reaped.append(Reaped(str(data.get("job_id", "")), int(data.get("attempt", 0)), pid))
            log.warning(
                "stopped a job process left by a dead agent",
                extra={"fields": {"job_id": data.get("job_id"), "attempt": data.get("attempt"), "pid": pid}},
            )
        if data.get("container"):
            _remove_container(data)
        shutil.rmtree(marker.parent, ignore_errors=True)
        with contextlib.suppress(OSError):
            marker.parent.parent.rmdir()  # only when no other attempt of the job is there
    return reaped


ENGINES = ("podman", "docker")


def _remove_container(data: dict[str, Any]) -> None:
    """Force-remove a dead agent's container: killing its CLI does not stop it."""
    engine, name = str(data.get("engine", "")), str(data["container"])
    # The engine is looked up here, never taken as a path from the marker.
    cli = shutil.which(engine) if engine in ENGINES else None
    if cli is None:
        log.warning("cannot remove a dead agent's container", extra={"fields": {"container": name}})
        return
    runtime = str(data.get("oci_runtime") or "")
    argv = [cli, *([f"--runtime={runtime}"] if runtime else []), "rm", "-f"]
    argv += [*(["-t", "0"] if engine == "podman" else []), name]
    try:
        subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning(
            "cannot remove a dead agent's container",
            extra={"fields": {"container": name, "error": repr(exc)}},
        )
        return
    log.warning(
        "removed a container left by a dead agent",
        extra={"fields": {"job_id": data.get("job_id"), "attempt": data.get("attempt"), "container": name}},
    )
