"""Stratum's scrape-time gauges from the live state: the queue, live jobs' progress (a series per
running job only), agents by state, GPUs allocated of total by model, and fragmentation."""

from __future__ import annotations

import pytest

from cosmos.runtime import wellknown
from cosmos.runtime.metrics import REGISTRY
from cosmos.stratum import metrics
from cosmos.stratum.placement import SchedulerAllocator
from cosmos.stratum.v1 import agent_pb2, job_pb2

pytestmark = pytest.mark.unit

JS = job_pb2.JobState
GIB = 1 << 30


def agent(agent_id: str, gpus: int, state: int = agent_pb2.AGENT_STATE_READY) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        agent_id=agent_id,
        state=state,  # type: ignore[arg-type]
        inventory=agent_pb2.Inventory(
            cpu_millis=16_000,
            memory_bytes=64 * GIB,
            gpus=[agent_pb2.Gpu(index=i, model="A100", memory_bytes=80 * GIB) for i in range(gpus)],
        ),
    )


def job(job_id: str, state: int, *, agent_id: str = "", gpus: tuple[int, ...] = (), percent: float = 0.0,
        share: float = 0.0) -> job_pb2.Job:  # fmt: skip
    made = job_pb2.Job(job_id=job_id, state=state, agent_id=agent_id, gpu_indices=gpus)  # type: ignore[arg-type]
    made.spec.resources.gpu.share = share
    made.spec.resources.gpu.count = 0 if share else len(gpus)
    made.progress.percent = percent
    made.create_time.CopyFrom(wellknown.now())
    made.update_time.FromSeconds(made.create_time.seconds - 30)
    return made


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_the_gauges_follow_the_live_state_and_drop_ended_jobs() -> None:
    agents = [agent("a", 2), agent("b", 1), agent("c", 4, agent_pb2.AGENT_STATE_LOST)]
    allocator = SchedulerAllocator()
    for known in agents[:2]:
        allocator.upsert_node(known)
    live = [
        job("q1", JS.JOB_STATE_QUEUED),
        job("r1", JS.JOB_STATE_RUNNING, agent_id="a", gpus=(0,), percent=42.0),
        job("r2", JS.JOB_STATE_RUNNING, agent_id="b", gpus=(0,), percent=150.0, share=0.5),
    ]
    refresh = metrics.refresher(lambda: live, lambda: agents, lambda: allocator.scheduler)
    refresh()
    assert sample("cosmos_stratum_queue_depth") == 1
    assert 29 <= (sample("cosmos_stratum_queue_oldest_age_seconds") or 0) < 60
    assert sample("cosmos_stratum_jobs", state="running") == 2
    assert sample("cosmos_stratum_job_progress_ratio", job_id="r1", agent_id="a") == 0.42
    assert sample("cosmos_stratum_job_progress_ratio", job_id="r2", agent_id="b") == 1.0  # clamped
    assert sample("cosmos_stratum_agents", state="ready") == 2
    assert sample("cosmos_stratum_agents", state="lost") == 1
    # The lost agent's GPUs are not the pool's; a half share counts half.
    assert sample("cosmos_stratum_gpus", model="A100", state="total") == 3
    assert sample("cosmos_stratum_gpus", model="A100", state="allocated") == 1.5
    assert sample("cosmos_stratum_gpu_idle") == 3  # nothing reserved in the scheduler here
    assert 0 <= (sample("cosmos_stratum_gpu_fragmentation_ratio") or 0) <= 1

    # r1 ended, the queue emptied: its series goes, nothing is left waiting.
    live[:] = [live[2]]
    refresh()
    assert sample("cosmos_stratum_job_progress_ratio", job_id="r1", agent_id="a") is None
    assert sample("cosmos_stratum_queue_depth") == 0
    assert sample("cosmos_stratum_queue_oldest_age_seconds") == 0


def test_a_finished_job_is_counted_by_state_with_its_duration() -> None:
    before = sample("cosmos_stratum_jobs_finished_total", state="timed_out") or 0
    ended = job("t1", JS.JOB_STATE_TIMED_OUT)
    ended.create_time.FromSeconds(ended.create_time.seconds - 5)
    ended.end_time.CopyFrom(wellknown.now())
    metrics.finished(ended)
    assert sample("cosmos_stratum_jobs_finished_total", state="timed_out") == before + 1
    assert (sample("cosmos_stratum_job_duration_seconds_sum", state="timed_out") or 0) >= 5
