"""Helpers for Plato tests: the card's workflow, a client with waits and history, event names."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import grpc

from cosmos.plato.v1 import (
    events_pb2,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

CARD_WORKFLOW = """\
workflow:
  id: encode-workflow-v3
  rules:
    - when: workflow.started
      do: [probe-source]
    - when: probe-source.completed
      do:
        - fanout: {for: each profile in input.profiles, run: encode-segment}
    - when: all encode-segment.completed
      do: [mux-final, publish-manifest]
    - when: any.failed
      retry: {max: 3, backoff: exponential}
      onExhausted: [notify-oncall]
"""

TERMINAL = (
    workflow_pb2.WORKFLOW_STATE_COMPLETED,
    workflow_pb2.WORKFLOW_STATE_FAILED,
    workflow_pb2.WORKFLOW_STATE_CANCELLED,
)


@dataclass
class PlatoClient:
    """A channel to a Plato server and the helpers tests use."""

    target: str
    nats_url: str
    channel: grpc.aio.Channel
    stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub

    async def register(self, source: str) -> int:
        reply = await self.stub.RegisterDefinition(
            workflow_service_pb2.RegisterDefinitionRequest(request_id=uuid.uuid4().hex, source_yaml=source)
        )
        return reply.definition.version

    async def start(self, definition_id: str, input: dict[str, Any] | None = None, **kw: Any) -> str:
        request = workflow_service_pb2.StartWorkflowRequest(
            request_id=kw.pop("request_id", uuid.uuid4().hex), definition_id=definition_id, **kw
        )
        request.input.update(input or {})
        reply = await self.stub.StartWorkflow(request)
        return reply.workflow.workflow_id

    async def get(self, workflow_id: str) -> workflow_pb2.Workflow:
        reply = await self.stub.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id))
        return reply.workflow

    async def wait(self, workflow_id: str, timeout: float = 60) -> workflow_pb2.Workflow:
        async def poll() -> workflow_pb2.Workflow:
            while True:
                wf = await self.get(workflow_id)
                if wf.state in TERMINAL:
                    return wf
                await asyncio.sleep(0.05)

        return await asyncio.wait_for(poll(), timeout)

    async def history(self, workflow_id: str) -> list[events_pb2.WorkflowEvent]:
        events: list[events_pb2.WorkflowEvent] = []
        token = ""
        while True:
            reply = await self.stub.ListWorkflowEvents(
                workflow_service_pb2.ListWorkflowEventsRequest(
                    workflow_id=workflow_id, page_size=100, page_token=token
                )
            )
            events.extend(reply.events)
            token = reply.next_page_token
            if not token:
                return events


def event_names(events: list[events_pb2.WorkflowEvent]) -> list[str]:
    """``TYPE step_id`` per event, for readable assertions."""
    names = []
    for event in events:
        kind = events_pb2.WorkflowEventType.Name(event.type).removeprefix("WORKFLOW_EVENT_TYPE_")
        names.append(f"{kind} {event.step_id}".strip())
    return names
