"""Node fragmentation with respect to a task mix (after FGD, Weng et al., ATC'23, section 3).

For a node n and a task class m (popularity p_m; per task: k GPUs of x milli-GPUs each, c CPU,
r memory), F_n(m) is the idle GPU capacity of n that tasks of class m cannot use:

    F_n(m) = idle_n - served_n(m),   served_n(m) = min(usable_n(m), fit_n(m) * k * x)

- ``usable``: GPU capacity tasks of m can take. As in the paper, the whole free capacity of every
  GPU of an accepted model with at least x free (partly used GPUs are fragments for whole-GPU
  classes, slivers smaller than x for shares). For classes of k > 1 whole GPUs, only complete
  groups of k fully free GPUs count (the paper counts every fully free GPU);
- ``fit``: how many tasks of m the node's free CPU and memory hold, min(cpu // c, memory // r)
  (unbounded for a class asking for neither). The paper only asks whether *one* task fits; the
  count makes the score see the cliff before the node falls off it. Taking half of the CPU of an
  8-GPU node strands GPUs the mix could have used, so CPU-heavy and CPU-only jobs go to CPU-rich
  nodes. On the Alibaba trace this nearly halves the GPUs left unallocated at saturation compared
  with best-fit, where the paper's single-task check alone does little better than best-fit
  (see docs/benchmarks.md).

The node's fragmentation is F_n = sum_m p_m F_n(m) in milli-GPUs; FGD places a job where F grows
least. Since sum_m p_m = 1, F = idle - S with S = sum_m p_m served(m), and the growth of F by a
placement taking g milli-GPUs is -g - (S_after - S_before).

:meth:`CompiledMix.frag` computes F for any node in Python; :meth:`CompiledMix.state_one` and
:meth:`CompiledMix.score_one` score one uniform node (GPUs all of one model) cheaply; the lookup
tables and :meth:`CompiledMix.served` let the FGD policy score many nodes at once with numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from cosmos.stratum.scheduling.mix import TaskMix
from cosmos.stratum.scheduling.model import MILLI, Demand, GpuState

GpuKey = tuple[tuple[int, int], ...]
"""A node's GPUs with free capacity: (model code, free milli) pairs, largest first."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_UNLIMITED = 1 << 40
"""Tasks that fit by a resource the class does not ask for."""
_MEMO_LIMIT = 200_000
"""Entries kept before the memo of :meth:`CompiledMix.frag` is dropped (bounds memory)."""


def gpu_key(gpus: Iterable[GpuState], codes: Mapping[str, int]) -> GpuKey:
    """The GPU key of a node's GPUs (fully allocated GPUs left out: they can never be fragments)."""
    return tuple(sorted(((codes[g.model], g.free_milli) for g in gpus if g.free_milli > 0), reverse=True))


class CompiledMix:
    """A task mix compiled against a cluster's model codes, ready for fast scoring.

    Columns of every (..., classes) array are the mix's classes, in its order.
    """

    def __init__(self, mix: TaskMix, codes: Mapping[str, int], *, count_fit: bool = True) -> None:
        self.mix = mix
        self.count_fit = count_fit
        """False: the paper's measure, where CPU and memory only decide whether one task fits."""
        classes = [cls for cls, _ in mix.classes]
        self.size = len(classes)
        self.p: FloatArray = np.array([p for _, p in mix.classes], dtype=np.float64)
        count = np.array([c.gpu_count for c in classes], dtype=np.int64)
        self.milli: IntArray = np.array([c.gpu_milli for c in classes], dtype=np.int64)
        self.multi: BoolArray = count > 1
        self.span: IntArray = count * self.milli
        """Milli-GPUs one task of the class takes."""
        cpu = np.array([c.cpu_milli for c in classes], dtype=np.int64)
        memory = np.array([c.memory_bytes for c in classes], dtype=np.int64)
        self._cpu_div: IntArray = np.maximum(cpu, 1)
        self._cpu_pass: IntArray = np.where(cpu == 0, _UNLIMITED, 0)
        self._memory_div: IntArray = np.maximum(memory, 1)
        self._memory_pass: IntArray = np.where(memory == 0, _UNLIMITED, 0)
        self._uses_memory = bool((memory > 0).any())
        self._accepts: list[frozenset[int] | None] = [
            None if not c.models else frozenset(codes[m] for m in c.models if m in codes) for c in classes
        ]
        # Row (model code + 2): which classes accept a uniform node of that model (0/1). Row 1 is
        # "no GPUs" (none), row 0 "mixed" (never used: mixed nodes are scored in Python).
        self.accept: IntArray = np.zeros((len(codes) + 2, self.size), dtype=np.int64)
        for code in codes.values():
            self.accept[code + 2] = [accept is None or code in accept for accept in self._accepts]
        free = np.arange(MILLI + 1, dtype=np.int64)[:, None]
        self.gpu_usable: IntArray = np.where(self.multi, 0, (free >= self.milli) * free)
        """Table (free milli of one GPU 0..1000, classes): what that GPU adds to ``usable`` of
        single-GPU classes (uniform nodes: times the node's ``accept`` row)."""
        self._share_tables: dict[int, IntArray] = {}
        self._multi_tables: dict[int, IntArray] = {}
        self._whole_changes: dict[int, IntArray] = {}
        self._memo: dict[tuple[GpuKey, int, int], float] = {}
        # Plain-Python copies for the scalar path (list indexing beats numpy's per-call cost).
        self._classes = [
            (c.gpu_count, c.gpu_milli, c.gpu_count * c.gpu_milli, c.gpu_count > 1) for c in classes
        ]
        self._served_columns = (
            [p for _, p in mix.classes],
            [c.gpu_count * c.gpu_milli for c in classes],
            [c.cpu_milli for c in classes],
            [c.memory_bytes for c in classes],
        )
        # Codes of uniform nodes, and -1 for nodes without GPUs (nothing accepted).
        self._accept_rows = {code: [int(v) for v in self.accept[code + 2]] for code in [-1, *codes.values()]}
        self._gpu_usable_rows: list[list[int]] = self.gpu_usable.tolist()
        self._multi_rows: list[list[int]] = self.multi_usable(16).tolist()

    # ----- any node, in Python -----

    def usable(self, gpus: GpuKey) -> list[int]:
        """Per class: milli-GPUs tasks of the class could take on these GPUs."""
        result = [0] * self.size
        for index, ((count, milli, span, multi), accept) in enumerate(
            zip(self._classes, self._accepts, strict=True)
        ):
            ok = [free for model, free in gpus if free >= milli and (accept is None or model in accept)]
            result[index] = len(ok) // count * span if multi else sum(ok)
        return result

    def frag(self, gpus: GpuKey, cpu_free: int, memory_free: int) -> float:
        """Expected fragmented milli-GPUs F of one node in this state (memoised)."""
        if not gpus:
            return 0.0
        memo_key = (gpus, cpu_free, memory_free)
        value = self._memo.get(memo_key)
        if value is None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            served = self._served(max(cpu_free, 0), max(memory_free, 0), self.usable(gpus))
            value = self._memo[memo_key] = sum(free for _, free in gpus) - served
        return value

    # ----- one uniform node, in Python -----

    def state_one(
        self, code: int, frees: list[int], cpu_free: int, memory_free: int
    ) -> tuple[list[int], float]:
        """Per-class ``usable`` and S = sum_m p_m served(m) of one uniform node of model ``code``
        whose GPUs have these frees (the "before" state for :meth:`score_one`)."""
        rows = self._gpu_usable_rows
        single = (
            [sum(column) for column in zip(*(rows[free] for free in frees), strict=True)] if frees else []
        )
        full = frees.count(MILLI)
        if full >= len(self._multi_rows):
            self._multi_rows = self.multi_usable(2 * full).tolist()
        usable = [
            (u + m) * a
            for u, m, a in zip(
                single or [0] * self.size, self._multi_rows[full], self._accept_rows[code], strict=True
            )
        ]
        return usable, self._served(cpu_free, memory_free, usable)

    def score_one(
        self,
        code: int,
        frees: list[int],
        state: tuple[list[int], float],
        cpu_free: int,
        memory_free: int,
        demand: Demand,
    ) -> tuple[float, int]:
        """Growth of F when ``demand`` goes on one uniform node (``state`` from :meth:`state_one`),
        and for a share the free milli of the GPU it should take: the scalar twin of the FGD
        policy's vectorised scoring, cheaper when only a node or two need scoring."""
        accept = self._accept_rows[code]
        usable, before = state
        full = frees.count(MILLI)
        cpu, memory = cpu_free - demand.cpu_milli, memory_free - demand.memory_bytes
        taken = demand.gpu_milli
        if not demand.fractional:
            whole = demand.gpu_count
            after = [
                (((full - whole) // count * span) if multi else u - whole * MILLI) if ok else 0
                for u, ok, (count, _, span, multi) in zip(usable, accept, self._classes, strict=True)
            ]
            return -(whole * taken) - (self._served(cpu, memory, after) - before), 0
        best: tuple[float, int] | None = None
        for free in sorted({f for f in frees if f >= taken}):
            left = free - taken
            full_after = full - (free == MILLI)
            after = [
                (
                    (full_after // count * span)
                    if multi
                    else u - (free if free >= milli else 0) + (left if left >= milli else 0)
                )
                if ok
                else 0
                for u, ok, (count, milli, span, multi) in zip(usable, accept, self._classes, strict=True)
            ]
            score = -taken - (self._served(cpu, memory, after) - before)
            if best is None or score < best[0]:  # ascending frees: the fullest GPU wins ties
                best = (score, free)
        assert best is not None, "score_one needs a node the demand fits on"
        return best

    def _served(self, cpu_free: int, memory_free: int, usable: list[int]) -> float:
        """S = sum_m p_m min(usable_m, fit_m x span_m) of one state (hot: plain loops, no min())."""
        total = 0.0
        for u, p, span, cpu, memory in zip(usable, *self._served_columns, strict=True):
            if u:
                fit = cpu_free // cpu if cpu else _UNLIMITED
                if memory:
                    by_memory = memory_free // memory
                    if by_memory < fit:
                        fit = by_memory
                if fit > 0 and not self.count_fit:
                    fit = _UNLIMITED
                cap = fit * span
                total += p * (u if u < cap else cap)
        return total

    # ----- many uniform nodes, with numpy -----

    def served(self, cpu_free: IntArray, memory_free: IntArray, usable: IntArray) -> IntArray:
        """Per state and class, min(usable, fit x span): ``cpu_free``/``memory_free`` shaped (P,),
        not negative; ``usable`` (P, classes). S is this times ``p``."""
        fit = cpu_free[:, None] // self._cpu_div + self._cpu_pass
        if self._uses_memory:
            fit = np.minimum(fit, memory_free[:, None] // self._memory_div + self._memory_pass)
        if not self.count_fit:
            fit = np.minimum(fit, 1) * _UNLIMITED
        result: IntArray = np.minimum(usable, fit * self.span)
        return result

    def multi_usable(self, width: int) -> IntArray:
        """Table (fully free GPUs 0..width, classes): ``usable`` of multi-GPU classes, 0 elsewhere."""
        table = self._multi_tables.get(width)
        if table is None:
            full = np.arange(width + 1, dtype=np.int64)[:, None]
            count = np.maximum(self.span // MILLI, 1)
            table = self._multi_tables[width] = np.where(self.multi, full // count * self.span, 0)
        return table

    def share_change(self, milli: int) -> IntArray:
        """Table (free milli 0..1000 of the GPU used, classes): change of ``usable`` of the
        single-GPU classes when ``milli`` is taken from that GPU; 0 for multi-GPU classes."""
        table = self._share_tables.get(milli)
        if table is None:
            free = np.arange(MILLI + 1, dtype=np.int64)[:, None]
            left = np.maximum(free - milli, 0)
            change = (left >= self.milli) * left - (free >= self.milli) * free
            table = self._share_tables[milli] = np.where(self.multi, 0, change)
        return table

    def whole_change(self, count: int) -> IntArray:
        """Change of ``usable`` of the single-GPU classes when ``count`` fully free GPUs go."""
        change = self._whole_changes.get(count)
        if change is None:
            change = self._whole_changes[count] = np.where(self.multi, 0, -count * MILLI)
        return change
