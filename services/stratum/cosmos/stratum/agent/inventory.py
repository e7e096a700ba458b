"""What a host offers: CPUs and memory (psutil), GPUs from NVML or declared by configuration."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess

import psutil

from cosmos import errors
from cosmos.stratum.agent import containers
from cosmos.stratum.v1 import agent_pb2

log = logging.getLogger(__name__)

_DECLARED = re.compile(r"^(?:(\d+)x)?([A-Za-z][A-Za-z0-9_.-]*)(?::(\d+)(G|M)i?B?)?$")


def parse_declared_gpus(text: str, agent_id: str) -> list[agent_pb2.Gpu]:
    """GPUs from ``--gpus``: comma-separated ``[COUNTx]MODEL[:MEMORY]``, e.g. ``2xA100:80G,T4``."""
    gpus: list[agent_pb2.Gpu] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _DECLARED.match(part)
        if match is None:
            raise errors.ConfigError(f"--gpus: {part!r} is not [COUNTx]MODEL[:MEMORY], e.g. 2xA100:80G")
        count = int(match.group(1) or 1)
        memory = int(match.group(3) or 0) * (1 << 30 if match.group(4) == "G" else 1 << 20)
        for _ in range(count):
            index = len(gpus)
            gpus.append(
                agent_pb2.Gpu(
                    index=index,
                    uuid=f"GPU-declared-{agent_id}-{index}",
                    model=match.group(2),
                    memory_bytes=memory,
                )
            )
    return gpus


def probe_nvml() -> list[agent_pb2.Gpu]:
    """GPUs reported by NVML (``nvidia-ml-py``); empty where there is no driver or no GPU."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(
                agent_pb2.Gpu(
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    model=short_model(_text(name)),
                    memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def short_model(name: str) -> str:
    """The model token schedulers match on (``NVIDIA A100-SXM4-40GB`` → ``A100``)."""
    for token in name.replace("NVIDIA", "").replace("Tesla", "").split():
        if any(ch.isdigit() for ch in token):
            return token.split("-")[0].upper()
    return name.strip()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def runtimes(allowed: str = "auto") -> list[str]:
    """Job runtimes available here: always ``process``; ``podman``/``docker`` where an engine answers.

    Stratum places a job with an image only on an agent that lists an engine it accepts. ``allowed``
    (``--runtimes``): ``auto`` offers every engine that answers; a comma-separated list offers only
    those of them (``process`` alone keeps container jobs off this host).
    """
    names = [n.strip() for n in allowed.split(",") if n.strip()]
    unknown = sorted(set(names) - {"auto", containers.PROCESS, *containers.ENGINES})
    if unknown:
        raise errors.ConfigError(
            f"--runtimes: unknown {', '.join(unknown)}; expected auto or a list of "
            f"{', '.join((containers.PROCESS, *containers.ENGINES))}"
        )
    offered = containers.ENGINES if "auto" in names else [n for n in containers.ENGINES if n in names]
    return [containers.PROCESS, *(name for name in offered if _engine_answers(name))]


def _engine_answers(cli: str) -> bool:
    # A client without a running engine (common on CI hosts) cannot run containers.
    path = shutil.which(cli)
    if path is None:
        return False
    try:
        done = subprocess.run(
            [path, "info"], capture_output=True, timeout=containers.INFO_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def collect(agent_id: str, declared_gpus: str = "", allowed_runtimes: str = "auto") -> agent_pb2.Inventory:
    """This host's inventory; declared GPUs replace NVML's answer when given."""
    gpus = parse_declared_gpus(declared_gpus, agent_id) if declared_gpus else probe_nvml()
    return agent_pb2.Inventory(
        cpu_millis=(psutil.cpu_count() or 1) * 1000,
        memory_bytes=psutil.virtual_memory().total,
        gpus=gpus,
        runtimes=runtimes(allowed_runtimes),
    )
