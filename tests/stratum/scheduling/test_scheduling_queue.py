"""Queue order: priority, aging (no starvation), weighted DRF fair share, holding for starving jobs."""

from __future__ import annotations

import pytest

from cosmos.stratum.scheduling import Demand, JobQueue, NodeState, Scheduler

pytestmark = pytest.mark.unit

GIB = 1 << 30


def one_gpu_cluster(**kwargs: object) -> Scheduler:
    scheduler = Scheduler("best-fit", **kwargs)  # type: ignore[arg-type]
    scheduler.add_node(NodeState.idle("n", 16_000, 64 * GIB, ["T4"]))
    return scheduler


def test_higher_priority_first_then_earlier() -> None:
    queue = JobQueue()
    queue.push(Demand("late-low", priority=0, enqueue_time=10))
    queue.push(Demand("early-low", priority=0, enqueue_time=5))
    queue.push(Demand("high", priority=3, enqueue_time=20))
    order = [d.job_id for d in queue.ordered(20, lambda tenant: 0.0)]
    assert order == ["high", "early-low", "late-low"]
    assert queue.remove("high") is not None and queue.remove("high") is None
    assert len(queue) == 2 and "early-low" in queue


def test_aging_lets_a_low_priority_job_overtake_a_stream_of_new_high_priority_jobs() -> None:
    scheduler = one_gpu_cluster(queue=JobQueue(aging_per_second=1 / 60))
    scheduler.submit(Demand("low", gpu_count=1, priority=0, enqueue_time=0))
    ran: list[str] = []
    running: str | None = None
    for minute in range(20):
        now = 60.0 * minute
        scheduler.submit(Demand(f"high{minute}", gpu_count=1, priority=5, enqueue_time=now))
        if running is not None:
            scheduler.release(running)
        placed = scheduler.schedule(now)
        assert len(placed) == 1
        running = placed[0].demand.job_id
        ran.append(running)
    # At first the new high-priority jobs win; after 5 minutes of waiting the low one has aged past
    # priority 5 and runs ahead of the high-priority jobs queued after it.
    assert ran[0] == "high0"
    assert "low" in ran
    position = ran.index("low")
    assert 4 <= position <= 7
    assert all(job.startswith("high") for job in ran[position + 1 :])
    # Without aging it would never run.
    stuck = one_gpu_cluster(queue=JobQueue(aging_per_second=0.0))
    stuck.submit(Demand("low", gpu_count=1, enqueue_time=0))
    previous: str | None = None
    for minute in range(20):
        stuck.submit(Demand(f"high{minute}", gpu_count=1, priority=5, enqueue_time=60.0 * minute))
        if previous is not None:
            stuck.release(previous)
        previous = stuck.schedule(60.0 * minute)[0].demand.job_id
        assert previous != "low"


def test_fair_share_splits_between_two_tenants() -> None:
    scheduler = Scheduler("best-fit")
    scheduler.add_node(NodeState.idle("n", 64_000, 256 * GIB, ["A100"] * 8))
    # Tenant "a" submitted all its jobs first; fair share still interleaves the tenants.
    for i in range(8):
        scheduler.submit(Demand(f"a{i}", gpu_count=1, tenant="a", enqueue_time=0))
    for i in range(8):
        scheduler.submit(Demand(f"b{i}", gpu_count=1, tenant="b", enqueue_time=0))
    placed = scheduler.schedule(0)
    tenants = [assignment.demand.tenant for assignment in placed]
    assert tenants.count("a") == 4 and tenants.count("b") == 4
    assert scheduler.dominant_share("a") == scheduler.dominant_share("b") == 0.5


def test_weighted_fair_share() -> None:
    scheduler = Scheduler("best-fit", queue=JobQueue(tenant_weights={"big": 3.0}))
    scheduler.add_node(NodeState.idle("n", 64_000, 256 * GIB, ["A100"] * 8))
    for i in range(8):
        scheduler.submit(Demand(f"s{i}", gpu_count=1, tenant="small", enqueue_time=0))
        scheduler.submit(Demand(f"b{i}", gpu_count=1, tenant="big", enqueue_time=0))
    tenants = [a.demand.tenant for a in scheduler.schedule(0)]
    assert (tenants.count("big"), tenants.count("small")) == (6, 2)


def test_fair_share_is_dominant_resource() -> None:
    scheduler = Scheduler("best-fit")
    scheduler.add_node(NodeState.idle("n", 100_000, 100 * GIB, ["A100"] * 10))
    # cpu-heavy holds 50% of the CPU and nothing else: its dominant share is 0.5.
    scheduler.submit(Demand("cpu-heavy", cpu_milli=50_000, tenant="cpu", enqueue_time=0))
    assert len(scheduler.schedule(0)) == 1
    assert scheduler.dominant_share("cpu") == 0.5
    for i in range(6):
        scheduler.submit(Demand(f"c{i}", cpu_milli=1_000, gpu_count=1, tenant="cpu", enqueue_time=1))
        scheduler.submit(Demand(f"g{i}", cpu_milli=1_000, gpu_count=1, tenant="gpu", enqueue_time=1))
    first_five = [a.demand.tenant for a in scheduler.schedule(1)][:5]
    assert first_five == ["gpu"] * 5  # "gpu" catches up to 50% of the GPUs before "cpu" gets any


def test_a_starving_big_job_holds_back_competing_small_jobs() -> None:
    scheduler = Scheduler("best-fit", starvation_after=600)
    scheduler.add_node(NodeState.idle("n", 64_000, 256 * GIB, ["A100"] * 4))
    scheduler.submit(Demand("small0", gpu_count=1, enqueue_time=0))
    assert len(scheduler.schedule(0)) == 1
    scheduler.submit(Demand("big", gpu_count=4, enqueue_time=0))
    scheduler.submit(Demand("small1", gpu_count=1, enqueue_time=900, priority=-20))
    scheduler.submit(Demand("cpu", cpu_milli=1_000, enqueue_time=900, priority=-20))
    # The big job has waited 15 minutes and ranks first; the small GPU job behind it would take a
    # GPU it is waiting for, so it is held back; the CPU-only job does not compete and runs.
    placed = [a.demand.job_id for a in scheduler.schedule(900)]
    assert placed == ["cpu"]
    scheduler.release("small0")
    placed = [a.demand.job_id for a in scheduler.schedule(960)]
    assert placed == ["big"]
    # Before it starves, backfilling is allowed.
    fresh = Scheduler("best-fit", starvation_after=600)
    fresh.add_node(NodeState.idle("n", 64_000, 256 * GIB, ["A100"] * 4))
    fresh.submit(Demand("small0", gpu_count=1, enqueue_time=0))
    fresh.schedule(0)
    fresh.submit(Demand("big", gpu_count=4, enqueue_time=0))
    fresh.submit(Demand("small1", gpu_count=1, enqueue_time=10, priority=-20))
    assert [a.demand.job_id for a in fresh.schedule(10)] == ["small1"]


def test_schedule_demands_orders_without_the_internal_queue() -> None:
    scheduler = one_gpu_cluster()
    demands = [
        Demand("old-low", gpu_count=1, priority=0, enqueue_time=0),
        Demand("new-high", gpu_count=1, priority=5, enqueue_time=100),
    ]
    placed = scheduler.schedule_demands(demands, now=100)
    assert [a.demand.job_id for a in placed] == ["new-high"]
    assert len(scheduler.queue) == 0
    scheduler.release("new-high")
    placed = scheduler.schedule_demands(demands[:1], now=100)
    assert [a.demand.job_id for a in placed] == ["old-low"]
