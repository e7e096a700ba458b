"""The cluster: nodes, what is allocated on them, and a vectorised index for fast filtering.

Every node lives in a *slot*; per-slot numpy arrays mirror what placement needs (free CPU, memory,
idle GPU capacity, fully free GPUs, largest free share, model) so that finding the nodes a demand
fits on is a handful of array operations instead of a Python loop over ~1,000 nodes. The arrays
are only a filter: nodes whose GPUs differ in model or memory ("mixed" nodes) and demands with a
node selector get an exact check on the candidates. Slots of removed nodes are reused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cosmos import errors
from cosmos.stratum.scheduling.fragmentation import CompiledMix, GpuKey, gpu_key
from cosmos.stratum.scheduling.model import MILLI, Demand, GpuState, NodeState, Placement

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

NO_GPU = -1
"""Model code of a node without GPUs."""
MIXED = -2
"""Model code of a node whose GPUs differ in model or memory (checked exactly)."""


class PlacementError(errors.CosmosError, ValueError):
    """An allocation that does not fit, or refers to an unknown node or GPU.

    Also a ``ValueError`` (a bad argument to :meth:`Cluster.allocate`), as it always was, for callers
    of this public package that catch it as one."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """A job's reservation on a node."""

    demand: Demand
    placement: Placement


_ARRAYS: tuple[tuple[str, type[np.generic], int], ...] = (
    ("eligible", np.bool_, 0),
    ("cpu_free", np.int64, 0),
    ("memory_free", np.int64, 0),
    ("cpu_total", np.int64, 0),
    ("gpu_total", np.int64, 0),
    ("gpu_idle", np.int64, 0),
    ("full_gpus", np.int64, 0),
    ("max_free", np.int64, 0),
    ("gpu_memory", np.int64, 0),
    ("model_code", np.int64, NO_GPU),
    ("version", np.int64, 0),
    ("state_id", np.int64, -1),
)
"""Per-slot arrays: (name, dtype, value of an empty slot)."""
_STATE_IDS_LIMIT = 1_000_000
"""Distinct node states remembered before the ids are renumbered."""


class Cluster:
    """Nodes by id, the allocations on them, and per-tenant usage (for fair share).

    The per-slot arrays (read-only outside this class): ``eligible`` (alive and schedulable),
    ``cpu_free``, ``memory_free``, ``cpu_total``, ``gpu_total`` and ``gpu_idle`` (milli-GPUs),
    ``full_gpus`` (GPUs with nothing allocated), ``max_free`` (largest free milli on one GPU),
    ``gpu_memory`` (largest device memory), ``model_code`` (:data:`NO_GPU`, :data:`MIXED` or the
    code of the one model), ``version`` (bumped on every change of the slot, for caches),
    ``state_id`` (equal for nodes in equal states: model code, GPU memory, free CPU, memory and
    GPUs) and the matrix ``gpu_frees`` (slot, GPU position): free milli of each GPU, 0-padded to
    ``width``.
    """

    eligible: BoolArray
    cpu_free: IntArray
    memory_free: IntArray
    cpu_total: IntArray
    gpu_total: IntArray
    gpu_idle: IntArray
    full_gpus: IntArray
    max_free: IntArray
    gpu_memory: IntArray
    model_code: IntArray
    version: IntArray
    state_id: IntArray
    gpu_frees: IntArray

    def __init__(self, capacity: int = 64) -> None:
        self._nodes: list[NodeState | None] = []
        self._slots: dict[str, int] = {}
        self._free_slots: list[int] = []
        self._jobs_on: list[set[str]] = []
        self.allocations: dict[str, Allocation] = {}
        self.codes: dict[str, int] = {}
        """GPU model name -> small integer code, in order of first appearance."""
        self.epoch = 0
        """Bumped when array sizes or model codes change: caches indexed by slot must be rebuilt."""
        self.mixed_nodes = 0
        self.tenant_usage: dict[str, list[int]] = {}
        """Tenant -> [cpu_milli, memory_bytes, gpu_milli] currently allocated."""
        self._totals = [0, 0, 0]
        self._scales: tuple[int, int] | None = None
        self._state_ids: dict[tuple[int, ...], int] = {}
        self._accept_luts: dict[frozenset[str], BoolArray] = {}
        self.width = 1
        """Columns of ``gpu_frees``: the most GPUs any node had."""
        self._size = 0
        self._allocate_arrays(max(capacity, 1))

    # ----- nodes -----

    def add_node(self, node: NodeState) -> None:
        """Add a node; its ``*_free`` values are taken as given. The cluster now owns ``node``."""
        if node.node_id in self._slots:
            raise ValueError(f"node {node.node_id!r} is already in the cluster")
        for gpu in node.gpus:
            self._intern(gpu.model)
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = len(self._nodes)
            if slot >= self._size:
                self._allocate_arrays(2 * self._size)
            self._nodes.append(None)
            self._jobs_on.append(set())
        self._nodes[slot] = node
        self._slots[node.node_id] = slot
        self._jobs_on[slot] = set()
        self._add_totals(node, 1)
        self._refresh(slot, static=True)

    def update_node(self, node: NodeState) -> None:
        """Replace a known node's inventory, labels and flag; free = new capacity minus its jobs."""
        slot = self._slot(node.node_id)
        old = self._nodes[slot]
        assert old is not None
        for gpu in node.gpus:
            self._intern(gpu.model)
        self._add_totals(old, -1)
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
        self._nodes[slot] = node
        self._add_totals(node, 1)
        self._refresh(slot, static=True)

    def remove_node(self, node_id: str) -> list[str]:
        """Forget a node; returns the ids of the jobs that were allocated on it (now released)."""
        slot = self._slot(node_id)
        jobs = sorted(self._jobs_on[slot])
        for job_id in jobs:
            self._forget(job_id)
        node = self._nodes[slot]
        assert node is not None
        self._add_totals(node, -1)
        if self.model_code[slot] == MIXED:
            self.mixed_nodes -= 1
        self._nodes[slot] = None
        self.gpu_frees[slot] = 0
        self._jobs_on[slot] = set()
        del self._slots[node_id]
        self._free_slots.append(slot)
        self.eligible[slot] = False
        self.cpu_total[slot] = self.gpu_total[slot] = 0
        self.model_code[slot] = NO_GPU
        self.version[slot] += 1
        return jobs

    def set_schedulable(self, node_id: str, schedulable: bool) -> None:
        """Cordon (False) or uncordon (True) a node; its running jobs are not affected."""
        slot = self._slot(node_id)
        node = self._nodes[slot]
        assert node is not None
        node.schedulable = schedulable
        self.eligible[slot] = schedulable

    def node(self, node_id: str) -> NodeState:
        """The node with this id (``KeyError`` if unknown)."""
        node = self._nodes[self._slot(node_id)]
        assert node is not None
        return node

    def nodes(self) -> Iterator[NodeState]:
        """Every node, in slot order."""
        return (node for node in self._nodes if node is not None)

    def jobs_on(self, node_id: str) -> list[str]:
        """Ids of the jobs allocated on a node."""
        return sorted(self._jobs_on[self._slot(node_id)])

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def scales(self) -> tuple[int, int]:
        """(largest node CPU, largest node GPU capacity), at least 1: best-fit's normalisation."""
        if self._scales is None:
            self._scales = (max(int(self.cpu_total.max()), 1), max(int(self.gpu_total.max()), 1))
        return self._scales

    @property
    def totals(self) -> tuple[int, int, int]:
        """Capacity of all nodes: (cpu_milli, memory_bytes, gpu_milli)."""
        return (self._totals[0], self._totals[1], self._totals[2])

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

    # ----- filtering -----

    def candidates(self, demand: Demand) -> IntArray:
        """Slots of the schedulable nodes where ``demand`` fits now, ascending."""
        mask = self.eligible & (self.cpu_free >= demand.cpu_milli) & (self.memory_free >= demand.memory_bytes)
        if demand.gpu_count:
            if demand.fractional:
                mask &= self.max_free >= demand.gpu_milli
            else:
                mask &= self.full_gpus >= demand.gpu_count
            if demand.models:
                mask &= self._accept_lut(demand.models)[self.model_code + 2]
            if demand.gpu_memory_bytes:
                mask &= self.gpu_memory >= demand.gpu_memory_bytes
        slots = np.flatnonzero(mask)
        exact = bool(demand.node_selector or demand.runtimes)
        if len(slots) and (exact or (demand.gpu_count and self.mixed_nodes)):
            # Uniform nodes passed the arrays exactly; only mixed nodes, label selectors and runtime
            # constraints (rare: jobs with an image) need a look at each node.
            keep = [
                slot
                for slot in slots.tolist()
                if (not exact and self.model_code[slot] != MIXED) or self.fits(self._at(slot), demand)
            ]
            slots = np.asarray(keep, dtype=np.int64)
        return slots

    def fits(self, node: NodeState, demand: Demand) -> bool:
        """Exact check: does ``demand`` fit on ``node`` as it is now?"""
        if node.cpu_free < demand.cpu_milli or node.memory_free < demand.memory_bytes:
            return False
        if any(node.labels.get(key) != value for key, value in demand.node_selector):
            return False
        if demand.runtimes and not demand.runtimes & node.runtimes:
            return False
        return len(usable_gpus(node, demand)) >= demand.gpu_count

    def node_at(self, slot: int) -> NodeState:
        """The node in a slot returned by :meth:`candidates`."""
        return self._at(slot)

    def key_at(self, slot: int) -> GpuKey:
        """The GPU key (see :mod:`.fragmentation`) of the node in a slot (empty for a free slot)."""
        node = self._nodes[slot] if slot < len(self._nodes) else None
        return () if node is None else gpu_key(node.gpus, self.codes)

    @property
    def slot_count(self) -> int:
        """Slots in use or freed (node slots are below this)."""
        return len(self._nodes)

    # ----- internals -----

    def _at(self, slot: int) -> NodeState:
        node = self._nodes[slot]
        assert node is not None
        return node

    def _slot(self, node_id: str) -> int:
        slot = self._slots.get(node_id)
        if slot is None:
            raise KeyError(f"node {node_id!r} is not in the cluster")
        return slot

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

    def _add_totals(self, node: NodeState, sign: int) -> None:
        self._scales = None
        self._totals[0] += sign * node.cpu_milli
        self._totals[1] += sign * node.memory_bytes
        self._totals[2] += sign * MILLI * len(node.gpus)

    def _intern(self, model: str) -> None:
        if model not in self.codes:
            self.codes[model] = len(self.codes)
            self._accept_luts.clear()
            self.epoch += 1

    def _accept_lut(self, models: frozenset[str]) -> BoolArray:
        """Lookup table indexed by model code + 2: is a node with that code acceptable?"""
        lut = self._accept_luts.get(models)
        if lut is None:
            lut = np.zeros(len(self.codes) + 2, dtype=np.bool_)
            lut[MIXED + 2] = True  # mixed nodes pass the filter and get the exact check
            for model in models:
                if model in self.codes:
                    lut[self.codes[model] + 2] = True
            self._accept_luts[models] = lut
        return lut

    def _allocate_arrays(self, size: int) -> None:
        """(Re)create the per-slot arrays with room for ``size`` slots, keeping their contents."""
        old = self._size
        for name, dtype, fill in _ARRAYS:
            array = np.full(size, fill, dtype=dtype)
            if old:
                array[:old] = getattr(self, name)
            setattr(self, name, array)
        frees = np.zeros((size, self.width), dtype=np.int64)
        if old:
            frees[:old] = self.gpu_frees
        self.gpu_frees = frees
        self._size = size
        self.epoch += 1

    def _refresh(self, slot: int, *, static: bool = False) -> None:
        """Mirror a node's state into the arrays after it changed (``static``: inventory changed)."""
        node = self._nodes[slot]
        assert node is not None
        gpus = node.gpus
        if static:
            was_mixed = int(self.model_code[slot]) == MIXED
            self.eligible[slot] = node.schedulable
            self.cpu_total[slot] = node.cpu_milli
            self.gpu_total[slot] = MILLI * len(gpus)
            self.gpu_memory[slot] = max((g.memory_bytes for g in gpus), default=0)
            if not gpus:
                code = NO_GPU
            elif len({(g.model, g.memory_bytes) for g in gpus}) == 1:
                code = self.codes[gpus[0].model]
            else:
                code = MIXED
            self.model_code[slot] = code
            self.mixed_nodes += int(code == MIXED) - int(was_mixed)
        frees = [g.free_milli for g in gpus]
        self.cpu_free[slot] = node.cpu_free
        self.memory_free[slot] = node.memory_free
        self.gpu_idle[slot] = sum(frees)
        self.full_gpus[slot] = frees.count(MILLI)
        self.max_free[slot] = max(frees, default=0)
        if len(frees) > self.width:
            self._widen(len(frees))
        self.gpu_frees[slot] = frees + [0] * (self.width - len(frees))
        self.version[slot] += 1
        # Nodes in equal states get equal ids, so a policy can score each state once.
        frees.sort()
        state = (
            int(self.model_code[slot]),
            int(self.gpu_memory[slot]),
            node.cpu_free,
            node.memory_free,
            *frees,
        )
        state_id = self._state_ids.get(state)
        if state_id is None:
            if len(self._state_ids) >= _STATE_IDS_LIMIT:
                self._renumber_states()
            state_id = self._state_ids[state] = len(self._state_ids)
        self.state_id[slot] = state_id

    def _renumber_states(self) -> None:
        """Forget the ids of states no node is in any more (bounds memory on long runs)."""
        self._state_ids.clear()
        for other, node in enumerate(self._nodes):
            if node is not None:
                frees = sorted(g.free_milli for g in node.gpus)
                code, memory = int(self.model_code[other]), int(self.gpu_memory[other])
                key = (code, memory, node.cpu_free, node.memory_free, *frees)
                self.state_id[other] = self._state_ids.setdefault(key, len(self._state_ids))
        self.epoch += 1

    def _widen(self, width: int) -> None:
        """Room for nodes with ``width`` GPUs in ``gpu_frees``."""
        wider = np.zeros((self._size, width), dtype=np.int64)
        wider[:, : self.width] = self.gpu_frees
        self.gpu_frees, self.width = wider, width
        self.epoch += 1


def usable_gpus(node: NodeState, demand: Demand) -> list[GpuState]:
    """The node's GPUs that could take (their part of) ``demand`` now, in index order."""
    if not demand.gpu_count:
        return []
    need = demand.gpu_milli
    models = demand.models
    memory = demand.gpu_memory_bytes
    return [
        gpu
        for gpu in node.gpus
        if gpu.free_milli >= need and (not models or gpu.model in models) and gpu.memory_bytes >= memory
    ]


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
