"""Policies: FGD keeps whole GPUs usable where best-fit fragments; scoring paths agree."""

from __future__ import annotations

import random

import numpy as np
import pytest

from cosmos.stratum.scheduling import (
    MILLI,
    Demand,
    GpuState,
    NodeState,
    Placement,
    Scheduler,
    TaskClass,
    TaskMix,
    WorkloadMix,
)
from cosmos.stratum.scheduling.fragmentation import CompiledMix, gpu_key
from cosmos.stratum.scheduling.policies import FgdPlacer

pytestmark = pytest.mark.unit

GIB = 1 << 30
WHOLE_AND_HALVES = TaskMix(classes=((TaskClass(1, MILLI), 0.8), (TaskClass(1, 500), 0.2)))


def fixed_mix(policy: str, mix: TaskMix) -> Scheduler:
    """A scheduler scoring against ``mix`` only (nothing learned)."""
    return Scheduler(policy, workload=WorkloadMix(prior=mix), learn_mix=False)


def setup_fragmentable(scheduler: Scheduler) -> None:
    """Node a: GPU 0 has 600 free (a 400 share runs), GPU 1 free; node b: one free GPU."""
    scheduler.add_node(NodeState.idle("a", 32_000, 64 * GIB, ["T4", "T4"]))
    scheduler.add_node(NodeState.idle("b", 32_000, 64 * GIB, ["T4"]))
    scheduler.assume(Demand("running", gpu_milli=400), Placement("running", "a", (0,), 400, 0, 0))


def test_fgd_keeps_whole_gpus_free_where_best_fit_fragments() -> None:
    outcomes = {}
    for policy in ("fgd", "best-fit"):
        scheduler = fixed_mix(policy, WHOLE_AND_HALVES)
        setup_fragmentable(scheduler)
        share = scheduler.place(Demand("half", gpu_milli=500))
        assert share is not None
        whole = [scheduler.place(Demand(f"w{i}", gpu_count=1)) for i in range(2)]
        outcomes[policy] = (share.node_id, share.gpu_indices, sum(p is not None for p in whole))
    # Best-fit takes the fullest node (b) and breaks its only whole GPU: one whole job fits after.
    assert outcomes["best-fit"] == ("b", (0,), 1)
    # FGD puts the share into the 600 left on a's GPU 0: both whole GPUs stay usable.
    assert outcomes["fgd"] == ("a", (0,), 2)


def test_fgd_sends_cpu_only_jobs_to_cpu_rich_nodes() -> None:
    mix = TaskMix(classes=((TaskClass(1, MILLI, cpu_milli=12_000), 1.0),))
    scheduler = fixed_mix("fgd", mix)
    scheduler.add_node(NodeState.idle("dense", 96_000, 512 * GIB, ["G2"] * 8))
    scheduler.add_node(NodeState.idle("cpu-rich", 104_000, 512 * GIB, ["T4"] * 2))
    # On the dense node 56 cores would be left for 8 GPUs of 12-core jobs: 4 GPUs stranded.
    placement = scheduler.place(Demand("cpu-only", cpu_milli=40_000))
    assert placement is not None and placement.node_id == "cpu-rich"
    # A GPU job that needs the dense node's GPUs still gets them.
    gpu_job = scheduler.place(Demand("gpus", cpu_milli=24_000, gpu_count=2))
    assert gpu_job is not None


def test_first_fit_and_best_fit_choices() -> None:
    first = Scheduler("first-fit")
    best = Scheduler("best-fit")
    for scheduler in (first, best):
        scheduler.add_node(NodeState.idle("big", 64_000, 64 * GIB, ["T4"] * 4))
        scheduler.add_node(NodeState.idle("small", 8_000, 64 * GIB, ["T4"]))
    a = first.place(Demand("j", cpu_milli=1_000, gpu_count=1))
    b = best.place(Demand("j", cpu_milli=1_000, gpu_count=1))
    assert a is not None and a.node_id == "big"
    assert b is not None and b.node_id == "small"
    # Best-fit puts a share on the fullest GPU that fits, first-fit on the first.
    for scheduler in (first, best):
        scheduler.place(Demand("s1", gpu_milli=700))
        scheduler.place(Demand("s2", gpu_milli=200))
    assert [g.free_milli for g in first.cluster.node("big").gpus] == [0, 100, 1000, 1000]
    assert [g.free_milli for g in best.cluster.node("big").gpus] == [100, 1000, 1000, 1000]


def reference_delta(
    mix: CompiledMix, codes: dict[str, int], node: NodeState, demand: Demand
) -> tuple[float, int]:
    """F(after) - F(before) from whole GPU keys (the slow, obvious way), best option for a share."""
    before = mix.frag(gpu_key(node.gpus, codes), node.cpu_free, node.memory_free)
    cpu, memory = node.cpu_free - demand.cpu_milli, node.memory_free - demand.memory_bytes
    if not demand.fractional:
        taken = {g.index for g in [g for g in node.gpus if g.free_milli == MILLI][: demand.gpu_count]}
        after = [GpuState(g.index, g.model, 0 if g.index in taken else g.free_milli) for g in node.gpus]
        return mix.frag(gpu_key(after, codes), cpu, memory) - before, 0
    best: tuple[float, int] | None = None
    for free in sorted({g.free_milli for g in node.gpus if g.free_milli >= demand.gpu_milli}):
        index = next(g.index for g in node.gpus if g.free_milli == free)
        after = [
            GpuState(g.index, g.model, g.free_milli - (demand.gpu_milli if g.index == index else 0))
            for g in node.gpus
        ]
        score = mix.frag(gpu_key(after, codes), cpu, memory) - before
        if best is None or score < best[0] - 1e-9:
            best = (score, free)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fgd_vectorised_scalar_and_reference_scores_agree(seed: int) -> None:
    rng = random.Random(seed)
    mix = TaskMix(
        classes=(
            (TaskClass(1, MILLI, cpu_milli=8_000, memory_bytes=32 * GIB), 0.4),
            (TaskClass(1, 470, cpu_milli=12_000), 0.2),
            (TaskClass(1, 810, cpu_milli=3_000, models=frozenset({"G2"})), 0.15),
            (TaskClass(2, MILLI, cpu_milli=16_000), 0.1),
            (TaskClass(4, MILLI), 0.1),
            (TaskClass(1, 230, memory_bytes=8 * GIB), 0.05),
        )
    )
    scheduler = fixed_mix("fgd", mix)
    for i in range(40):
        model, count = rng.choice([("G2", 8), ("T4", 2), ("V100", 4), ("A10", 1)])
        scheduler.add_node(
            NodeState.idle(f"n{i}", rng.choice([16, 64, 96]) * 1000, 256 * GIB, [model] * count)
        )
    shapes = [
        (0, 0),
        (1, MILLI),
        (2, MILLI),
        (1, 500),
        (1, 230),
        (1, 810),
    ]
    for j in range(150):  # fill the cluster with a random workload
        count, milli = rng.choice(shapes)
        scheduler.place(
            Demand(
                f"fill{j}",
                cpu_milli=rng.choice([0, 2_000, 8_000]),
                memory_bytes=GIB,
                gpu_count=count,
                gpu_milli=milli,
            )
        )
    placer = scheduler.placer
    assert isinstance(placer, FgdPlacer)
    cluster = scheduler.cluster
    compiled = placer.compiled(cluster)
    checked = 0
    for j in range(30):
        count, milli = rng.choice(shapes)
        demand = Demand(
            f"probe{j}", cpu_milli=rng.choice([0, 4_000, 12_000]), gpu_count=count, gpu_milli=milli
        )
        slots = cluster.candidates(demand)
        if not len(slots):
            continue
        vector_scores, vector_frees = placer._score(cluster, compiled, demand, slots)
        for position, slot in enumerate(slots.tolist()):
            scalar = placer._score_one(cluster, compiled, demand, slot)
            reference = reference_delta(compiled, cluster.codes, cluster.node_at(slot), demand)
            assert scalar[0] == pytest.approx(reference[0], abs=1e-6)
            assert vector_scores[position] == pytest.approx(reference[0], abs=1e-6)
            if demand.fractional:
                assert scalar[1] == reference[1] == int(vector_frees[position])
            checked += 1
    assert checked > 30
    assert np.isfinite(placer._before[: cluster.slot_count]).all()


def test_fgd_placements_never_overcommit() -> None:
    rng = random.Random(7)
    scheduler = Scheduler("fgd")
    for i in range(30):
        scheduler.add_node(NodeState.idle(f"n{i}", 64_000, 128 * GIB, ["G2"] * rng.choice([1, 2, 4, 8])))
    live: list[str] = []
    for j in range(2_000):
        if live and rng.random() < 0.3:
            scheduler.release(live.pop(rng.randrange(len(live))))
            continue
        count, milli = rng.choice([(0, 0), (1, MILLI), (2, MILLI), (1, 300), (1, 650)])
        demand = Demand(
            f"j{j}", cpu_milli=rng.choice([1_000, 6_000]), memory_bytes=GIB, gpu_count=count, gpu_milli=milli
        )
        scheduler.submit(demand)
        for assignment in scheduler.schedule(float(j)):
            live.append(assignment.demand.job_id)
        scheduler.cancel(demand.job_id)
    for node in scheduler.cluster.nodes():
        assert node.cpu_free >= 0 and node.memory_free >= 0
        assert all(0 <= gpu.free_milli <= MILLI for gpu in node.gpus)
        held = sum(
            scheduler.cluster.allocations[j].placement.cpu_milli
            for j in scheduler.cluster.jobs_on(node.node_id)
        )
        assert node.cpu_free + held == node.cpu_milli
