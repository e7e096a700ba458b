"""Stratum's metrics (docs/metrics.md), on the process registry of :mod:`cosmos.runtime.metrics`.

Events (submits, placements, requeues, ends) are counted by the dispatcher as they are stored; the
pool's state (queue, agents, GPUs, fragmentation, live jobs' progress) is read from the dispatcher,
the agent registry and the scheduler's cluster right before each scrape (:func:`refresher`). Only the
leading replica has jobs and agents; a follower's state gauges read zero.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from cosmos.runtime.metrics import REGISTRY, STEP_BUCKETS
from cosmos.stratum.scheduling import MILLI
from cosmos.stratum.scheduling.cluster import fragmentation
from cosmos.stratum.scheduling.fragmentation import CompiledMix
from cosmos.stratum.v1 import agent_pb2, job_pb2

JS = job_pb2.JobState
AS = agent_pb2.AgentState
LIVE_JOB_STATES = (JS.JOB_STATE_QUEUED, JS.JOB_STATE_ASSIGNED, JS.JOB_STATE_RUNNING)
TERMINAL_JOB_STATES = (
    JS.JOB_STATE_SUCCEEDED,
    JS.JOB_STATE_FAILED,
    JS.JOB_STATE_CANCELLED,
    JS.JOB_STATE_TIMED_OUT,
)

JOBS_SUBMITTED = Counter(
    "cosmos_stratum_jobs_submitted", "Jobs accepted by SubmitJob (new jobs, not repeats).", registry=REGISTRY
)
JOBS_FINISHED = Counter(
    "cosmos_stratum_jobs_finished",
    "Jobs that reached a terminal state, by state: succeeded, failed, cancelled, timed_out.",
    ["state"],
    registry=REGISTRY,
)
PLACEMENTS = Counter(
    "cosmos_stratum_placements",
    "Job attempts placed on an agent (rate: placements per second).",
    registry=REGISTRY,
)
REQUEUES = Counter(
    "cosmos_stratum_requeues",
    "Job attempts put back in the queue (their agent was lost, or failed them for the infrastructure).",
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "cosmos_stratum_queue_wait_seconds",
    "Seconds a job attempt waited in the queue before it was placed.",
    buckets=STEP_BUCKETS,
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "cosmos_stratum_job_duration_seconds",
    "Seconds from a job's submission to its end, by terminal state.",
    ["state"],
    buckets=STEP_BUCKETS,
    registry=REGISTRY,
)
JOBS = Gauge(
    "cosmos_stratum_jobs", "Live jobs, by state: queued, assigned, running.", ["state"], registry=REGISTRY
)
QUEUE_DEPTH = Gauge("cosmos_stratum_queue_depth", "Jobs waiting to be placed.", registry=REGISTRY)
QUEUE_OLDEST_AGE = Gauge(
    "cosmos_stratum_queue_oldest_age_seconds",
    "Seconds the longest-waiting queued job has waited (0 when the queue is empty).",
    registry=REGISTRY,
)
JOB_PROGRESS = Gauge(
    "cosmos_stratum_job_progress_ratio",
    "Progress of each running job, 0 to 1, as its agent last reported (only live jobs: the series "
    "of a job goes when it ends).",
    ["job_id", "agent_id"],
    registry=REGISTRY,
)
AGENTS = Gauge(
    "cosmos_stratum_agents",
    "Agents this Stratum knows, by state: ready, cordoned, draining, lost, revoked, ...",
    ["state"],
    registry=REGISTRY,
)
GPUS = Gauge(
    "cosmos_stratum_gpus",
    "GPUs of the pool's connected agents (lost ones left out), by model and state: total, allocated "
    "(fractional shares count their part).",
    ["model", "state"],
    registry=REGISTRY,
)
GPU_FRAGMENTATION = Gauge(
    "cosmos_stratum_gpu_fragmentation_ratio",
    "Share of idle GPU capacity the pool's typical tasks cannot use (fragmented / idle milli-GPUs; "
    "the simulator's measure, against the learned task mix).",
    registry=REGISTRY,
)
GPU_IDLE = Gauge(
    "cosmos_stratum_gpu_idle",
    "Idle GPU capacity of the scheduler's cluster, in GPUs.",
    registry=REGISTRY,
)
GPU_FRAGMENTED = Gauge(
    "cosmos_stratum_gpu_fragmented",
    "Idle GPU capacity the typical tasks cannot use, in GPUs.",
    registry=REGISTRY,
)


def state_name(enum: type, prefix: str, value: int) -> str:
    """``JOB_STATE_TIMED_OUT`` as ``timed_out``."""
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix).lower()


def job_state(state: int) -> str:
    return state_name(JS, "JOB_STATE_", state)


def agent_state(state: int) -> str:
    return state_name(AS, "AGENT_STATE_", state)


for _state in TERMINAL_JOB_STATES:
    JOBS_FINISHED.labels(job_state(_state))  # shown at 0 before the first end


def placed(job: job_pb2.Job) -> None:
    """A job attempt was placed: count it and how long it waited (since it was last queued)."""
    PLACEMENTS.inc()
    since = job.update_time if job.update_time.seconds else job.create_time
    if since.seconds:
        QUEUE_WAIT.observe(max(0.0, time.time() - since.ToNanoseconds() / 1e9))


def finished(job: job_pb2.Job) -> None:
    """A job reached its terminal state (stored)."""
    state = job_state(job.state)
    JOBS_FINISHED.labels(state).inc()
    if job.create_time.seconds and job.end_time.seconds:
        took = (job.end_time.ToNanoseconds() - job.create_time.ToNanoseconds()) / 1e9
        JOB_DURATION.labels(state).observe(max(0.0, took))


def refresher(
    jobs: Callable[[], list[job_pb2.Job]],
    agents: Callable[[], list[agent_pb2.Agent]],
    scheduler: Callable[[], object | None],
) -> Callable[[], None]:
    """Sets the state gauges from the live jobs, the agents and the scheduler (None: no scheduler)."""

    def refresh() -> None:
        live = jobs()
        by_state = Tally(job.state for job in live)
        for state in LIVE_JOB_STATES:
            JOBS.labels(job_state(state)).set(by_state[state])
        queued = [job for job in live if job.state == JS.JOB_STATE_QUEUED]
        QUEUE_DEPTH.set(len(queued))
        now = time.time()
        since = [
            (job.update_time if job.update_time.seconds else job.create_time).ToNanoseconds() / 1e9
            for job in queued
        ]
        QUEUE_OLDEST_AGE.set(max(0.0, now - min(since)) if since else 0.0)
        JOB_PROGRESS.clear()  # bounded: only the jobs running now have a series
        for job in live:
            if job.state == JS.JOB_STATE_RUNNING:
                JOB_PROGRESS.labels(job.job_id, job.agent_id).set(
                    min(1.0, max(0.0, job.progress.percent / 100.0))
                )
        known = list(agents())
        AGENTS.clear()
        for shown in (
            AS.AGENT_STATE_READY,
            AS.AGENT_STATE_CORDONED,
            AS.AGENT_STATE_DRAINING,
            AS.AGENT_STATE_LOST,
        ):
            AGENTS.labels(agent_state(shown)).set(0)
        for agent_state_value, count in Tally(agent.state for agent in known).items():
            AGENTS.labels(agent_state(agent_state_value)).set(count)
        _gpus(known, live)
        _fragmentation(scheduler())

    return refresh


def _gpus(agents: list[agent_pb2.Agent], live: list[job_pb2.Job]) -> None:
    model_of: dict[tuple[str, int], str] = {}
    total: Tally[str] = Tally()
    for agent in agents:
        if agent.state == AS.AGENT_STATE_LOST:
            continue
        for gpu in agent.inventory.gpus:
            model_of[(agent.agent_id, gpu.index)] = gpu.model
            total[gpu.model] += 1
    allocated: dict[str, float] = dict.fromkeys(total, 0.0)
    for job in live:
        if job.state not in (JS.JOB_STATE_ASSIGNED, JS.JOB_STATE_RUNNING):
            continue
        share = job.spec.resources.gpu.share
        part = share if 0 < share < 1 else 1.0
        for index in job.gpu_indices:
            model = model_of.get((job.agent_id, index))
            if model is not None:
                allocated[model] = allocated.get(model, 0.0) + part
    GPUS.clear()
    for model, count in total.items():
        GPUS.labels(model, "total").set(count)
        GPUS.labels(model, "allocated").set(allocated.get(model, 0.0))


def _fragmentation(scheduler: object | None) -> None:
    from cosmos.stratum.scheduling import Scheduler

    if not isinstance(scheduler, Scheduler) or not len(scheduler.cluster):
        GPU_FRAGMENTATION.set(0)
        GPU_IDLE.set(0)
        GPU_FRAGMENTED.set(0)
        return
    frag, idle = fragmentation(scheduler.cluster, CompiledMix(scheduler.mix, scheduler.cluster.codes))
    GPU_IDLE.set(idle / MILLI)
    GPU_FRAGMENTED.set(frag / MILLI)
    GPU_FRAGMENTATION.set(frag / idle if idle else 0.0)
