"""The learned task mix and the fragmentation measure built on it."""

from __future__ import annotations

import pytest

from cosmos.stratum.scheduling import (
    DEFAULT_MIX,
    MILLI,
    Demand,
    NodeState,
    Scheduler,
    TaskClass,
    TaskMix,
    WorkloadMix,
)
from cosmos.stratum.scheduling.fragmentation import CompiledMix

pytestmark = pytest.mark.unit


def popularity(mix: TaskMix) -> dict[tuple[int, int], float]:
    return {(cls.gpu_count, cls.gpu_milli): p for cls, p in mix.classes}


def test_default_mix_until_jobs_are_observed() -> None:
    learner = WorkloadMix()
    assert popularity(learner.snapshot()) == popularity(DEFAULT_MIX)
    learner.observe(Demand("cpu-only", cpu_milli=4_000))  # CPU-only jobs do not shape GPU usability
    assert learner.observations == 0


def test_observed_classes_take_over_with_median_cpu() -> None:
    learner = WorkloadMix(prior_weight=10)
    for i in range(300):
        learner.observe(Demand(f"s{i}", cpu_milli=(3_000 if i % 3 else 9_000), gpu_milli=470))
    for i in range(100):
        learner.observe(Demand(f"w{i}", cpu_milli=12_000, gpu_count=1))
    mix = learner.snapshot()
    shares = popularity(mix)
    assert shares[(1, 470)] > 0.7 > shares[(1, MILLI)] > 0.2
    assert abs(sum(shares.values()) - 1) < 1e-9
    by_shape = {(c.gpu_count, c.gpu_milli): c for c, _ in mix.classes}
    assert by_shape[(1, 470)].cpu_milli == 3_000
    assert by_shape[(1, MILLI)].cpu_milli == 12_000


def test_window_halves_old_observations() -> None:
    learner = WorkloadMix(prior_weight=0, window=100)
    for i in range(100):
        learner.observe(Demand(f"old{i}", gpu_count=8))
    for i in range(150):
        learner.observe(Demand(f"new{i}", gpu_milli=250))
    shares = popularity(learner.snapshot())
    assert shares[(1, 250)] > 0.85


def test_scheduler_adopts_a_drifted_mix() -> None:
    scheduler = Scheduler()
    scheduler.add_node(NodeState.idle("n", 64_000, 1 << 36, ["T4"] * 4))
    before = scheduler.mix
    for i in range(200):
        scheduler.submit(Demand(f"j{i}", gpu_milli=330, cpu_milli=2_000, enqueue_time=i))
    after = scheduler.mix
    assert after is not before and popularity(after)[(1, 330)] > 0.5


def test_fragmentation_counts_what_the_mix_cannot_use() -> None:
    mix = TaskMix(classes=((TaskClass(1, MILLI, cpu_milli=10_000), 0.5), (TaskClass(1, 500), 0.5)))
    compiled = CompiledMix(mix, {"T4": 0})
    # Two free GPUs, plenty of CPU: nothing is fragmented.
    assert compiled.frag(((0, 1000), (0, 1000)), 64_000, 1 << 30) == 0
    # A 300 sliver is useless to both classes; a 600 GPU is usable by the half-GPU class only.
    assert compiled.frag(((0, 600), (0, 300)), 64_000, 1 << 30) == 300 * 0.5 + 900 * 0.5
    # CPU for one whole-GPU job only: the second free GPU is stranded for that class.
    assert compiled.frag(((0, 1000), (0, 1000)), 15_000, 1 << 30) == 0.5 * 1000
    # No CPU at all: the half-GPU class asks for none, so it can still use everything.
    assert compiled.frag(((0, 1000), (0, 1000)), 0, 1 << 30) == 0.5 * 2000
