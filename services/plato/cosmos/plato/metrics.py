"""Plato's metrics (docs/metrics.md), on the process registry of :mod:`cosmos.runtime.metrics`.

Transitions are counted by the evaluator as it commits them (each once, by the process that commits
it: a redelivered input changes nothing and counts nothing); the queues are read from JetStream right
before each scrape (:func:`sampler`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2
from prometheus_client import Counter, Gauge, Histogram

from cosmos.plato.v1 import engine_pb2, workflow_pb2
from cosmos.protocol import subjects, values
from cosmos.runtime.metrics import REGISTRY, STEP_BUCKETS

log = logging.getLogger(__name__)

WF = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
TERMINAL_STEP_STATES = (
    SS.STEP_STATE_COMPLETED,
    SS.STEP_STATE_FAILED,
    SS.STEP_STATE_TIMED_OUT,
    SS.STEP_STATE_CANCELLED,
)
TERMINAL_WORKFLOW_STATES = (
    WF.WORKFLOW_STATE_COMPLETED,
    WF.WORKFLOW_STATE_FAILED,
    WF.WORKFLOW_STATE_CANCELLED,
)

WORKFLOWS = Counter(
    "cosmos_plato_workflows",
    "Workflow transitions, by definition and the state reached: started (the first rule fired), "
    "completed, failed, cancelled.",
    ["definition", "state"],
    registry=REGISTRY,
)
WORKFLOWS_CACHED = Gauge(
    "cosmos_plato_workflows_cached",
    "Workflows this Plato process holds in its evaluator's cache, by state (running workflows stay "
    "cached; finished ones leave it).",
    ["state"],
    registry=REGISTRY,
)
STEPS = Counter(
    "cosmos_plato_steps",
    "Step attempts, by definition, step name and the state reached: scheduled, then completed, "
    "failed, timed_out, cancelled, or retried (failed or timed out, another attempt coming).",
    ["definition", "step", "state"],
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "cosmos_plato_step_duration_seconds",
    "Seconds from a step attempt's scheduling to its end (completed, failed, timed out, cancelled, retried).",
    ["definition", "step"],
    buckets=STEP_BUCKETS,
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "cosmos_plato_transitions",
    "Workflow transitions committed by this process's evaluator.",
    registry=REGISTRY,
)
CONSUMER_PENDING = Gauge(
    "cosmos_nats_consumer_pending",
    "Messages of a JetStream consumer not yet delivered (its lag), sampled at scrape.",
    ["stream", "consumer"],
    registry=REGISTRY,
)
CONSUMER_ACK_PENDING = Gauge(
    "cosmos_nats_consumer_ack_pending",
    "Messages of a JetStream consumer delivered and not yet acknowledged, sampled at scrape.",
    ["stream", "consumer"],
    registry=REGISTRY,
)
TASK_QUEUE_DEPTH = Gauge(
    "cosmos_plato_task_queue_depth",
    "Step tasks waiting in PLATO_TASKS (published, not yet acknowledged by a handler), by queue.",
    ["queue"],
    registry=REGISTRY,
)
TASK_QUEUE_OLDEST_AGE = Gauge(
    "cosmos_plato_task_queue_oldest_age_seconds",
    "Age of the oldest step task in PLATO_TASKS (0 when none waits).",
    registry=REGISTRY,
)
INBOX_DEPTH = Gauge(
    "cosmos_plato_inbox_depth",
    "Engine inputs waiting in PLATO_INBOX (results, starts, signals not yet applied).",
    registry=REGISTRY,
)


def _state_name(prefix: str, name: str) -> str:
    return name.removeprefix(prefix).lower()


def workflow_state(state: int) -> str:
    """``WORKFLOW_STATE_RUNNING`` as ``running``."""
    return _state_name("WORKFLOW_STATE_", WF.Name(WF.ValueType(state)))


def step_state(state: int) -> str:
    """``STEP_STATE_TIMED_OUT`` as ``timed_out``."""
    return _state_name("STEP_STATE_", SS.Name(SS.ValueType(state)))


def _set(stamp: timestamp_pb2.Timestamp) -> bool:
    return bool(stamp.seconds or stamp.nanos)


def observe_transition(
    record: engine_pb2.WorkflowRecord, steps: Sequence[workflow_pb2.StepExecution], now: datetime
) -> None:
    """Count what one committed transition (stamped ``now``) did: the workflow started or ended, steps
    scheduled or ended (with their latency). ``steps`` are the ones it touched; a step or workflow
    counts only when its stamp is this transition's, so touching without changing counts nothing."""
    TRANSITIONS.inc()
    stamp = values.timestamp(now)  # what the machine stamped this transition's changes with

    def _at(field: timestamp_pb2.Timestamp) -> bool:
        return _set(field) and field == stamp

    workflow = record.workflow
    definition = workflow.definition_id
    if _at(workflow.start_time):
        WORKFLOWS.labels(definition, "started").inc()
    if workflow.state in TERMINAL_WORKFLOW_STATES and _at(workflow.close_time):
        WORKFLOWS.labels(definition, workflow_state(workflow.state)).inc()
    for step in steps:
        # Both in one transition for a step Plato runs itself (a builtin action).
        if _at(step.schedule_time):
            STEPS.labels(definition, step.step_name, "scheduled").inc()
        if _at(step.close_time) and (ended := _ended(step.state)):
            STEPS.labels(definition, step.step_name, ended).inc()
            if _set(step.schedule_time):
                took = (step.close_time.ToNanoseconds() - step.schedule_time.ToNanoseconds()) / 1e9
                STEP_DURATION.labels(definition, step.step_name).observe(max(0.0, took))


def _ended(state: int) -> str:
    """The state an attempt that closed in this transition counts as ('' for none): its terminal
    state, or ``retried`` for one that failed or timed out with another attempt coming (the machine
    moves it to RETRY_WAIT in the same transition)."""
    if state in TERMINAL_STEP_STATES:
        return step_state(state)
    return "retried" if state == SS.STEP_STATE_RETRY_WAIT else ""


def cached_states(states: list[int]) -> None:
    """Set the cached-workflows gauge from the states of the evaluator's cache."""
    counts = dict.fromkeys(("pending", "running", "cancelling"), 0)
    for state in states:
        name = workflow_state(state)
        counts[name] = counts.get(name, 0) + 1
    WORKFLOWS_CACHED.clear()  # a state no cached workflow is in any more shows no stale count
    for name, count in counts.items():
        WORKFLOWS_CACHED.labels(name).set(count)


Request = Callable[[str, bytes], Awaitable[bytes]]
"""A NATS request: subject and payload to the reply's payload."""


def sampler(js: Any, request: Request) -> Callable[[], Awaitable[None]]:
    """A refresher reading the engine's inbox and the task queues from JetStream: consumer lag of
    every consumer of PLATO_INBOX and PLATO_TASKS, task depth per queue, the oldest task's age."""

    async def sample() -> None:
        for stream in (subjects.INBOX_STREAM, subjects.TASKS_STREAM):
            for consumer in await js.consumers_info(stream):
                name = consumer.name or consumer.config.durable_name or ""
                CONSUMER_PENDING.labels(stream, name).set(consumer.num_pending or 0)
                CONSUMER_ACK_PENDING.labels(stream, name).set(consumer.num_ack_pending or 0)
        inbox = json.loads(await request(f"$JS.API.STREAM.INFO.{subjects.INBOX_STREAM}", b""))
        INBOX_DEPTH.set(inbox.get("state", {}).get("messages", 0))
        # One request: every task subject's count (work-queue retention: waiting = stored) and the
        # oldest message's time.
        body = json.dumps({"subjects_filter": subjects.TASKS_ALL}).encode()
        tasks = json.loads(await request(f"$JS.API.STREAM.INFO.{subjects.TASKS_STREAM}", body))
        state = tasks.get("state", {})
        TASK_QUEUE_DEPTH.clear()
        prefix = subjects.tasks("")
        for subject, count in (state.get("subjects") or {}).items():
            TASK_QUEUE_DEPTH.labels(subject.removeprefix(prefix)).set(count)
        TASK_QUEUE_OLDEST_AGE.set(_age(state) if state.get("messages") else 0.0)

    return sample


def _age(state: dict[str, Any]) -> float:
    first = state.get("first_ts", "")
    if not first or first.startswith("0001-"):
        return 0.0
    # RFC 3339 with nanoseconds: keep microseconds for datetime.
    head, _, frac = first.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00" if frac else f"{head}+00:00")
    return max(0.0, time.time() - stamp.timestamp())
