"""Fit rules: GPU models, whole GPUs vs shares, CPU/memory limits, cordoned nodes, could-ever-fit."""

from __future__ import annotations

import random

import pytest

from cosmos.stratum.scheduling import (
    Demand,
    GpuState,
    NodeState,
    Placement,
    PlacementError,
    Policy,
    Scheduler,
)

pytestmark = pytest.mark.unit

GIB = 1 << 30
POLICIES = [p.value for p in Policy]


def node(node_id: str, models: list[str], cpu: int = 32_000, memory: int = 64 * GIB) -> NodeState:
    return NodeState.idle(node_id, cpu, memory, models)


@pytest.mark.parametrize("policy", POLICIES)
def test_model_constraint_never_lands_on_other_models(policy: str) -> None:
    scheduler = Scheduler(policy)
    scheduler.add_node(node("t4", ["T4"] * 8))
    scheduler.add_node(node("a100", ["A100"] * 2))
    placed = []
    for i in range(4):
        placement = scheduler.place(Demand(f"j{i}", gpu_count=1, models=frozenset({"a100", "H100"})))
        placed.append(placement)
    assert [p.node_id for p in placed[:2] if p] == ["a100", "a100"]
    assert placed[2] is None and placed[3] is None  # T4s are free, but not acceptable
    assert scheduler.place(Demand("any", gpu_count=1)) is not None  # an unconstrained job still fits


@pytest.mark.parametrize("policy", POLICIES)
def test_shares_pack_onto_one_gpu_and_whole_gpus_need_fully_free_ones(policy: str) -> None:
    scheduler = Scheduler(policy)
    scheduler.add_node(node("n", ["A10"] * 2))
    first = scheduler.place(Demand("s1", gpu_milli=400))
    assert first is not None and first.gpu_milli == 400
    second = scheduler.place(Demand("s2", gpu_milli=600))
    assert second is not None
    # Whatever the policy, one GPU is now fully free or both are partly used; a whole GPU must
    # only ever land on a fully free one.
    gpus = {gpu.index: gpu.free_milli for gpu in scheduler.cluster.node("n").gpus}
    whole = scheduler.place(Demand("w", gpu_count=1))
    if 1000 in gpus.values():
        assert whole is not None and gpus[whole.gpu_indices[0]] == 1000
    else:
        assert whole is None
    assert all(0 <= gpu.free_milli <= 1000 for gpu in scheduler.cluster.node("n").gpus)


def test_several_jobs_share_one_gpu_until_it_is_full() -> None:
    scheduler = Scheduler("best-fit")
    scheduler.add_node(node("n", ["T4"]))
    shares = [scheduler.place(Demand(f"s{i}", gpu_milli=250)) for i in range(5)]
    assert [s.gpu_indices for s in shares[:4] if s] == [(0,)] * 4
    assert shares[4] is None
    assert scheduler.place(Demand("w", gpu_count=1)) is None
    scheduler.release("s0")
    assert scheduler.place(Demand("s5", gpu_milli=250)) is not None
    assert scheduler.place(Demand("w2", gpu_count=1)) is None  # 3/4 still shared out


@pytest.mark.parametrize("policy", POLICIES)
def test_cpu_and_memory_limits(policy: str) -> None:
    scheduler = Scheduler(policy)
    scheduler.add_node(node("small", ["T4"], cpu=4_000, memory=8 * GIB))
    assert scheduler.place(Demand("cpu", cpu_milli=4_001)) is None
    assert scheduler.place(Demand("mem", memory_bytes=8 * GIB + 1)) is None
    assert scheduler.place(Demand("a", cpu_milli=3_000, memory_bytes=6 * GIB)) is not None
    assert scheduler.place(Demand("b", cpu_milli=1_001)) is None
    assert scheduler.place(Demand("c", memory_bytes=2 * GIB + 1)) is None
    assert scheduler.place(Demand("d", cpu_milli=1_000, memory_bytes=2 * GIB, gpu_count=1)) is not None
    state = scheduler.cluster.node("small")
    assert (state.cpu_free, state.memory_free, state.gpu_free_milli) == (0, 0, 0)


@pytest.mark.parametrize("policy", POLICIES)
def test_nodes_without_gpus_take_cpu_jobs_only(policy: str) -> None:
    scheduler = Scheduler(policy)
    scheduler.add_node(node("gpu", ["T4"], cpu=8_000))
    for i in range(9):  # enough nodes to exercise both the one-node and the many-node scoring paths
        scheduler.add_node(node(f"cpu{i}", [], cpu=64_000))
    cpu_jobs = [scheduler.place(Demand(f"c{i}", cpu_milli=4_000)) for i in range(20)]
    assert all(p is not None for p in cpu_jobs)
    gpu_job = scheduler.place(Demand("g", cpu_milli=4_000, gpu_milli=500))
    assert gpu_job is None or gpu_job.node_id == "gpu"  # first-fit filled the GPU node's CPU
    if policy.startswith("fgd"):  # CPU taken from the GPU node would strand its GPU
        assert all(p is not None and p.node_id != "gpu" for p in cpu_jobs)
        assert gpu_job is not None


@pytest.mark.parametrize("policy", POLICIES)
def test_cordoned_nodes_are_not_used(policy: str) -> None:
    scheduler = Scheduler(policy)
    scheduler.add_node(node("a", ["T4"] * 4))
    scheduler.add_node(node("b", ["T4"] * 4))
    scheduler.set_schedulable("a", False)
    placements = [scheduler.place(Demand(f"j{i}", gpu_count=1)) for i in range(5)]
    assert [p.node_id for p in placements if p] == ["b"] * 4
    assert placements[4] is None
    scheduler.set_schedulable("a", True)
    again = scheduler.place(Demand("j5", gpu_count=1))
    assert again is not None and again.node_id == "a"


def test_could_ever_fit_uses_total_capacity_and_explains() -> None:
    scheduler = Scheduler()
    assert scheduler.unfit_reason(Demand("x")) == "there are no nodes"
    scheduler.add_node(node("a", ["A100"] * 4, cpu=64_000))
    busy = Demand("busy", gpu_count=4)
    assert scheduler.place(busy) is not None
    assert scheduler.could_ever_fit(
        Demand("later", gpu_count=4, models=frozenset({"a100"}))
    )  # busy now, fits later
    reason = scheduler.unfit_reason(Demand("big", gpu_count=8, models=frozenset({"A100", "H100"})))
    assert reason is not None and "8 GPU(s) of A100|H100" in reason
    assert not scheduler.could_ever_fit(Demand("t4", gpu_count=1, models=frozenset({"T4"})))
    cpu_reason = scheduler.unfit_reason(Demand("cpu", cpu_milli=128_000))
    assert cpu_reason is not None and "64000" in cpu_reason
    scheduler.add_node(node("h", ["H100"] * 8))
    assert scheduler.could_ever_fit(Demand("big", gpu_count=8, models=frozenset({"A100", "H100"})))
    scheduler.set_schedulable("h", False)
    assert scheduler.could_ever_fit(Demand("big", gpu_count=8))  # cordoning is temporary
    assert scheduler.unfit_reason(Demand("big", gpu_count=8), schedulable_only=True) is not None


def test_gpu_memory_and_node_selector() -> None:
    scheduler = Scheduler()
    small = [GpuState(i, "A10", memory_bytes=24 * GIB) for i in range(2)]
    large = [GpuState(i, "A100", memory_bytes=80 * GIB) for i in range(2)]
    scheduler.add_node(NodeState.idle("small", 32_000, 64 * GIB, small, labels={"zone": "a"}))
    scheduler.add_node(NodeState.idle("large", 32_000, 64 * GIB, large, labels={"zone": "b"}))
    big = scheduler.place(Demand("m", gpu_count=1, gpu_memory_bytes=40 * GIB))
    assert big is not None and big.node_id == "large"
    zoned = scheduler.place(Demand("z", gpu_count=1, node_selector=(("zone", "a"),)))
    assert zoned is not None and zoned.node_id == "small"
    assert scheduler.place(Demand("nowhere", node_selector=(("zone", "c"),))) is None
    assert scheduler.unfit_reason(Demand("nowhere", node_selector=(("zone", "c"),))) is not None


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_gpu_node_is_checked_per_gpu(policy: str) -> None:
    scheduler = Scheduler(policy)
    gpus = [GpuState(0, "T4"), GpuState(1, "A100"), GpuState(2, "A100")]
    scheduler.add_node(NodeState.idle("mixed", 32_000, 64 * GIB, gpus))
    placement = scheduler.place(Demand("a", gpu_count=2, models=frozenset({"A100"})))
    assert placement is not None and placement.gpu_indices == (1, 2)
    assert scheduler.place(Demand("b", gpu_count=1, models=frozenset({"A100"}))) is None
    share = scheduler.place(Demand("c", gpu_milli=300))
    assert share is not None and share.gpu_indices == (0,)


def test_release_remove_update_and_assume() -> None:
    scheduler = Scheduler()
    scheduler.add_node(node("a", ["T4"] * 2))
    first = scheduler.place(Demand("j1", cpu_milli=8_000, gpu_count=1))
    assert first is not None
    assert scheduler.release("j1") == first
    assert scheduler.release("j1") is None
    assert scheduler.cluster.node("a").gpu_free_milli == 2000

    placement = Placement("old", "a", (1,), 500, 1_000, GIB)
    scheduler.assume(Demand("old", cpu_milli=1_000, memory_bytes=GIB, gpu_milli=500), placement)
    with pytest.raises(PlacementError):
        scheduler.assume(Demand("over", gpu_count=1), Placement("over", "a", (1,), 1000, 0, 0))
    # The agent re-registers with more CPU: its running job stays allocated.
    scheduler.upsert_node(node("a", ["T4"] * 2, cpu=64_000))
    state = scheduler.cluster.node("a")
    assert state.cpu_free == 63_000 and [g.free_milli for g in state.gpus] == [1000, 500]
    assert scheduler.remove_node("a") == ["old"]
    assert "a" not in scheduler.cluster and scheduler.release("old") is None


def test_demand_validation() -> None:
    assert Demand("w", gpu_count=2).gpu_milli == 1000
    share = Demand("s", gpu_milli=250, models=frozenset({" a100 "}))
    assert (share.gpu_count, share.fractional, share.models) == (1, True, frozenset({"A100"}))
    for bad in (
        {"gpu_count": 9},
        {"gpu_count": 2, "gpu_milli": 500},
        {"gpu_milli": 1001, "gpu_count": 1},
        {"cpu_milli": -1},
    ):
        with pytest.raises(ValueError):
            Demand("bad", **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", POLICIES)
def test_random_operations_keep_every_rule(policy: str) -> None:
    """Nodes come, go, change and get cordoned while jobs arrive and end: no rule is ever broken."""
    rng = random.Random(policy)
    scheduler = Scheduler(policy, starvation_after=50)
    models = ["A100", "T4", "H100"]
    made = 0

    def new_node() -> NodeState:
        nonlocal made
        made += 1
        shape = rng.random()
        if shape < 0.15:
            gpus: list[GpuState] = []
        elif shape < 0.3:  # mixed models and memory sizes
            gpus = [
                GpuState(i, rng.choice(models), memory_bytes=rng.choice([16, 80]) * GIB) for i in range(3)
            ]
        else:
            model = rng.choice(models)
            gpus = [GpuState(i, model, memory_bytes=40 * GIB) for i in range(rng.choice([1, 2, 4, 8]))]
        cpu, memory = rng.choice([4, 16, 64]) * 1000, rng.choice([16, 256]) * GIB
        return NodeState.idle(f"n{made}", cpu, memory, gpus, labels={"zone": rng.choice("ab")})

    for _ in range(12):
        scheduler.add_node(new_node())
    running: list[str] = []
    for step in range(400):
        roll = rng.random()
        nodes = list(scheduler.cluster.nodes())
        if roll < 0.04 and nodes:
            gone = set(scheduler.remove_node(rng.choice(nodes).node_id))
            running = [job for job in running if job not in gone]
        elif roll < 0.08:
            scheduler.add_node(new_node())
        elif roll < 0.1 and nodes:
            scheduler.set_schedulable(rng.choice(nodes).node_id, rng.random() < 0.5)
        elif roll < 0.3 and running:
            scheduler.release(running.pop(rng.randrange(len(running))))
        else:
            request: dict[str, int] = rng.choice(
                [{}, {"gpu_milli": rng.choice([250, 470, 810])}, {"gpu_count": rng.choice([1, 2, 8])}]
            )
            demand = Demand(
                f"j{step}",
                cpu_milli=rng.choice([0, 1_000, 12_000]),
                memory_bytes=rng.choice([0, GIB]),
                models=frozenset(rng.sample(models, 1)) if rng.random() < 0.3 else frozenset(),
                gpu_memory_bytes=40 * GIB if rng.random() < 0.1 else 0,
                node_selector=(("zone", "a"),) if rng.random() < 0.1 else (),
                tenant=rng.choice("xyz"),
                enqueue_time=float(step),
                gpu_count=request.get("gpu_count", 0),
                gpu_milli=request.get("gpu_milli", 0),
            )
            if scheduler.could_ever_fit(demand):
                scheduler.submit(demand)
        for assignment in scheduler.schedule(float(step)):
            running.append(assignment.demand.job_id)
            demand, placement = assignment.demand, assignment.placement
            target = scheduler.cluster.node(placement.node_id)
            assert target.schedulable
            assert all(target.labels.get(key) == value for key, value in demand.node_selector)
            held = [gpu for gpu in target.gpus if gpu.index in placement.gpu_indices]
            assert len(held) == demand.gpu_count == len(placement.gpu_indices)
            assert all(not demand.models or gpu.model in demand.models for gpu in held)
            assert all(gpu.memory_bytes >= demand.gpu_memory_bytes for gpu in held)
    for state in scheduler.cluster.nodes():
        assert state.cpu_free >= 0 and state.memory_free >= 0
        assert all(0 <= gpu.free_milli <= 1000 for gpu in state.gpus)
        jobs = [
            scheduler.cluster.allocations[job].placement for job in scheduler.cluster.jobs_on(state.node_id)
        ]
        assert state.cpu_free + sum(p.cpu_milli for p in jobs) == state.cpu_milli
        for gpu in state.gpus:
            taken = sum(p.gpu_milli for p in jobs if gpu.index in p.gpu_indices)
            assert gpu.free_milli + taken == 1000


CONTAINER = frozenset({"podman", "docker"})


@pytest.mark.parametrize("policy", POLICIES)
def test_a_job_with_an_image_lands_only_on_a_node_with_a_container_runtime(policy: str) -> None:
    scheduler = Scheduler(policy)
    # The bare node is the better fit by resources (smaller): only the runtime keeps the job off it.
    scheduler.add_node(NodeState.idle("bare", 4_000, 8 * GIB))
    scheduler.add_node(NodeState.idle("podman", 32_000, 64 * GIB, runtimes=("process", "podman")))
    for i in range(3):
        placed = scheduler.place(Demand(f"img{i}", cpu_milli=1_000, runtimes=CONTAINER))
        assert placed is not None and placed.node_id == "podman"
    # Process jobs still go anywhere.
    assert scheduler.place(Demand("proc", cpu_milli=1_000)) is not None


def test_a_job_with_an_image_waits_while_no_node_has_a_runtime() -> None:
    scheduler = Scheduler()
    scheduler.add_node(NodeState.idle("bare", 32_000, 64 * GIB))
    demand = Demand("img", cpu_milli=1_000, runtimes=CONTAINER)
    assert scheduler.place(demand) is None
    assert scheduler.unfit_reason(demand) == (
        "no node has a container runtime (docker or podman) for a job with an image"
    )
    only_docker = Demand("img2", runtimes=frozenset({"docker"}))
    scheduler.add_node(NodeState.idle("podman", 8_000, 8 * GIB, runtimes=("process", "podman")))
    assert scheduler.unfit_reason(demand) is None
    assert scheduler.place(only_docker) is None  # podman is no docker when the job names docker only
    placed = scheduler.place(demand)
    assert placed is not None and placed.node_id == "podman"
    # A node that loses its runtime (agent re-registers without podman) takes no more image jobs.
    scheduler.upsert_node(NodeState.idle("podman", 8_000, 8 * GIB))
    assert scheduler.place(Demand("img3", runtimes=CONTAINER)) is None
