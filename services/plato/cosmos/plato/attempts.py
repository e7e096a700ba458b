"""Plato answers workers asking whether a step attempt is still current.

JetStream delivers a task again when its worker did not acknowledge it in time (it crashed after
posting the result, or was cut off); by then the workflow may have moved on or finished. Before it
runs a redelivered task, the SDK asks here (``AttemptQuery`` on :data:`subjects.ATTEMPTS`, request and
reply): the attempt is current if it is the step's attempt and the step is still scheduled or running
in a workflow that has not ended. Only a query carrying the attempt's task token is answered about
the attempt (anyone else learns nothing). When the record cannot be read, no answer is sent: the
worker cannot tell, and tries the task again later.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from cosmos.plato import records
from cosmos.plato.engine.machine import TERMINAL_WORKFLOW_STATES
from cosmos.plato.store import PlatoStore
from cosmos.plato.task_tokens import TaskKey
from cosmos.plato.v1 import engine_pb2, events_pb2, workflow_pb2
from cosmos.protocol import subjects

log = logging.getLogger(__name__)
SS = workflow_pb2.StepState
LIVE = (SS.STEP_STATE_SCHEDULED, SS.STEP_STATE_RUNNING)
MAX_QUERY_BYTES = 4096
"""Largest query answered (ids and a token are far smaller)."""


def status_in(
    record: engine_pb2.WorkflowRecord, step_record: engine_pb2.StepRecord | None, attempt: int
) -> events_pb2.AttemptStatus:
    """Whether ``attempt`` of the step in ``step_record`` is current in ``record``, and if not, why."""
    wf = record.workflow
    if wf.state in TERMINAL_WORKFLOW_STATES:
        state = workflow_pb2.WorkflowState.Name(wf.state).removeprefix("WORKFLOW_STATE_")
        return events_pb2.AttemptStatus(reason=f"the workflow is {state}")
    step = step_record.step if step_record is not None else None
    if step is None:
        return events_pb2.AttemptStatus(reason="the workflow has no such step")
    if step.attempt != attempt:
        return events_pb2.AttemptStatus(reason=f"the step is at attempt {step.attempt}")
    if step.state not in LIVE:
        state = SS.Name(step.state).removeprefix("STEP_STATE_")
        return events_pb2.AttemptStatus(reason=f"the attempt is {state}")
    return events_pb2.AttemptStatus(current=True)


class AttemptAnswers:
    """The responder, one per Plato process (a queue group shares the queries)."""

    def __init__(self, nc: NatsClient, store: PlatoStore, task_key: TaskKey) -> None:
        self.nc = nc
        self.store = store
        self.task_key = task_key
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Start answering."""
        self._sub = await self.nc.subscribe(subjects.ATTEMPTS, queue=subjects.ATTEMPTS_QUEUE, cb=self._answer)

    async def stop(self) -> None:
        """Stop answering (other Plato processes still do)."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply:
            return
        status = await self.status(msg.data)
        if status is not None:
            await msg.respond(status.SerializeToString())

    async def status(self, data: bytes) -> events_pb2.AttemptStatus | None:
        """The answer to one serialized query; None when it cannot be told now (no reply is sent)."""
        if len(data) > MAX_QUERY_BYTES:
            return events_pb2.AttemptStatus(reason="query too large")
        try:
            query = events_pb2.AttemptQuery.FromString(data)
        except Exception:  # a malformed query gets a plain no, not a traceback
            return events_pb2.AttemptStatus(reason="undecodable query")
        if not self.task_key.verify(query.workflow_id, query.step_id, query.attempt, query.task_token):
            return events_pb2.AttemptStatus(reason="missing or wrong task token")
        try:
            loaded = await records.load_step(self.store, query.workflow_id, query.step_id)
        except Exception as exc:
            log.warning("cannot read a workflow for an attempt query", extra={"fields": {"error": repr(exc)}})
            return None
        if loaded is None:
            return events_pb2.AttemptStatus(reason="the workflow does not exist")
        return status_in(loaded[0], loaded[1], query.attempt)
