"""Replaying a trace through the real :class:`~cosmos.stratum.scheduling.Scheduler`.

Each task arrives in order, is submitted and scheduled at once; tasks never finish (the FGD
paper's inflation experiment), so a task that does not fit when it arrives never will and is
cancelled and counted as failed. Only the scheduler's calls (submit, schedule, cancel) are timed.

Definitions used in the report (GPU capacity in GPUs = milli-GPUs / 1000):

- *arrived workload*: GPU demand of all tasks arrived so far (placed or not) / cluster GPU capacity.
- *allocation ratio at x%*: allocated GPU / capacity right after the arrival that took the arrived
  workload to x% or more.
- *unallocated GPUs*: capacity - allocated GPU, in GPUs; "at 100%" when the arrived workload first
  reaches 100%, "at the end" when it reaches the inflation target (saturation).
- *fragmentation ratio*: sum over nodes of F_n / idle GPU capacity, with F_n as in the paper (see
  :mod:`cosmos.stratum.scheduling.fragmentation`; CPU and memory only decide whether one task
  fits) w.r.t. the mix of GPU tasks of the whole trace: the same yardstick for every policy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cosmos.stratum.scheduling import MILLI, NodeState, Scheduler, TaskMix
from cosmos.stratum.scheduling.cluster import fragmentation
from cosmos.stratum.scheduling.fragmentation import CompiledMix
from cosmos.stratum.scheduling.mix import mix_of
from cosmos.stratum.sim.trace import Pod, arrivals

CHECKPOINTS = (50, 80, 100, 120)
"""Arrived workload levels (% of GPU capacity) at which the allocation ratio is reported."""


@dataclass
class PolicyResult:
    """What one policy achieved on one replay."""

    policy: str
    tasks_arrived: int = 0
    tasks_placed: int = 0
    tasks_failed: int = 0
    failed_gpu_demand: float = 0.0
    """GPUs asked for by failed tasks."""
    arrived_workload: float = 0.0
    """Arrived GPU demand / capacity at the end."""
    allocation_ratio: dict[str, float | None] = field(default_factory=dict)
    """By checkpoint ("50%", ...): allocated / capacity; ``None`` if the replay stopped before it."""
    allocation_ratio_end: float = 0.0
    unallocated_gpus_at_100: float | None = None
    unallocated_gpus_end: float = 0.0
    fragmentation_ratio: dict[str, float | None] = field(default_factory=dict)
    """By checkpoint: fragmented / idle GPU capacity; ``None`` if the replay stopped before it."""
    fragmentation_ratio_end: float = 0.0
    scheduler_seconds: float = 0.0
    placements_per_second: float = 0.0
    """Placed tasks / time spent in the scheduler (failed attempts' time included)."""
    decisions_per_second: float = 0.0
    """Arrived tasks (placed or failed) / time spent in the scheduler."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def reference_mix(pods: list[Pod]) -> TaskMix:
    """The exact mix of the trace's GPU tasks, for a fragmentation ratio comparable across policies."""
    return mix_of([pod.demand(pod.name, 0.0) for pod in pods if pod.num_gpu])


def cluster_fragmentation(scheduler: Scheduler, mix: CompiledMix) -> tuple[float, float]:
    """(fragmented, idle) milli-GPUs of the whole cluster."""
    return fragmentation(scheduler.cluster, mix)


def replay(
    nodes: list[NodeState],
    pods: list[Pod],
    policy: str,
    *,
    inflation: float = 1.3,
    seed: int = 42,
    limit: int | None = None,
    mix: TaskMix | None = None,
) -> PolicyResult:
    """Replay ``pods`` on ``nodes`` (fresh states, owned by the run) with ``policy``."""
    scheduler = Scheduler(policy)
    for node in nodes:
        scheduler.add_node(node)
    capacity = scheduler.cluster.totals[2]
    # The paper's measure (count_fit=False), not the one FGD optimises here: no home advantage.
    reference = CompiledMix(
        mix if mix is not None else reference_mix(pods), scheduler.cluster.codes, count_fit=False
    )
    result = PolicyResult(policy=policy)
    pending_checkpoints = list(CHECKPOINTS)
    allocated = 0
    arrived = 0
    spent = 0.0
    clock = time.perf_counter

    def unallocated() -> float:
        return (capacity - allocated) / MILLI

    def frag_ratio() -> float:
        frag, idle = cluster_fragmentation(scheduler, reference)
        return frag / idle if idle else 0.0

    for sequence, (job_id, pod) in enumerate(arrivals(pods, int(inflation * capacity), seed)):
        if limit is not None and sequence >= limit:
            break
        demand = pod.demand(job_id, float(sequence))
        started = clock()
        scheduler.submit(demand)
        placed = scheduler.schedule(float(sequence))
        if not placed:
            scheduler.cancel(job_id)
        spent += clock() - started
        result.tasks_arrived += 1
        arrived += demand.gpu_total_milli
        if placed:
            result.tasks_placed += 1
            allocated += demand.gpu_total_milli
        else:
            result.tasks_failed += 1
            result.failed_gpu_demand += demand.gpu_total_milli / MILLI
        while capacity and pending_checkpoints and arrived * 100 >= pending_checkpoints[0] * capacity:
            point = pending_checkpoints.pop(0)
            result.allocation_ratio[f"{point}%"] = allocated / capacity
            result.fragmentation_ratio[f"{point}%"] = frag_ratio()
            if point == 100:
                result.unallocated_gpus_at_100 = unallocated()
    for point in pending_checkpoints:
        result.allocation_ratio[f"{point}%"] = None
        result.fragmentation_ratio[f"{point}%"] = None
    result.arrived_workload = arrived / capacity if capacity else 0.0
    result.allocation_ratio_end = allocated / capacity if capacity else 0.0
    result.unallocated_gpus_end = unallocated()
    result.fragmentation_ratio_end = frag_ratio()
    result.scheduler_seconds = spent
    result.placements_per_second = result.tasks_placed / spent if spent else 0.0
    result.decisions_per_second = result.tasks_arrived / spent if spent else 0.0
    return result
