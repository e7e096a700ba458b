"""Which task queues a worker polls, from the queues' JetStream consumers (one durable pull consumer
per queue on ``PLATO_TASKS``, shared by every worker serving it: :mod:`cosmos.sdk.worker`).

A queue is polled when its consumer has a pull request pending (``num_waiting``: an idle worker
always has one open) or a task in hand (``num_ack_pending``). A step SCHEDULED on a queue nobody
polls gets ``StepExecution.no_worker_since_time``, so ``cosmos workflows show`` can say "no
worker for step X for 30 s" instead of leaving the step silently waiting (Temporal shows task
queues without pollers the same way).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from cosmos.plato.v1 import workflow_pb2
from cosmos.protocol import subjects

SS = workflow_pb2.StepState
CACHE_S = 1.0
"""A queue's consumer is asked at most once a second, however many readers ask."""
CONFIRMATIONS = 2
CONFIRM_GAP_S = 0.1
"""An existing consumer seen without a pull pending is looked at twice more, this far apart."""
GRACE_S = 3.0
"""A queue seen polled this recently still counts as polled: a worker between two pull requests,
or restarting, is not reported missing."""


class Pollers:
    """Whether each task queue has a worker polling it, and since when it has had none."""

    def __init__(self, js: Callable[[], JetStreamContext], now: Callable[[], float] = time.time) -> None:
        self.js = js
        """The JetStream context (asked each time: the store connects after the API is built)."""
        self.now = now
        self._checked: dict[str, tuple[float, bool]] = {}
        self._absent: set[str] = set()
        """Queues without a consumer at the last look (a definite "no worker")."""
        self._last_polled: dict[str, float] = {}
        """Wall time a worker was last seen polling each queue."""

    async def _polled_now(self, queue: str) -> bool | None:
        """Whether the queue's consumer has a pull pending or a task in hand; None when unknown."""
        try:
            info = await self.js().consumer_info(
                subjects.TASKS_STREAM, subjects.queue_consumer(queue), timeout=1
            )
        except nats.js.errors.NotFoundError:
            self._absent.add(queue)
            return False  # no worker ever subscribed to it (or its consumer was removed)
        except (nats.errors.Error, TimeoutError):
            return None
        self._absent.discard(queue)
        return bool((info.num_waiting or 0) > 0 or (info.num_ack_pending or 0) > 0)

    async def _polled(self, queue: str) -> bool | None:
        """:meth:`_polled_now`, a "no" from an existing consumer confirmed by two more looks: a
        worker between two pull requests has none pending for an instant."""
        for _ in range(1 + CONFIRMATIONS):
            polled = await self._polled_now(queue)
            if polled is None or polled or queue in self._absent:
                return polled
            await asyncio.sleep(CONFIRM_GAP_S)
        return False

    async def unpolled_since(self, queue: str, scheduled: float) -> float | None:
        """Since when (wall seconds) no worker has polled ``queue``, for a step scheduled at
        ``scheduled``; None when a worker polls it or no one can tell."""
        now = self.now()
        cached = self._checked.get(queue)
        if cached is None or now - cached[0] >= CACHE_S:
            polled = await self._polled(queue)
            if polled is None:
                return None
            self._checked[queue] = (now, polled)
            if polled:
                self._last_polled[queue] = now
        last = self._last_polled.get(queue)
        if last is not None and now - last < GRACE_S:
            return None
        return max(scheduled, last or 0.0)

    async def annotate(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        """Set ``no_worker_since_time`` on the SCHEDULED steps of ``workflow`` that wait on a
        queue nobody polls (in place; returned for convenience)."""
        for step in workflow.steps:
            if step.state != SS.STEP_STATE_SCHEDULED or not step.task_queue:
                continue
            scheduled = step.schedule_time.ToDatetime(UTC).timestamp() if step.schedule_time.seconds else 0.0
            since = await self.unpolled_since(step.task_queue, scheduled)
            if since is not None:
                step.no_worker_since_time.FromDatetime(datetime.fromtimestamp(since, UTC))
        return workflow
