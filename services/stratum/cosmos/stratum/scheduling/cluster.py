"""The cluster: nodes, what is allocated on them, and a vectorised index for fast filtering.

:class:`Cluster` is the :class:`~.node_index.NodeIndex` (every node in a *slot*, per-slot numpy
arrays mirroring what placement needs) with the allocations on the nodes and per-tenant usage;
finding the nodes a demand fits on is in :mod:`.fit`. :func:`fragmentation` measures the whole
cluster against a task mix.
"""

from __future__ import annotations

from dataclasses import dataclass

from cosmos import errors
from cosmos.stratum.scheduling import fit
from cosmos.stratum.scheduling.fragmentation import CompiledMix
from cosmos.stratum.scheduling.model import MILLI, Demand, NodeState, Placement
from cosmos.stratum.scheduling.node_index import IntArray, NodeIndex


class PlacementError(errors.CosmosError, ValueError):
    """An allocation that does not fit, or refers to an unknown node or GPU.

    Also a ``ValueError`` (a bad argument to :meth:`Cluster.allocate`), as it always was, for callers
    of this public package that catch it as one."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """A job's reservation on a node."""

    demand: Demand
    placement: Placement


class Cluster(NodeIndex):
    """Nodes by id, the allocations on them, and per-tenant usage (for fair share).

    The per-slot arrays are the :class:`~.node_index.NodeIndex`'s (read-only outside it).
    """

    def __init__(self, capacity: int = 64) -> None:
        super().__init__(capacity)
        self._jobs_on: dict[int, set[str]] = {}
        """Slot -> ids of the jobs allocated on its node."""
        self.allocations: dict[str, Allocation] = {}
        self.tenant_usage: dict[str, list[int]] = {}
        """Tenant -> [cpu_milli, memory_bytes, gpu_milli] currently allocated."""

    # ----- nodes -----

    def add_node(self, node: NodeState) -> None:
        """Add a node; its ``*_free`` values are taken as given. The cluster now owns ``node``."""
        if node.node_id in self._slots:
            raise ValueError(f"node {node.node_id!r} is already in the cluster")
        slot = self._occupy(node)
        self._jobs_on[slot] = set()

    def update_node(self, node: NodeState) -> None:
        """Replace a known node's inventory, labels and flag; free = new capacity minus its jobs."""
        slot = self._slot(node.node_id)
        node.cpu_free, node.memory_free = node.cpu_milli, node.memory_bytes
        by_index = {gpu.index: gpu for gpu in node.gpus}
        for gpu in node.gpus:
            gpu.free_milli = MILLI
        for job_id in self._jobs_on[slot]:
            placement = self.allocations[job_id].placement
            node.cpu_free -= placement.cpu_milli
            node.memory_free -= placement.memory_bytes
            for index in placement.gpu_indices:
                if index in by_index:
                    by_index[index].free_milli = max(0, by_index[index].free_milli - placement.gpu_milli)
        self._replace(slot, node)

    def remove_node(self, node_id: str) -> list[str]:
        """Forget a node; returns the ids of the jobs that were allocated on it (now released)."""
        slot = self._slot(node_id)
        jobs = sorted(self._jobs_on[slot])
        for job_id in jobs:
            self._forget(job_id)
        del self._jobs_on[slot]
        self._vacate(slot)
        return jobs

    def jobs_on(self, node_id: str) -> list[str]:
        """Ids of the jobs allocated on a node."""
        return sorted(self._jobs_on[self._slot(node_id)])

    # ----- allocation -----

    def allocate(self, demand: Demand, placement: Placement) -> None:
        """Reserve ``placement`` for ``demand`` (also used to restore jobs after a restart)."""
        if demand.job_id in self.allocations:
            raise PlacementError(f"job {demand.job_id!r} is already allocated")
        slot = self._slot(placement.node_id)
        node = self._nodes[slot]
        assert node is not None
        if node.cpu_free < placement.cpu_milli or node.memory_free < placement.memory_bytes:
            raise PlacementError(f"job {demand.job_id!r} does not fit on {node.node_id!r} (CPU or memory)")
        by_index = {gpu.index: gpu for gpu in node.gpus}
        gpus = [by_index.get(index) for index in placement.gpu_indices]
        if any(gpu is None or gpu.free_milli < placement.gpu_milli for gpu in gpus):
            raise PlacementError(f"job {demand.job_id!r} does not fit on the GPUs of {node.node_id!r}")
        node.cpu_free -= placement.cpu_milli
        node.memory_free -= placement.memory_bytes
        for gpu in gpus:
            assert gpu is not None
            gpu.free_milli -= placement.gpu_milli
        self.allocations[demand.job_id] = Allocation(demand, placement)
        self._jobs_on[slot].add(demand.job_id)
        self._charge(demand.tenant, placement, 1)
        self._refresh(slot)

    def release(self, job_id: str) -> Placement | None:
        """Free what a job held; ``None`` if it held nothing (unknown or already released)."""
        allocation = self.allocations.get(job_id)
        if allocation is None:
            return None
        placement = allocation.placement
        slot = self._slots.get(placement.node_id)
        self._forget(job_id)
        if slot is not None:
            node = self._nodes[slot]
            assert node is not None
            node.cpu_free += placement.cpu_milli
            node.memory_free += placement.memory_bytes
            wanted = set(placement.gpu_indices)
            for gpu in node.gpus:
                if gpu.index in wanted:
                    gpu.free_milli = min(MILLI, gpu.free_milli + placement.gpu_milli)
            self._refresh(slot)
        return placement

    # ----- filtering (see :mod:`.fit`) -----

    def candidates(self, demand: Demand) -> IntArray:
        """Slots of the schedulable nodes where ``demand`` fits now, ascending."""
        return fit.candidates(self, demand)

    def fits(self, node: NodeState, demand: Demand) -> bool:
        """Exact check: does ``demand`` fit on ``node`` as it is now?"""
        return fit.fits(node, demand)

    # ----- internals -----

    def _forget(self, job_id: str) -> None:
        allocation = self.allocations.pop(job_id)
        slot = self._slots.get(allocation.placement.node_id)
        if slot is not None:
            self._jobs_on[slot].discard(job_id)
        self._charge(allocation.demand.tenant, allocation.placement, -1)

    def _charge(self, tenant: str, placement: Placement, sign: int) -> None:
        usage = self.tenant_usage.setdefault(tenant, [0, 0, 0])
        usage[0] += sign * placement.cpu_milli
        usage[1] += sign * placement.memory_bytes
        usage[2] += sign * placement.gpu_milli * len(placement.gpu_indices)
        if not any(usage):
            del self.tenant_usage[tenant]


def fragmentation(cluster: Cluster, mix: CompiledMix) -> tuple[float, float]:
    """(fragmented, idle) milli-GPUs of the whole cluster: idle GPU capacity the typical tasks of
    ``mix`` cannot use, and all idle GPU capacity (the simulator's and Stratum's metrics' measure)."""
    frag = 0.0
    idle = 0
    for node in cluster.nodes():
        idle += node.gpu_free_milli
    for slot in range(cluster.slot_count):
        key = cluster.key_at(slot)
        if key:
            frag += mix.frag(key, int(cluster.cpu_free[slot]), int(cluster.memory_free[slot]))
    return frag, idle
