"""The dispatcher's view of placement: agents as nodes, jobs as demands, placements back.

:class:`PoolAllocator` is what the dispatcher needs; :class:`SchedulerAllocator` implements it with the
scheduling package (policies, queue order, fair share). Conversions between protobuf (agents, job
specs) and the scheduler's plain model happen here and nowhere else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cosmos.stratum import scheduling
from cosmos.stratum.agent import containers
from cosmos.stratum.v1 import agent_pb2, job_pb2

AS = agent_pb2.AgentState
DEFAULT_CPU_MILLIS = 1000
DEFAULT_MEMORY_BYTES = 512 << 20


@dataclass(frozen=True)
class AgentPlacement:
    """Where one job runs, in the pool's terms (agent id, GPU UUIDs): what the scheduler's own
    :class:`cosmos.stratum.scheduling.Placement` (node id, milli-units held) becomes."""

    job_id: str
    """The job."""
    agent_id: str
    """The agent running it."""
    gpu_indices: tuple[int, ...] = ()
    """Indices of the agent's GPUs it gets (CUDA_VISIBLE_DEVICES)."""
    gpu_uuids: tuple[str, ...] = ()
    """UUIDs of those GPUs."""


class PoolAllocator(Protocol):
    """The pool's resources as the dispatcher takes and returns them: agents come and go, queued jobs
    are placed, running ones hold resources until released. (The scheduling package's ``Placer`` is
    narrower: a policy choosing among the slots that fit one demand.)"""

    def upsert_node(self, agent: agent_pb2.Agent) -> None:
        """Add an agent or refresh its inventory and schedulability."""
        ...

    def remove_node(self, agent_id: str) -> None:
        """Forget an agent (lost); its allocations go with it."""
        ...

    def could_ever_fit(self, spec: job_pb2.JobSpec) -> str | None:
        """None if an idle agent of the pool could run ``spec``, else why not."""
        ...

    def place(self, queued: Sequence[job_pb2.Job]) -> list[AgentPlacement]:
        """Placements for as many queued jobs as fit now, best first; resources are taken."""
        ...

    def reserve(self, job: job_pb2.Job, agent_id: str) -> None:
        """Take the resources of a job already running on ``agent_id`` (reconciliation)."""
        ...

    def release(self, job_id: str) -> None:
        """Give back a job's resources (no-op if it holds none)."""
        ...


def demand_of(spec: job_pb2.JobSpec) -> tuple[int, int, int, int, frozenset[str]]:
    """``(cpu_millis, memory_bytes, gpu_count, gpu_milli, models)`` with defaults applied."""
    res = spec.resources
    cpu = res.cpu_millis or DEFAULT_CPU_MILLIS
    memory = res.memory_bytes or DEFAULT_MEMORY_BYTES
    if res.gpu.share:
        count, milli = 1, max(1, round(res.gpu.share * 1000))
    else:
        count, milli = res.gpu.count, 1000 if res.gpu.count else 0
    return cpu, memory, count, milli, frozenset(m.upper() for m in res.gpu.models)


def schedulable(agent: agent_pb2.Agent) -> bool:
    """Whether new jobs may go to ``agent``."""
    return agent.state == AS.AGENT_STATE_READY


class SchedulerAllocator:
    """:class:`PoolAllocator` over :class:`cosmos.stratum.scheduling.Scheduler` (FGD by default)."""

    def __init__(self, policy: str = "fgd") -> None:
        self.scheduler = scheduling.Scheduler(policy)
        self._uuids: dict[str, list[str]] = {}
        self._observed: set[str] = set()

    def upsert_node(self, agent: agent_pb2.Agent) -> None:
        gpus = [
            scheduling.GpuState(index=g.index, model=g.model, memory_bytes=g.memory_bytes, uuid=g.uuid)
            for g in agent.inventory.gpus
        ]
        self._uuids[agent.agent_id] = [g.uuid for g in agent.inventory.gpus]
        node = scheduling.NodeState.idle(
            agent.agent_id,
            agent.inventory.cpu_millis,
            agent.inventory.memory_bytes,
            gpus,
            labels=dict(agent.labels),
            schedulable=schedulable(agent),
            runtimes=agent.inventory.runtimes or (scheduling.PROCESS_RUNTIME,),
        )
        self.scheduler.upsert_node(node)

    def remove_node(self, agent_id: str) -> None:
        if agent_id in self.scheduler.cluster:
            self.scheduler.remove_node(agent_id)

    def could_ever_fit(self, spec: job_pb2.JobSpec) -> str | None:
        if not len(self.scheduler.cluster):
            return "the pool has no agents"
        return self.scheduler.unfit_reason(_demand("probe", spec))

    def place(self, queued: Sequence[job_pb2.Job]) -> list[AgentPlacement]:
        demands = []
        for job in queued:
            demand = _demand(job.job_id, job.spec, job.update_time.ToNanoseconds() / 1e9)
            if job.job_id not in self._observed:
                # The learned task mix (what FGD protects capacity for) counts each job once.
                self._observed.add(job.job_id)
                self.scheduler.observe(demand)
            demands.append(demand)
        return [self._placement(a.placement) for a in self.scheduler.schedule_demands(demands, time.time())]

    def reserve(self, job: job_pb2.Job, agent_id: str) -> None:
        demand = _demand(job.job_id, job.spec)
        placement = scheduling.Placement(
            job.job_id,
            agent_id,
            tuple(job.gpu_indices),
            demand.gpu_milli,
            demand.cpu_milli,
            demand.memory_bytes,
        )
        # Already held, or the node is unknown: nothing to take.
        with contextlib.suppress(scheduling.PlacementError, KeyError):
            self.scheduler.assume(demand, placement)

    def release(self, job_id: str) -> None:
        self.scheduler.release(job_id)
        self._observed.discard(job_id)

    def _placement(self, placement: scheduling.Placement) -> AgentPlacement:
        uuids = self._uuids.get(placement.node_id, [])
        return AgentPlacement(
            placement.job_id,
            placement.node_id,
            placement.gpu_indices,
            tuple(uuids[i] for i in placement.gpu_indices if i < len(uuids)),
        )


def _demand(job_id: str, spec: job_pb2.JobSpec, enqueue_time: float = 0.0) -> scheduling.Demand:
    cpu, memory, count, milli, models = demand_of(spec)
    return scheduling.Demand(
        job_id,
        cpu_milli=cpu,
        memory_bytes=memory,
        gpu_count=count,
        gpu_milli=milli,
        models=models,
        gpu_memory_bytes=spec.resources.gpu.min_memory_bytes,
        runtimes=frozenset(containers.acceptable_engines(spec)),
        tenant=spec.tenant or "default",
        priority=spec.priority,
        enqueue_time=enqueue_time,
    )
