"""The container runtime: jobs with an ``image`` run under ``docker run`` (or ``podman run``).

An engine is usable only when its CLI is installed *and* its daemon answers (``docker info``): a
client without an engine is common on CI hosts. Without one, image jobs are refused before they
start with ``UNSUPPORTED_RUNTIME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cosmos.stratum.v1 import job_pb2

PROCESS = "process"
ENGINES = ("docker", "podman")
CONTAINER_WORK_DIR = "/work"
"""Where the job's work dir is mounted inside the container."""

CLIENT_ENV = (
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "CONTAINER_HOST",
    "CONTAINERS_CONF",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
)
"""Agent variables the container CLI (not the job) inherits, to find its engine."""
INFO_TIMEOUT_S = 5.0
_CACHE_TTL_S = 30.0
_answers_cache: dict[str, tuple[float, bool]] = {}


class UnsupportedRuntime(Exception):
    """The job's runtime is not available on this agent."""

    reason = "UNSUPPORTED_RUNTIME"


@dataclass(frozen=True)
class Engine:
    """A container engine whose daemon answered."""

    name: str
    """``docker`` or ``podman``."""
    cli: str
    """Absolute path of its CLI."""


async def engine_answers(cli: str, timeout: float = INFO_TIMEOUT_S) -> bool:
    """Whether ``<cli> info`` succeeds within ``timeout`` seconds (cached for a short while)."""
    cached = _answers_cache.get(cli)
    if cached is not None and time.monotonic() - cached[0] < _CACHE_TTL_S:
        return cached[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            cli, "info", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        ok = False
    else:
        try:
            ok = await asyncio.wait_for(proc.wait(), timeout) == 0
        except TimeoutError:
            ok = False
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    _answers_cache[cli] = (time.monotonic(), ok)
    return ok


async def find_engine(names: Sequence[str] = ENGINES) -> Engine | None:
    """The first of ``names`` that is installed and whose engine answers."""
    for name in names:
        cli = shutil.which(name)
        if cli is not None and await engine_answers(cli):
            return Engine(name, cli)
    return None


async def resolve(spec: job_pb2.JobSpec) -> Engine | None:
    """The engine to run ``spec`` in, or None for a host process.

    ``spec.runtime`` empty means ``process`` without an image and ``docker`` with one; ``docker`` falls
    back to podman (its CLI is compatible). Raises :class:`UnsupportedRuntime` when it cannot run here.
    """
    runtime = spec.runtime or ("docker" if spec.image else PROCESS)
    if runtime == PROCESS:
        if spec.image:
            raise UnsupportedRuntime(f"runtime 'process' cannot run image {spec.image!r}")
        return None
    if runtime not in ENGINES:
        raise UnsupportedRuntime(
            f"unknown runtime {runtime!r}; expected one of: {', '.join((PROCESS, *ENGINES))}"
        )
    if not spec.image:
        raise UnsupportedRuntime(f"runtime {runtime!r} needs an image")
    engine = await find_engine(ENGINES if runtime == "docker" else (runtime,))
    if engine is None:
        raise UnsupportedRuntime("image jobs need docker or podman; none is available on this agent")
    return engine


def container_name(job_id: str, attempt: int) -> str:
    """``cosmos-<job>-<attempt>``, with characters a container name cannot hold replaced."""
    return re.sub(r"[^a-zA-Z0-9_.-]", "_", f"cosmos-{job_id}-{attempt}")


def run_argv(
    engine: Engine,
    *,
    name: str,
    image: str,
    argv: Sequence[str],
    work_dir: Path,
    env_names: Sequence[str],
    gpu_indices: Sequence[int],
) -> list[str]:
    """The ``docker run`` command line for a job.

    Environment variables are passed by name only (``-e NAME``): the CLI reads their values from its
    own environment, so secrets never appear in the process list.
    """
    cmd = [engine.cli, "run", "--rm", "--init", "--name", name, "--label", "cosmos.stratum.job=" + name]
    cmd += ["-v", f"{work_dir.resolve()}:{CONTAINER_WORK_DIR}", "-w", CONTAINER_WORK_DIR]
    if gpu_indices:
        indices = ",".join(str(i) for i in gpu_indices)
        if engine.name == "podman":
            # podman selects NVIDIA GPUs through CDI device names.
            for index in gpu_indices:
                cmd += ["--device", f"nvidia.com/gpu={index}"]
        else:
            # The quotes are part of the value: docker splits --gpus on commas otherwise.
            cmd += ["--gpus", f'"device={indices}"']
    for env_name in env_names:
        cmd += ["-e", env_name]
    return [*cmd, image, *argv]


def client_env(inherited: Mapping[str, str]) -> dict[str, str]:
    """Variables the container CLI itself needs to reach its engine."""
    return {k: inherited[k] for k in CLIENT_ENV if k in inherited}


async def remove(engine: Engine, name: str, timeout: float = 15.0) -> None:
    """Force-remove the job's container: killing the CLI alone leaves the container running."""
    try:
        proc = await asyncio.create_subprocess_exec(
            engine.cli, "rm", "-f", name, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
