"""The agent's metrics (docs/metrics.md), on the process registry of :mod:`cosmos.runtime.metrics`."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge

from cosmos.runtime.metrics import REGISTRY
from cosmos.stratum.v1 import job_pb2

CONNECTED = Gauge(
    "cosmos_agent_connected", "1 while the agent's stream to Stratum is open, else 0.", registry=REGISTRY
)
ATTEMPTS_RUNNING = Gauge(
    "cosmos_agent_attempts_running", "Job attempts this agent runs now.", registry=REGISTRY
)
ATTEMPTS_FINISHED = Counter(
    "cosmos_agent_attempts_finished",
    "Job attempts this agent ran to an end, by final state: succeeded, failed, cancelled, timed_out.",
    ["state"],
    registry=REGISTRY,
)


def finished(state: int) -> None:
    """An attempt ended in ``state`` (a ``JobState``)."""
    name = job_pb2.JobState.Name(job_pb2.JobState.ValueType(state))
    ATTEMPTS_FINISHED.labels(name.removeprefix("JOB_STATE_").lower()).inc()


def refresher(connected: Callable[[], bool], running: Callable[[], int]) -> Callable[[], None]:
    """Sets the connection and running gauges right before a scrape."""

    def refresh() -> None:
        CONNECTED.set(1 if connected() else 0)
        ATTEMPTS_RUNNING.set(running())

    return refresh
