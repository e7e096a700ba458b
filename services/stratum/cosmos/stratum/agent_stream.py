"""The agent side of Stratum: one bidirectional stream per connected agent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf import duration_pb2

from cosmos import errors
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc

log = logging.getLogger(__name__)


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    """Accepts agent connections: hello → welcome, then heartbeats renew the lease."""

    def __init__(
        self, registry: AgentRegistry, stopping: asyncio.Event, heartbeat_interval: float = 2.0
    ) -> None:
        self.registry = registry
        self.stopping = stopping
        self.heartbeat_interval = heartbeat_interval

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_service_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[
            agent_service_pb2.ConnectRequest, agent_service_pb2.ConnectResponse
        ],
    ) -> AsyncIterator[agent_service_pb2.ConnectResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "hello":
            raise errors.InvalidArgumentError(
                "the first message on the agent stream must be hello",
                violations=[errors.FieldViolation("message", "expected hello before anything else")],
            )
        hello = first.hello
        if not hello.agent_id:
            raise errors.InvalidArgumentError(
                "hello.agent_id is empty",
                violations=[errors.FieldViolation("hello.agent_id", "must name the agent")],
            )
        self.registry.connect(
            agent_pb2.Agent(
                agent_id=hello.agent_id,
                hostname=hello.hostname,
                inventory=hello.inventory,
                labels=hello.labels,
                version=hello.version,
            )
        )
        agent_id = hello.agent_id
        yield agent_service_pb2.ConnectResponse(
            welcome=agent_service_pb2.AgentWelcome(
                agent_id=agent_id,
                lease_duration=_duration(self.registry.lease_seconds),
                heartbeat_interval=_duration(self.heartbeat_interval),
            )
        )
        try:
            reader = asyncio.ensure_future(self._read(agent_id, request_iterator))
            stopping = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait([reader, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, stopping):
                task.cancel()
        finally:
            self.registry.disconnect(agent_id)

    async def _read(self, agent_id: str, requests: AsyncIterator[agent_service_pb2.ConnectRequest]) -> None:
        async for message in requests:
            kind = message.WhichOneof("message")
            if kind == "heartbeat":
                self.registry.heartbeat(agent_id)
            else:
                log.debug("agent message", extra={"fields": {"agent_id": agent_id, "kind": kind}})


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value
