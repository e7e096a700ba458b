"""Reading the Alibaba GPU trace (openb, 2023): nodes become agents, pods become demands."""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cosmos.stratum.scheduling import MILLI, Demand, NodeState

DEFAULT_NODES = "openb_node_list_gpu_node.csv"
DEFAULT_PODS = "openb_pod_list_default.csv"
TRACE_ENV = "COSMOS_TRACE_DIR"
_MIB = 1 << 20


def find_trace_dir() -> Path:
    """``$COSMOS_TRACE_DIR``, else ``../shared/traces/alibaba-gpu-v2023`` next to the repo root."""
    if env := os.environ.get(TRACE_ENV):
        return Path(env)
    starts = [Path.cwd(), Path(__file__).resolve()]
    for start in starts:
        for directory in [start, *start.parents]:
            if (directory / "pyproject.toml").is_file():
                candidate = directory.parent / "shared" / "traces" / "alibaba-gpu-v2023"
                if candidate.is_dir():
                    return candidate
    raise FileNotFoundError(
        f"trace not found: pass --trace-dir or set ${TRACE_ENV} "
        "(looked for ../shared/traces/alibaba-gpu-v2023 next to the repository)"
    )


def load_nodes(path: Path, *, sample: int | None = None) -> list[NodeState]:
    """Nodes from ``sn,cpu_milli,memory_mib,gpu,model``; ``sample`` keeps every k-th node (same mix)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if sample is not None and 0 < sample < len(rows):
        stride = len(rows) / sample
        rows = [rows[int(i * stride)] for i in range(sample)]
    return [
        NodeState.idle(
            row["sn"],
            int(row["cpu_milli"]),
            int(row["memory_mib"]) * _MIB,
            [row["model"]] * int(row["gpu"]),
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Pod:
    """One task of the trace."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: str
    creation_time: float

    @property
    def gpu_demand_milli(self) -> int:
        return self.num_gpu * self.gpu_milli

    def demand(self, job_id: str, now: float) -> Demand:
        """The pod as a scheduler demand."""
        return Demand(
            job_id=job_id,
            cpu_milli=self.cpu_milli,
            memory_bytes=self.memory_mib * _MIB,
            gpu_count=self.num_gpu,
            gpu_milli=self.gpu_milli if self.num_gpu else 0,
            models=frozenset(self.gpu_spec.split("|")) if self.gpu_spec else frozenset(),
            enqueue_time=now,
        )


def load_pods(path: Path) -> list[Pod]:
    """Pods in arrival order (``creation_time``, then file order; files without it keep file order)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    pods = [
        Pod(
            name=row["name"],
            cpu_milli=int(row["cpu_milli"]),
            memory_mib=int(row["memory_mib"]),
            num_gpu=int(row["num_gpu"]),
            gpu_milli=min(int(row["gpu_milli"]), MILLI),
            gpu_spec=(row.get("gpu_spec") or "").strip(),
            creation_time=float(row.get("creation_time") or position),
        )
        for position, row in enumerate(rows)
    ]
    order = sorted(range(len(pods)), key=lambda i: (pods[i].creation_time, i))
    return [pods[i] for i in order]


def arrivals(pods: list[Pod], target_gpu_milli: int, seed: int) -> Iterator[tuple[str, Pod]]:
    """The trace in arrival order, then tasks resampled from it (seeded), until the arrived GPU
    demand reaches ``target_gpu_milli`` (workload inflation, as in the FGD paper); yields (job id, pod).
    """
    rng = random.Random(seed)
    arrived = 0
    copies = 0
    if not any(pod.gpu_demand_milli for pod in pods):
        # Nothing to inflate with: CPU-only traces are replayed once.
        target_gpu_milli = 0
        yield from ((pod.name, pod) for pod in pods)
    while arrived < target_gpu_milli:
        if copies < len(pods):
            pod = pods[copies]
            job_id = pod.name
        else:
            pod = rng.choice(pods)
            job_id = f"{pod.name}~{copies}"
        copies += 1
        arrived += pod.gpu_demand_milli
        yield job_id, pod
