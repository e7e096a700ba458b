"""Placement policies: which of the nodes a demand fits on gets it, and which of its GPUs.

- ``fgd`` (default): fragmentation gradient descent (Weng et al., ATC'23). Score of a placement =
  F(node after) - F(node before), the growth of the node's expected fragmented GPU capacity
  w.r.t. the typical task mix (see :mod:`.fragmentation`: this measure also counts how many tasks
  the node's free CPU and memory still hold); the smallest growth wins. For a share of a GPU
  every GPU with room is tried. Ties (e.g. many identical idle nodes) go best-fit, then to the
  lowest slot.
- ``fgd-paper``: the same with the paper's fragmentation measure, where CPU and memory only decide
  whether one task of a class fits (see :mod:`.fragmentation`), for comparison.
- ``best-fit``: the node left with the least free resources, as the paper's baseline: 0.5 x free
  CPU / largest node CPU + 0.5 x free GPU / largest node GPU capacity; a share goes on the fullest
  GPU it fits.
- ``first-fit``: the first node (slot order = order of registration) and its first GPUs that fit.

Whole GPUs are always the lowest-indexed fully free GPUs of the chosen node.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import numpy as np

from cosmos.stratum.scheduling.cluster import Cluster
from cosmos.stratum.scheduling.fit import usable_gpus
from cosmos.stratum.scheduling.fragmentation import CompiledMix, FloatArray, gpu_key
from cosmos.stratum.scheduling.mix import DEFAULT_MIX, TaskMix
from cosmos.stratum.scheduling.model import MILLI, Demand, GpuState, NodeState
from cosmos.stratum.scheduling.node_index import MIXED, IntArray

Choice = tuple[int, tuple[int, ...]]
"""(slot, GPU indices on that node)."""

_TIE = 1e-6
"""Scores closer than this (milli-GPUs) are ties."""
_SCALAR_MAX = 4
"""Up to this many nodes to rescore, Python beats numpy's per-call overhead."""
_DEDUPLICATE_MIN = 32
"""From this many nodes to rescore, scoring each distinct node state once pays off."""


class Policy(StrEnum):
    """Selectable placement policies."""

    FGD = "fgd"
    FGD_PAPER = "fgd-paper"
    """FGD with the paper's CPU/memory check (one task fits or not), for comparison."""
    BEST_FIT = "best-fit"
    FIRST_FIT = "first-fit"


class Placer(Protocol):
    """Chooses among candidate slots (all of which fit the demand, ascending)."""

    def choose(self, cluster: Cluster, demand: Demand, slots: IntArray) -> Choice: ...


def make_placer(policy: Policy | str, mix: TaskMix = DEFAULT_MIX) -> Placer:
    """The placer implementing ``policy``."""
    match Policy(policy):
        case Policy.FGD:
            return FgdPlacer(mix)
        case Policy.FGD_PAPER:
            return FgdPlacer(mix, count_fit=False)
        case Policy.BEST_FIT:
            return BestFitPlacer()
        case Policy.FIRST_FIT:
            return FirstFitPlacer()


def pick_gpus(node: NodeState, demand: Demand, *, tightest: bool) -> tuple[int, ...]:
    """GPU indices for ``demand`` on ``node``: the first ones, or for a share the fullest that fits."""
    usable = usable_gpus(node, demand)
    if demand.fractional and tightest:
        return (min(usable, key=lambda gpu: (gpu.free_milli, gpu.index)).index,)
    return tuple(gpu.index for gpu in usable[: demand.gpu_count])


class FirstFitPlacer:
    """The first node that fits."""

    def choose(self, cluster: Cluster, demand: Demand, slots: IntArray) -> Choice:
        slot = int(slots[0])
        return slot, pick_gpus(cluster.node_at(slot), demand, tightest=False)


def _leftover(cluster: Cluster, slots: IntArray) -> IntArray:
    """Best-fit's score (lower = fuller node); the demand itself shifts all nodes equally."""
    cpu_scale, gpu_scale = cluster.scales
    # Integer arithmetic keeps equal nodes exactly equal: cpu/cpu_scale + gpu/gpu_scale, scaled.
    result: IntArray = cluster.cpu_free[slots] * gpu_scale + cluster.gpu_idle[slots] * cpu_scale
    return result


class BestFitPlacer:
    """The node with the least free CPU and GPU left (equal weights, normalised)."""

    def choose(self, cluster: Cluster, demand: Demand, slots: IntArray) -> Choice:
        slot = int(slots[_leftover(cluster, slots).argmin()])
        return slot, pick_gpus(cluster.node_at(slot), demand, tightest=True)


class FgdPlacer:
    """Fragmentation gradient descent, vectorised and cached so that it runs at >5k placements/s.

    Scoring works on numpy arrays of (candidate node x class) and, for a share, (candidate node x
    GPU option x class): a node's per-class usable capacity comes from the cluster's per-GPU free
    matrix through lookup tables of the compiled mix, and so do the after-states. Two caches keep
    the work per placement small:

    - per demand shape, the last score of every node with the node's version: only nodes that
      changed since the shape was last placed (usually one or two) are rescored, and when that is
      at most ``_SCALAR_MAX`` nodes, in plain Python (numpy's per-call overhead would dominate);
    - per node, its "before" state (usable capacity per class, S, the options for a share), shared
      by all shapes until the node changes.

    Nodes whose GPUs differ in model or memory are scored exactly, in Python.
    """

    def __init__(self, mix: TaskMix = DEFAULT_MIX, *, count_fit: bool = True) -> None:
        self.mix = mix
        self.count_fit = count_fit
        """See :class:`~.fragmentation.CompiledMix`; False scores as the paper does."""
        self._compiled: CompiledMix | None = None
        self._epoch = -1
        self._scores: dict[tuple[object, ...], tuple[FloatArray, IntArray, IntArray]] = {}
        """Per demand shape: score and (for a share) chosen free milli per slot, and the slot
        version they were computed at."""
        # Per slot, valid while the slot's version equals _state_version: usable capacity per class,
        # S = sum_m p_m min(usable_m, fit_m x span_m), and the distinct GPU frees ascending (0 =
        # none) as the options for a share.
        self._state_version = np.zeros(0, dtype=np.int64)
        self._usable = np.zeros((0, 0), dtype=np.int64)
        self._before = np.zeros(0)
        self._options = np.zeros((0, 0), dtype=np.int64)

    def set_mix(self, mix: TaskMix) -> None:
        """Score against a new task mix from now on (everything is rescored lazily)."""
        self.mix = mix
        self._compiled = None

    def compiled(self, cluster: Cluster) -> CompiledMix:
        """The mix compiled against the cluster's model codes (rebuilt when they or the mix change)."""
        if self._compiled is None or self._epoch != cluster.epoch:
            self._compiled = mix = CompiledMix(self.mix, cluster.codes, count_fit=self.count_fit)
            self._epoch = cluster.epoch
            size = len(cluster.version)
            self._scores.clear()
            self._state_version = np.full(size, -1, dtype=np.int64)
            self._usable = np.zeros((size, mix.size), dtype=np.int64)
            self._before = np.zeros(size)
            self._options = np.zeros((size, cluster.width), dtype=np.int64)
        return self._compiled

    def choose(self, cluster: Cluster, demand: Demand, slots: IntArray) -> Choice:
        mix = self.compiled(cluster)
        shape = demand.shape()[:6]
        cached = self._scores.get(shape)
        if cached is None:
            size = len(cluster.version)
            cached = self._scores[shape] = (
                np.zeros(size),
                np.zeros(size, dtype=np.int64),
                np.full(size, -1, dtype=np.int64),
            )
        scores, chosen, versions = cached
        current = cluster.version[slots]
        outdated = versions[slots] != current
        stale = slots[outdated]
        if len(stale):
            if cluster.mixed_nodes:
                mixed = cluster.model_code[stale] == MIXED
                for slot in stale[mixed].tolist():
                    scores[slot] = self._mixed(cluster, mix, demand, slot)[0]
                uniform = stale[~mixed]
            else:
                uniform = stale
            if len(uniform) > _SCALAR_MAX:
                scores[uniform], chosen[uniform] = self._score(cluster, mix, demand, uniform)
            else:
                for slot in uniform.tolist():
                    scores[slot], chosen[slot] = self._score_one(cluster, mix, demand, slot)
            versions[stale] = current[outdated]
        candidate_scores = scores[slots]
        ties = slots[candidate_scores <= candidate_scores.min() + _TIE]
        slot = int(ties[0]) if len(ties) == 1 else int(ties[_leftover(cluster, ties).argmin()])
        node = cluster.node_at(slot)
        if cluster.model_code[slot] == MIXED:
            return slot, self._mixed(cluster, mix, demand, slot)[1]
        if demand.fractional:
            free = int(chosen[slot])
            return slot, (next(gpu.index for gpu in node.gpus if gpu.free_milli == free),)
        return slot, pick_gpus(node, demand, tightest=False)

    def _score_one(self, cluster: Cluster, mix: CompiledMix, demand: Demand, slot: int) -> tuple[float, int]:
        """The scalar path for one uniform node."""
        node = cluster.node_at(slot)
        frees = [gpu.free_milli for gpu in node.gpus]
        code = int(cluster.model_code[slot])
        if self._state_version[slot] == cluster.version[slot]:
            state = (self._usable[slot].tolist(), float(self._before[slot]))
        else:
            state = self._state_one(cluster, mix, slot, node, frees, code)
        return mix.score_one(code, frees, state, node.cpu_free, node.memory_free, demand)

    def _state_one(
        self, cluster: Cluster, mix: CompiledMix, slot: int, node: NodeState, frees: list[int], code: int
    ) -> tuple[list[int], float]:
        """Compute and store one slot's state in Python."""
        usable, before = state = mix.state_one(code, frees, node.cpu_free, node.memory_free)
        self._usable[slot] = usable
        self._before[slot] = before
        options = sorted(set(frees))
        self._options[slot] = [0] * (len(self._options[slot]) - len(options)) + options
        self._state_version[slot] = cluster.version[slot]
        return state

    def _states(self, cluster: Cluster, mix: CompiledMix, slots: IntArray) -> None:
        """Bring the per-slot state of ``slots`` up to date."""
        need = slots[self._state_version[slots] != cluster.version[slots]]
        if len(need) <= _SCALAR_MAX:
            for slot in need.tolist():
                node = cluster.node_at(slot)
                self._state_one(
                    cluster, mix, slot, node, [g.free_milli for g in node.gpus], int(cluster.model_code[slot])
                )
            return
        frees = cluster.gpu_frees[need]
        accept = mix.accept[cluster.model_code[need] + 2]
        usable = (
            mix.gpu_usable[frees].sum(axis=1) + mix.multi_usable(cluster.width)[cluster.full_gpus[need]]
        ) * accept
        self._usable[need] = usable
        self._before[need] = mix.served(cluster.cpu_free[need], cluster.memory_free[need], usable) @ mix.p
        # Options for a share: distinct free values; sorted rows with repeats zeroed (0 is never
        # an option) keep them ascending.
        frees.sort(axis=1)
        frees[:, 1:][frees[:, 1:] == frees[:, :-1]] = 0
        self._options[need] = frees
        self._state_version[need] = cluster.version[need]

    def _score(
        self, cluster: Cluster, mix: CompiledMix, demand: Demand, slots: IntArray
    ) -> tuple[FloatArray, IntArray]:
        """:meth:`_score_states` once per distinct node state among ``slots``.

        When a shape is new or the mix changed, most candidates need scoring, and most of them are
        in a state some other candidate is in too (idle nodes of one kind, full ones): on the
        Alibaba trace such batches hold about 9% distinct states.
        """
        if len(slots) < _DEDUPLICATE_MIN:
            return self._score_states(cluster, mix, demand, slots)
        _, first, inverse = np.unique(cluster.state_id[slots], return_index=True, return_inverse=True)
        if 2 * len(first) > len(slots):
            return self._score_states(cluster, mix, demand, slots)
        scores, chosen = self._score_states(cluster, mix, demand, slots[first])
        return scores[inverse], chosen[inverse]

    def _score_states(
        self, cluster: Cluster, mix: CompiledMix, demand: Demand, slots: IntArray
    ) -> tuple[FloatArray, IntArray]:
        """F(after) - F(before) on uniform nodes and, for a share, the free milli of the GPU to use.

        F(after) - F(before) = -(GPU taken) - (served(after) - served(before)) . p, where served is
        min(usable, fit x span) per class (see :mod:`.fragmentation`).
        """
        self._states(cluster, mix, slots)
        count, milli = demand.gpu_count, demand.gpu_milli
        cpu = cluster.cpu_free[slots] - demand.cpu_milli
        memory = cluster.memory_free[slots] - demand.memory_bytes
        full = cluster.full_gpus[slots]
        accept = mix.accept[cluster.model_code[slots] + 2]
        multi = mix.multi_usable(cluster.width)
        usable = self._usable[slots]
        before = self._before[slots]
        if not demand.fractional:
            # CPU only, or whole GPUs: `count` fully free GPUs go, each usable by every share class.
            usable_after = usable + (multi[full - count] - multi[full] + mix.whole_change(count)) * accept
            gained = mix.served(cpu, memory, usable_after) @ mix.p - before
            return -(count * milli) - gained, np.zeros(len(slots), dtype=np.int64)
        # A share: one option per distinct free value >= milli of the node's GPUs.
        options = self._options[slots]
        rows, columns = np.nonzero(options >= milli)
        free = options[rows, columns]
        full = full[rows]
        usable_after = (
            usable[rows]
            + (mix.share_change(milli)[free] + multi[full - (free == MILLI)] - multi[full]) * accept[rows]
        )
        gained = mix.served(cpu[rows], memory[rows], usable_after) @ mix.p - before[rows]
        table = np.full(options.shape, np.inf)
        table[rows, columns] = -gained
        # On equal scores argmin takes the first, i.e. the fullest GPU that fits.
        best = table.argmin(axis=1)
        picked = np.arange(len(slots))
        return table[picked, best] - milli, options[picked, best]

    def _mixed(
        self, cluster: Cluster, mix: CompiledMix, demand: Demand, slot: int
    ) -> tuple[float, tuple[int, ...]]:
        """Exact scoring on a node whose GPUs differ: try each usable GPU for a share."""
        node = cluster.node_at(slot)
        before = mix.frag(cluster.key_at(slot), node.cpu_free, node.memory_free)
        cpu, memory = node.cpu_free - demand.cpu_milli, node.memory_free - demand.memory_bytes
        if not demand.fractional:
            options = [pick_gpus(node, demand, tightest=False)]
        else:
            options = [(gpu.index,) for gpu in usable_gpus(node, demand)]
        best: tuple[float, tuple[int, ...]] | None = None
        for indices in options:
            taken = {index: demand.gpu_milli for index in indices}
            after_key = gpu_key(
                (GpuState(g.index, g.model, g.free_milli - taken.get(g.index, 0)) for g in node.gpus),
                cluster.codes,
            )
            score = mix.frag(after_key, cpu, memory) - before
            if best is None or score < best[0] - _TIE:
                best = (score, indices)
        assert best is not None
        return best
