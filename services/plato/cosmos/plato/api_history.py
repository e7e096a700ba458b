"""WorkflowService's history: ListWorkflowEvents (pages of the events stream) and WatchWorkflow (the
events as they come) (part of :class:`cosmos.plato.api.WorkflowApi`)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cosmos import errors
from cosmos.plato.api_common import Context, WorkflowRpcs
from cosmos.plato.engine import machine
from cosmos.plato.v1 import events_pb2, workflow_service_pb2
from cosmos.protocol import subjects
from cosmos.runtime import paging

_TERMINAL_EVENTS = (
    events_pb2.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED,
    events_pb2.WORKFLOW_EVENT_TYPE_WORKFLOW_FAILED,
    events_pb2.WORKFLOW_EVENT_TYPE_WORKFLOW_CANCELLED,
)


class HistoryRpcs(WorkflowRpcs):
    """A workflow's history events, read from ``PLATO_EVENTS`` (one subject per workflow)."""

    async def ListWorkflowEvents(
        self, request: workflow_service_pb2.ListWorkflowEventsRequest, context: Context
    ) -> workflow_service_pb2.ListWorkflowEventsResponse:
        await self._record(request.workflow_id)
        page = paging.parse(request.page_size, "", "")
        start = _decode_cursor(request.page_token)
        events, last_stream_seq = await self._read_events(request.workflow_id, start, page.size)
        next_token = _encode_cursor(last_stream_seq + 1) if len(events) == page.size else ""
        return workflow_service_pb2.ListWorkflowEventsResponse(events=events, next_page_token=next_token)

    async def _read_events(
        self, workflow_id: str, start_stream_seq: int, limit: int
    ) -> tuple[list[events_pb2.WorkflowEvent], int]:
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_stream_seq else DeliverPolicy.ALL,
            opt_start_seq=start_stream_seq or None,
            inactive_threshold=10.0,
            filter_subject=subjects.events(workflow_id),
        )
        sub = await self.store.js.pull_subscribe(
            subjects.events(workflow_id), stream=subjects.EVENTS_STREAM, config=config
        )
        events: list[events_pb2.WorkflowEvent] = []
        last = start_stream_seq
        try:
            while len(events) < limit:
                try:
                    msgs = await sub.fetch(limit - len(events), timeout=0.3)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                for msg in msgs:
                    events.append(events_pb2.WorkflowEvent.FromString(msg.data))
                    last = msg.metadata.sequence.stream
        finally:
            await sub.unsubscribe()
        return events, last

    async def WatchWorkflow(
        self, request: workflow_service_pb2.WatchWorkflowRequest, context: Context
    ) -> AsyncIterator[workflow_service_pb2.WatchWorkflowResponse]:
        record = await self._record(request.workflow_id)
        sub = await self.store.js.subscribe(
            subjects.events(request.workflow_id),
            stream=subjects.EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        try:
            if record.workflow.state in machine.TERMINAL_WORKFLOW_STATES and record.workflow.last_sequence < (
                request.from_sequence or 1
            ):
                return
            while not self.stopping.is_set():
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                event = events_pb2.WorkflowEvent.FromString(msg.data)
                if event.sequence < request.from_sequence:
                    continue
                yield workflow_service_pb2.WatchWorkflowResponse(event=event)
                # A terminal event that a retry or reset already followed (the history goes on past
                # it) does not end the stream.
                if event.type in _TERMINAL_EVENTS and event.sequence >= record.workflow.last_sequence:
                    return
        finally:
            await sub.unsubscribe()


def _encode_cursor(stream_seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{stream_seq}".encode()).decode()


def _decode_cursor(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("s"):
            raise ValueError(text)
        return int(text[1:])
    except ValueError as exc:
        raise errors.InvalidArgumentError(
            "page_token is not a token this service issued",
            reason=errors.Reason.ERROR_REASON_INVALID_PAGE_TOKEN,
            violations=[errors.FieldViolation("page_token", "malformed; pass next_page_token unchanged")],
        ) from exc
