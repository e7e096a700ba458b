"""The dispatcher's view of placement: agents as nodes, jobs as demands, placements back.

:class:`Placer` is what the dispatcher needs; :class:`SchedulerPlacer` implements it with the
scheduling package (policies, queue order, fair share). Conversions between protobuf (agents, job
specs) and the scheduler's plain model happen here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cosmos.stratum.v1 import agent_pb2, job_pb2

AS = agent_pb2.AgentState
DEFAULT_CPU_MILLIS = 1000
DEFAULT_MEMORY_BYTES = 512 << 20


@dataclass(frozen=True)
class Placement:
    """Where one job runs."""

    job_id: str
    """The job."""
    agent_id: str
    """The agent running it."""
    gpu_indices: tuple[int, ...] = ()
    """Indices of the agent's GPUs it gets (CUDA_VISIBLE_DEVICES)."""
    gpu_uuids: tuple[str, ...] = ()
    """UUIDs of those GPUs."""


class Placer(Protocol):
    """Placement as the dispatcher uses it."""

    def upsert_node(self, agent: agent_pb2.Agent) -> None:
        """Add an agent or refresh its inventory and schedulability."""
        ...

    def remove_node(self, agent_id: str) -> None:
        """Forget an agent (lost); its allocations go with it."""
        ...

    def could_ever_fit(self, spec: job_pb2.JobSpec) -> str | None:
        """None if an idle agent of the pool could run ``spec``, else why not."""
        ...

    def place(self, queued: Sequence[job_pb2.Job]) -> list[Placement]:
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


@dataclass
class _Node:
    agent_id: str
    cpu_total: int
    cpu_free: int
    memory_total: int
    memory_free: int
    gpu_models: list[str]
    gpu_uuids: list[str]
    gpu_free: list[int]  # milli-GPU free per GPU
    ok: bool


@dataclass
class _Held:
    agent_id: str
    cpu: int
    memory: int
    gpus: tuple[int, ...]
    milli: int


class SchedulerPlacer:
    """Placement over the agents' inventories (interim best-fit until the scheduling package lands)."""

    def __init__(self, policy: str = "fgd") -> None:
        self.policy = policy
        self.nodes: dict[str, _Node] = {}
        self.held: dict[str, _Held] = {}

    def upsert_node(self, agent: agent_pb2.Agent) -> None:
        node = self.nodes.get(agent.agent_id)
        inv = agent.inventory
        if node is None or len(node.gpu_free) != len(inv.gpus):
            node = _Node(
                agent.agent_id, inv.cpu_millis, inv.cpu_millis, inv.memory_bytes, inv.memory_bytes,
                [g.model.upper() for g in inv.gpus], [g.uuid for g in inv.gpus], [1000] * len(inv.gpus), True,
            )  # fmt: skip
            for held in self.held.values():
                if held.agent_id == agent.agent_id:
                    self._take(node, held)
            self.nodes[agent.agent_id] = node
        node.ok = schedulable(agent)

    def remove_node(self, agent_id: str) -> None:
        self.nodes.pop(agent_id, None)
        for job_id in [j for j, h in self.held.items() if h.agent_id == agent_id]:
            del self.held[job_id]

    def could_ever_fit(self, spec: job_pb2.JobSpec) -> str | None:
        cpu, memory, count, _milli, models = demand_of(spec)
        if not self.nodes:
            return "the pool has no agents"
        for node in self.nodes.values():
            gpus = [i for i, m in enumerate(node.gpu_models) if not models or m in models]
            if node.cpu_total >= cpu and node.memory_total >= memory and len(gpus) >= count:
                return None
        return f"no agent has {cpu} CPU millis, {memory} bytes of memory and {count} matching GPU(s) at once"

    def place(self, queued: Sequence[job_pb2.Job]) -> list[Placement]:
        order = sorted(queued, key=lambda j: (-j.spec.priority, j.create_time.ToNanoseconds()))
        placements = []
        for job in order:
            placement = self._place_one(job)
            if placement is not None:
                placements.append(placement)
        return placements

    def _place_one(self, job: job_pb2.Job) -> Placement | None:
        cpu, memory, count, milli, models = demand_of(job.spec)
        best: tuple[int, _Node, tuple[int, ...]] | None = None
        for node in self.nodes.values():
            if not node.ok or node.cpu_free < cpu or node.memory_free < memory:
                continue
            usable = [i for i, m in enumerate(node.gpu_models) if not models or m in models]
            if count and milli < 1000:
                fits = sorted((node.gpu_free[i], i) for i in usable if node.gpu_free[i] >= milli)
                gpus: tuple[int, ...] = (fits[0][1],) if fits else ()
            else:
                gpus = tuple(i for i in usable if node.gpu_free[i] == 1000)[:count]
            if len(gpus) < count:
                continue
            score = node.cpu_free - cpu  # best fit: least CPU left over
            if best is None or score < best[0]:
                best = (score, node, gpus)
        if best is None:
            return None
        _, node, gpus = best
        held = _Held(node.agent_id, cpu, memory, gpus, milli)
        self._take(node, held)
        self.held[job.job_id] = held
        return Placement(job.job_id, node.agent_id, gpus, tuple(node.gpu_uuids[i] for i in gpus))

    def reserve(self, job: job_pb2.Job, agent_id: str) -> None:
        if job.job_id in self.held or agent_id not in self.nodes:
            return
        cpu, memory, _, milli, _ = demand_of(job.spec)
        held = _Held(agent_id, cpu, memory, tuple(job.gpu_indices), milli)
        self._take(self.nodes[agent_id], held)
        self.held[job.job_id] = held

    def release(self, job_id: str) -> None:
        held = self.held.pop(job_id, None)
        node = self.nodes.get(held.agent_id) if held else None
        if held is None or node is None:
            return
        node.cpu_free += held.cpu
        node.memory_free += held.memory
        for i in held.gpus:
            node.gpu_free[i] = min(1000, node.gpu_free[i] + held.milli)

    @staticmethod
    def _take(node: _Node, held: _Held) -> None:
        node.cpu_free -= held.cpu
        node.memory_free -= held.memory
        for i in held.gpus:
            if i < len(node.gpu_free):
                node.gpu_free[i] -= held.milli
