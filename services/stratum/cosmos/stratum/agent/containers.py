"""The container runtime: jobs with an ``image`` run under ``podman run`` (or ``docker run``).

An engine is usable only when its CLI is installed *and* its engine answers (``podman info``): a
client without an engine is common on CI hosts. Without one, image jobs are refused before they
start with ``UNSUPPORTED_RUNTIME``; agents advertise only the engines that answer (see
:func:`available`), so Stratum places image jobs on agents that have one.

podman needs an OCI runtime: Debian's podman prefers ``crun``, which fails on hosts with a cgroup v1
(hybrid) layout, while ``runc`` works there. So an agent uses ``runc`` whenever it is installed
(``COSMOS_OCI_RUNTIME`` names another), and podman's own default otherwise.

What a container job gets (see docs/security.md, "Container jobs"): no network, a non-root user,
its work dir as the only bind mount, a read-only root filesystem with private tmpfs ``/tmp``, no
capabilities, no new privileges, CPU, memory, pid and rlimit caps from the job's resources, and
only the environment a process job would get (secrets forwarded by name, never on a command line).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cosmos import errors
from cosmos.stratum.v1 import job_pb2

PROCESS = "process"
ENGINES = ("podman", "docker")
"""Engines in order of preference: podman first (rootless-capable, no daemon; what the project
installs and tests)."""
CONTAINER_WORK_DIR = "/work"
"""Where the job's work dir is mounted inside the container."""
UNPRIVILEGED_UID = 65534
"""Who a container job runs as when the agent has no sandbox uid for it (``nobody``)."""
OCI_RUNTIME_ENV = "COSMOS_OCI_RUNTIME"
"""Names the OCI runtime podman should use, overriding the choice of :func:`oci_runtime`."""
OCI_RUNTIMES = ("runc", "crun")
CDI_SPEC_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
"""Where the NVIDIA container toolkit writes its CDI spec (``nvidia-ctk cdi generate``)."""

CLIENT_ENV = (
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "CONTAINER_HOST",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
)
"""Agent variables the container CLI (not the job) inherits, to find its engine and storage."""
INFO_TIMEOUT_S = 10.0
_CACHE_TTL_S = 30.0
_answers_cache: dict[str, tuple[float, bool]] = {}


class UnsupportedRuntime(errors.CosmosError):
    """The job's runtime is not available on this agent."""

    reason = "UNSUPPORTED_RUNTIME"


@dataclass(frozen=True)
class Engine:
    """A container engine whose daemon answered."""

    name: str
    """``docker`` or ``podman``."""
    cli: str
    """Absolute path of its CLI."""
    oci_runtime: str = ""
    """The OCI runtime podman is told to use (``--runtime``); empty: the engine's default."""


@dataclass(frozen=True)
class ContainerUser:
    """Who the job runs as inside its container."""

    uid: int = UNPRIVILEGED_UID
    gid: int = UNPRIVILEGED_UID
    keep_id: bool = False
    """Rootless podman: run as the agent's own (non-root) user, mapped to itself (``--userns keep-id``)."""


@dataclass(frozen=True)
class ContainerLimits:
    """The resource caps of one container job (0: none)."""

    cpus: float = 0.0
    memory_bytes: int = 0
    pids: int = 0
    open_files: int = 0
    file_size_bytes: int = 0


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


def oci_runtime(environ: Mapping[str, str] | None = None) -> str:
    """The OCI runtime podman should use: ``$COSMOS_OCI_RUNTIME``, else ``runc`` if installed, else ""."""
    environ = os.environ if environ is None else environ
    if chosen := environ.get(OCI_RUNTIME_ENV, "").strip():
        return chosen
    # runc lives in /usr/sbin on Debian, which a non-root PATH may lack.
    path = f"{environ.get('PATH', os.defpath)}{os.pathsep}/usr/sbin{os.pathsep}/sbin"
    for name in OCI_RUNTIMES:
        if shutil.which(name, path=path):
            return name
    return ""


async def find_engine(names: Sequence[str] = ENGINES) -> Engine | None:
    """The first of ``names`` that is installed and whose engine answers."""
    for name in names:
        cli = shutil.which(name)
        if cli is not None and await engine_answers(cli):
            return Engine(name, cli, oci_runtime() if name == "podman" else "")
    return None


async def available() -> list[str]:
    """The container engines this agent can run jobs with (what its inventory advertises)."""
    found = []
    for name in ENGINES:
        cli = shutil.which(name)
        if cli is not None and await engine_answers(cli):
            found.append(name)
    return found


def acceptable_engines(spec: job_pb2.JobSpec) -> tuple[str, ...]:
    """The engines that may run ``spec``: none for a process job, any engine for ``runtime`` empty or
    ``docker`` (podman runs docker's command line), else just the one named."""
    if not spec.image:
        return ()
    runtime = spec.runtime or "docker"
    if runtime == "docker":
        return ENGINES
    return (runtime,) if runtime in ENGINES else ()


async def resolve(spec: job_pb2.JobSpec) -> Engine | None:
    """The engine to run ``spec`` in, or None for a host process.

    ``spec.runtime`` empty means ``process`` without an image and any engine with one (podman first);
    ``docker`` falls back to podman (its CLI is compatible). Raises :class:`UnsupportedRuntime` when
    it cannot run here.
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
    # docker means "docker's command line": try docker first, then podman, for such jobs.
    order = ("docker", "podman") if spec.runtime == "docker" else acceptable_engines(spec)
    engine = await find_engine(order)
    if engine is None:
        raise UnsupportedRuntime(f"image jobs need {' or '.join(order)}; none is available on this agent")
    gpus = spec.resources.gpu.count or spec.resources.gpu.share
    if gpus and engine.name == "podman" and not cdi_spec_present():
        raise UnsupportedRuntime(
            "GPU jobs in a container need the NVIDIA container toolkit's CDI spec "
            f"(nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml); none in "
            f"{' or '.join(str(d) for d in CDI_SPEC_DIRS)}"
        )
    return engine


def cdi_spec_present(dirs: Sequence[Path] | None = None) -> bool:
    """Whether an NVIDIA CDI spec exists (podman's ``--device nvidia.com/gpu=N`` needs one)."""
    for directory in CDI_SPEC_DIRS if dirs is None else dirs:
        with contextlib.suppress(OSError):
            if any(p.name.startswith("nvidia") for p in directory.iterdir()):
                return True
    return False


def container_name(job_id: str, attempt: int) -> str:
    """``cosmos-<job>-<attempt>``, with characters a container name cannot hold replaced."""
    return re.sub(r"[^a-zA-Z0-9_.-]", "_", f"cosmos-{job_id}-{attempt}")


def _capped(value: int, which: int) -> int:
    """``value`` within this process's hard rlimit: without CAP_SYS_RESOURCE (some hosts drop it even
    for root) the OCI runtime cannot raise a limit past it, and the container fails to start."""
    _, hard = resource.getrlimit(which)
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def run_argv(
    engine: Engine,
    *,
    name: str,
    image: str,
    argv: Sequence[str],
    work_dir: Path,
    env_names: Sequence[str],
    gpu_indices: Sequence[int],
    user: ContainerUser | None = None,
    limits: ContainerLimits | None = None,
) -> list[str]:
    """The ``podman run`` (``docker run``) command line for a job.

    Environment variables are passed by name only (``-e NAME``): the CLI reads their values from its
    own environment, so secrets never appear in the process list. Flags that take a value are written
    ``--flag=value`` (one argument each).
    """
    user = user or ContainerUser()
    limits = limits or ContainerLimits()
    cmd = [engine.cli]
    if engine.oci_runtime:
        cmd.append(f"--runtime={engine.oci_runtime}")
    cmd += ["run", "--rm", "--init", "--name", name, "--label", "cosmos.stratum.job=" + name]
    cmd += [
        # Local images only: no registry is asked (none may be reachable, and a tag must not change
        # under a running fleet).
        "--pull=never",
        "--network=none",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        # The image cannot be modified; /tmp, /var/tmp and /run are private tmpfs (podman's default
        # with --read-only; docker gets an explicit /tmp).
        "--read-only=true",
    ]
    if engine.name == "docker":
        cmd.append("--tmpfs=/tmp:rw,nosuid,nodev")
    if engine.name == "podman":
        # As a process job's (sandbox_plan.JOB_UMASK): what the job writes stays private to its tenant.
        cmd.append("--umask=0027")
    if user.keep_id:
        cmd.append("--userns=keep-id")
    else:
        cmd.append(f"--user={user.uid}:{user.gid}")
    if limits.cpus > 0:
        cmd.append(f"--cpus={limits.cpus:g}")
    if limits.memory_bytes > 0:
        cmd.append(f"--memory={limits.memory_bytes}")
    if limits.pids > 0:
        cmd.append(f"--pids-limit={limits.pids}")
        nproc = _capped(limits.pids, resource.RLIMIT_NPROC)
        cmd.append(f"--ulimit=nproc={nproc}:{nproc}")
    if limits.open_files > 0:
        nofile = _capped(limits.open_files, resource.RLIMIT_NOFILE)
        cmd.append(f"--ulimit=nofile={nofile}:{nofile}")
    if limits.file_size_bytes > 0:
        # --ulimit counts fsize in 1 KiB blocks (as ulimit -f).
        fsize = _capped(limits.file_size_bytes, resource.RLIMIT_FSIZE) // 1024
        cmd.append(f"--ulimit=fsize={fsize}:{fsize}")
    cmd.append("--ulimit=core=0:0")  # core dumps would hold the job's secrets
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
    cmd = [engine.cli]
    if engine.oci_runtime:
        cmd.append(f"--runtime={engine.oci_runtime}")
    # podman waits 10 s for a stop signal first unless told not to; the job already had its grace.
    cmd += ["rm", "-f", *(["-t", "0"] if engine.name == "podman" else []), name]
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
