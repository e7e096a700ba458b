"""Watching a workflow's events across Plato restarts.

``WatchWorkflow`` streams a workflow's history from ``from_sequence`` on; when Plato restarts the
stream breaks (``UNAVAILABLE``) or ends early. :func:`watch_workflow` reopens it with backoff after
the last event it yielded, so the caller sees every event once, in order, up to the workflow's end
(a workflow resumed by RetryWorkflow or ResetWorkflow goes on past its first final event):

>>> async with channel:
...     stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
...     async for event in watch_workflow(stub, "wf-123"):
...         print(event.sequence, event.type)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import grpc

from cosmos.plato.v1 import events_pb2, workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime import reconnect

log = logging.getLogger(__name__)
ET = events_pb2.WorkflowEventType
FINAL_EVENTS = (
    ET.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED,
    ET.WORKFLOW_EVENT_TYPE_WORKFLOW_FAILED,
    ET.WORKFLOW_EVENT_TYPE_WORKFLOW_CANCELLED,
)
ENDED = (
    workflow_pb2.WORKFLOW_STATE_COMPLETED,
    workflow_pb2.WORKFLOW_STATE_FAILED,
    workflow_pb2.WORKFLOW_STATE_CANCELLED,
)


async def watch_workflow(
    stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub,
    workflow_id: str,
    *,
    from_sequence: int = 1,
    metadata: Sequence[tuple[str, str]] = (),
    backoff: reconnect.Backoff = reconnect.DEFAULT,
) -> AsyncIterator[events_pb2.WorkflowEvent]:
    """Every event of ``workflow_id`` from ``from_sequence`` until its final one, across restarts.
    Errors other than "Plato is away" (``NOT_FOUND``, ``PERMISSION_DENIED``...) are raised."""
    seen = max(from_sequence, 1) - 1
    delays = backoff.delays()
    while True:
        request = workflow_service_pb2.WatchWorkflowRequest(workflow_id=workflow_id, from_sequence=seen + 1)
        try:
            async for reply in stub.WatchWorkflow(request, metadata=tuple(metadata)):
                delays = backoff.delays()
                event = reply.event
                if event.sequence <= seen:
                    continue
                seen = event.sequence
                yield event
            # The stream ended: after the workflow's final event (a final event that a retry or reset
            # followed does not end it, nor this watch), or because Plato is stopping. Ask which.
            got = await stub.GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id), metadata=tuple(metadata)
            )
            if got.workflow.state in ENDED and got.workflow.last_sequence <= seen:
                return
        except grpc.aio.AioRpcError as exc:
            if not reconnect.transient(exc):
                raise
            log.info("workflow watch interrupted; reopening", extra={"fields": {"after": seen}})
        await anext(delays)
