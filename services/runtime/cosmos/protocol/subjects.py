"""Names on NATS: subjects, streams, buckets and headers Plato uses. One place, so nothing drifts.

Workflow ids and queue names are single subject tokens (no dots, spaces or wildcards); the API
validates them before they reach here.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

EVENTS_STREAM = "PLATO_EVENTS"
INBOX_STREAM = "PLATO_INBOX"
TASKS_STREAM = "PLATO_TASKS"
CONTROL_STREAM = "PLATO_CONTROL"
DEFINITIONS_BUCKET = "plato-definitions"
WORKFLOWS_BUCKET = "plato-workflows"
STEPS_BUCKET = "plato-steps"
BLOBS_BUCKET = "plato-blobs"
"""Object store of large workflow values; only Plato may read or write it."""
ENGINE_CONSUMER = "plato-engine"
STRATUM_QUEUE = "cosmos-stratum-runner"
"""Task queue of Stratum job steps, served by the built-in Stratum runner."""


class Header(enum.StrEnum):
    """NATS message headers with a meaning to JetStream or to Plato."""

    MSG_ID = "Nats-Msg-Id"
    SCHEDULE = "Nats-Schedule"
    SCHEDULE_TARGET = "Nats-Schedule-Target"


_SCHEDULE_AT = "@at %Y-%m-%dT%H:%M:%S.%fZ"


def schedule_at(due: datetime) -> str:
    """The :attr:`Header.SCHEDULE` value that has JetStream deliver a message once, at ``due`` (a UTC
    time, as every clock of Plato reads)."""
    return due.strftime(_SCHEDULE_AT)


def scheduled_at(header: str) -> datetime:
    """The moment a :func:`schedule_at` header names."""
    return datetime.strptime(header, _SCHEDULE_AT).replace(tzinfo=UTC)


def events(workflow_id: str) -> str:
    """History and watch subject of one workflow (``WorkflowEvent``)."""
    return f"cosmos.workflow.events.{workflow_id}"


EVENTS_ALL = "cosmos.workflow.events.>"


def inbox(workflow_id: str) -> str:
    """Engine inputs for one workflow (``EngineInput``)."""
    return f"cosmos.plato.inbox.{workflow_id}"


INBOX_ALL = "cosmos.plato.inbox.>"

REPORT_TOKEN = "report"
REPORTS_ALL = f"cosmos.plato.inbox.*.{REPORT_TOKEN}"
"""The only inbox subjects step workers may publish to (NATS permissions); Plato's own are the rest."""


ATTEMPTS = "cosmos.plato.attempts"
"""Request/reply: a worker asks whether a redelivered task's attempt is still current
(``AttemptQuery`` -> ``AttemptStatus``); answered by one Plato process of the queue group."""
ATTEMPTS_QUEUE = "plato"
"""Queue group of the Plato processes answering :data:`ATTEMPTS`."""


def report(workflow_id: str) -> str:
    """Results and heartbeats posted by step workers for one workflow (in the inbox stream)."""
    return f"{inbox(workflow_id)}.{REPORT_TOKEN}"


def is_report(subject: str) -> bool:
    """Whether ``subject`` is a worker's report subject (``cosmos.plato.inbox.<wf>.report``)."""
    parts = subject.split(".")
    return len(parts) == 5 and subject.startswith("cosmos.plato.inbox.") and parts[4] == REPORT_TOKEN


def timer(workflow_id: str, timer_id: str) -> str:
    """Subject holding a scheduled timer until it fires into the workflow's inbox."""
    return f"cosmos.plato.timers.{workflow_id}.{timer_id}"


TIMERS_ALL = "cosmos.plato.timers.>"


def tasks(queue: str) -> str:
    """Step tasks for the handlers of one queue (``StepTask``)."""
    return f"cosmos.step.tasks.{queue}"


TASKS_ALL = "cosmos.step.tasks.>"


def cancels(queue: str) -> str:
    """Cancellation notices for running tasks of one queue (``StepTask`` of the cancelled attempt)."""
    return f"cosmos.step.cancel.{queue}"


CANCELS_ALL = "cosmos.step.cancel.>"


def notify(channel: str) -> str:
    """Messages of the builtin ``notify`` step."""
    return f"cosmos.notify.{channel}"


NOTIFY_ALL = "cosmos.notify.>"


def queue_consumer(queue: str) -> str:
    """Durable consumer shared by every handler process of one queue."""
    return f"queue-{queue}"
