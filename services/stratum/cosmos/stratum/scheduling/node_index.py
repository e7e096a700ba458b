"""The node index: every node in a *slot*, and per-slot numpy arrays mirroring what placement needs.

The arrays (free CPU, memory, idle GPU capacity, fully free GPUs, largest free share, model, ...)
make finding the nodes a demand fits on a handful of array operations instead of a Python loop over
~1,000 nodes (see :mod:`.fit`). Slots of removed nodes are reused. What is allocated on the nodes is
kept by :class:`~cosmos.stratum.scheduling.cluster.Cluster`, built on this index.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from cosmos.stratum.scheduling.fragmentation import GpuKey, gpu_key
from cosmos.stratum.scheduling.model import MILLI, NodeState

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

NO_GPU = -1
"""Model code of a node without GPUs."""
MIXED = -2
"""Model code of a node whose GPUs differ in model or memory (checked exactly)."""

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


class NodeIndex:
    """Nodes by id and by slot, and their per-slot arrays.

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
        self.codes: dict[str, int] = {}
        """GPU model name -> small integer code, in order of first appearance."""
        self.epoch = 0
        """Bumped when array sizes or model codes change: caches indexed by slot must be rebuilt."""
        self.mixed_nodes = 0
        self._totals = [0, 0, 0]
        self._scales: tuple[int, int] | None = None
        self._state_ids: dict[tuple[int, ...], int] = {}
        self._accept_luts: dict[frozenset[str], BoolArray] = {}
        self.width = 1
        """Columns of ``gpu_frees``: the most GPUs any node had."""
        self._size = 0
        self._allocate_arrays(max(capacity, 1))

    # ----- reading -----

    def node(self, node_id: str) -> NodeState:
        """The node with this id (``KeyError`` if unknown)."""
        node = self._nodes[self._slot(node_id)]
        assert node is not None
        return node

    def nodes(self) -> Iterator[NodeState]:
        """Every node, in slot order."""
        return (node for node in self._nodes if node is not None)

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

    def node_at(self, slot: int) -> NodeState:
        """The node in a slot returned by :meth:`Cluster.candidates`."""
        return self._at(slot)

    def key_at(self, slot: int) -> GpuKey:
        """The GPU key (see :mod:`.fragmentation`) of the node in a slot (empty for a free slot)."""
        node = self._nodes[slot] if slot < len(self._nodes) else None
        return () if node is None else gpu_key(node.gpus, self.codes)

    @property
    def slot_count(self) -> int:
        """Slots in use or freed (node slots are below this)."""
        return len(self._nodes)

    def accept_lut(self, models: frozenset[str]) -> BoolArray:
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

    # ----- changing -----

    def set_schedulable(self, node_id: str, schedulable: bool) -> None:
        """Cordon (False) or uncordon (True) a node; its running jobs are not affected."""
        slot = self._slot(node_id)
        node = self._nodes[slot]
        assert node is not None
        node.schedulable = schedulable
        self.eligible[slot] = schedulable

    def _occupy(self, node: NodeState) -> int:
        """Put a new node in a slot (a freed one first) and mirror it; returns the slot."""
        for gpu in node.gpus:
            self._intern(gpu.model)
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = len(self._nodes)
            if slot >= self._size:
                self._allocate_arrays(2 * self._size)
            self._nodes.append(None)
        self._nodes[slot] = node
        self._slots[node.node_id] = slot
        self._add_totals(node, 1)
        self._refresh(slot, static=True)
        return slot

    def _replace(self, slot: int, node: NodeState) -> None:
        """Put ``node`` (new inventory, ``*_free`` already computed) in place of the one in ``slot``."""
        old = self._nodes[slot]
        assert old is not None
        for gpu in node.gpus:
            self._intern(gpu.model)
        self._add_totals(old, -1)
        self._nodes[slot] = node
        self._add_totals(node, 1)
        self._refresh(slot, static=True)

    def _vacate(self, slot: int) -> None:
        """Empty ``slot`` (its node is forgotten) for a later node to reuse."""
        node = self._nodes[slot]
        assert node is not None
        self._add_totals(node, -1)
        if self.model_code[slot] == MIXED:
            self.mixed_nodes -= 1
        self._nodes[slot] = None
        self.gpu_frees[slot] = 0
        del self._slots[node.node_id]
        self._free_slots.append(slot)
        self.eligible[slot] = False
        self.cpu_total[slot] = self.gpu_total[slot] = 0
        self.model_code[slot] = NO_GPU
        self.version[slot] += 1

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
