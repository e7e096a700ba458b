"""The typical task mix: what GPU jobs usually look like, learned from the demands submitted.

Fragmentation (see :mod:`.fragmentation`) is measured against this mix, as in FGD (Weng et al.,
ATC'23): capacity is fragmented when the jobs that usually arrive cannot use it.

A task class is a GPU shape: (GPU count, milli-GPUs per GPU, acceptable models). Each class also
carries a typical CPU and memory request, the median of what that shape asked for, so that a node
whose CPU is exhausted counts its idle GPUs as fragmented. CPU-only jobs are not part of the mix:
they cannot use GPU capacity, so they do not decide what GPU capacity is usable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cosmos.stratum.scheduling.model import MILLI, Demand

ClassKey = tuple[int, int, frozenset[str]]
"""(gpu_count, gpu_milli, models) of a task class."""


@dataclass(frozen=True, slots=True)
class TaskClass:
    """One kind of GPU job in the mix."""

    gpu_count: int
    gpu_milli: int
    """Milli-GPUs per GPU (1000 = whole GPUs)."""
    models: frozenset[str] = frozenset()
    cpu_milli: int = 0
    memory_bytes: int = 0

    @property
    def key(self) -> ClassKey:
        return (self.gpu_count, self.gpu_milli, self.models)


@dataclass(frozen=True, slots=True)
class TaskMix:
    """An immutable snapshot of the mix: task classes with their popularity (summing to 1)."""

    classes: tuple[tuple[TaskClass, float], ...]

    def distance(self, other: TaskMix) -> float:
        """L1 distance between the two popularity distributions (0..2), by class shape."""
        mine = {cls.key: p for cls, p in self.classes}
        theirs = {cls.key: p for cls, p in other.classes}
        return sum(abs(mine.get(k, 0.0) - theirs.get(k, 0.0)) for k in mine.keys() | theirs.keys())


DEFAULT_MIX = TaskMix(
    classes=(
        (TaskClass(1, MILLI), 0.45),
        (TaskClass(1, 500), 0.15),
        (TaskClass(1, 250), 0.10),
        (TaskClass(2, MILLI), 0.12),
        (TaskClass(4, MILLI), 0.10),
        (TaskClass(8, MILLI), 0.08),
    )
)
"""Used until jobs have been observed: mostly single whole GPUs, some shares, some multi-GPU jobs."""


@dataclass
class _Observed:
    count: float = 0.0
    cpu: Counter[int] = field(default_factory=Counter)
    memory: Counter[int] = field(default_factory=Counter)


class WorkloadMix:
    """Learns the task mix from observed GPU demands (a histogram by class), starting from a prior.

    The prior counts as ``prior_weight`` observations, so it dominates only the first few dozen
    jobs. When more than ``window`` observations accumulate, all counts are halved: the mix follows
    the recent workload rather than all history. :meth:`snapshot` keeps the most popular classes up
    to ``coverage`` of the jobs (at most ``max_classes``): rare shapes add cost, not insight.
    """

    def __init__(
        self,
        prior: TaskMix = DEFAULT_MIX,
        *,
        prior_weight: float = 50.0,
        window: int = 20_000,
        coverage: float = 0.99,
        max_classes: int = 24,
    ) -> None:
        self.prior = prior
        self.prior_weight = prior_weight
        self.window = window
        self.coverage = coverage
        self.max_classes = max_classes
        self._observed: dict[ClassKey, _Observed] = {}
        self._total = 0.0
        self.observations = 0
        """Demands observed so far (never decays)."""

    def observe(self, demand: Demand) -> None:
        """Count one submitted demand (CPU-only demands are ignored, see the module docstring)."""
        if demand.gpu_count == 0:
            return
        key = (demand.gpu_count, demand.gpu_milli, demand.models)
        entry = self._observed.get(key)
        if entry is None:
            entry = self._observed[key] = _Observed()
        entry.count += 1
        entry.cpu[demand.cpu_milli] += 1
        entry.memory[demand.memory_bytes] += 1
        self._total += 1
        self.observations += 1
        if self._total > self.window:
            self._halve()

    def snapshot(self) -> TaskMix:
        """The current mix: prior blended with observations, most popular classes first."""
        weights: dict[ClassKey, float] = {}
        typical: dict[ClassKey, TaskClass] = {}
        for cls, p in self.prior.classes:
            weights[cls.key] = weights.get(cls.key, 0.0) + p * self.prior_weight
            typical[cls.key] = cls
        for key, entry in self._observed.items():
            weights[key] = weights.get(key, 0.0) + entry.count
            typical[key] = TaskClass(key[0], key[1], key[2], _median(entry.cpu), _median(entry.memory))
        total = sum(weights.values())
        if total <= 0:
            return DEFAULT_MIX
        # Most popular first; ties by shape so the result does not depend on dict order.
        ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1], sorted(kv[0][2])))
        kept: list[tuple[ClassKey, float]] = []
        covered = 0.0
        for key, weight in ranked:
            if covered >= self.coverage * total or len(kept) >= self.max_classes:
                break
            kept.append((key, weight))
            covered += weight
        return TaskMix(classes=tuple((typical[key], weight / covered) for key, weight in kept))

    def _halve(self) -> None:
        for key in list(self._observed):
            entry = self._observed[key]
            entry.count /= 2
            entry.cpu = Counter({v: c // 2 for v, c in entry.cpu.items() if c // 2})
            entry.memory = Counter({v: c // 2 for v, c in entry.memory.items() if c // 2})
            if entry.count < 0.5 or not entry.cpu:
                del self._observed[key]
        self._total = sum(entry.count for entry in self._observed.values())


def mix_of(demands: list[Demand], *, coverage: float = 1.0, max_classes: int = 64) -> TaskMix:
    """The exact mix of a known list of demands (no prior), e.g. a whole trace for reporting."""
    learner = WorkloadMix(prior=TaskMix(classes=()), prior_weight=0.0, window=len(demands) + 1)
    learner.coverage, learner.max_classes = coverage, max_classes
    for demand in demands:
        learner.observe(demand)
    return learner.snapshot()


def _median(values: Counter[int]) -> int:
    """The lower median of a histogram."""
    half = (sum(values.values()) + 1) // 2
    seen = 0
    for value in sorted(values):
        seen += values[value]
        if seen >= half:
            return value
    return 0
