"""The agent side of Stratum: one bidirectional stream per connected agent, plus joining with a join
token and renewing the agent's certificate (:mod:`cosmos.stratum.enrollment`).

The first message must be ``hello`` (inventory and the attempts the agent is still running); Stratum
answers ``welcome`` with the lease, then both directions flow at once: heartbeats, job lifecycle and
logs from the agent; assignments, cancels, stale-attempt kills and result acks from Stratum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from cosmos import errors
from cosmos.runtime import wellknown
from cosmos.security import auth
from cosmos.stratum.dispatcher import Dispatcher
from cosmos.stratum.enrollment import Enrollment
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc

log = logging.getLogger(__name__)


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    """``cosmos.stratum.v1.AgentService``."""

    def __init__(
        self,
        registry: AgentRegistry,
        dispatcher: Dispatcher,
        stopping: asyncio.Event,
        heartbeat_interval: float,
        enrollment: Enrollment,
    ) -> None:
        self.registry = registry
        self.dispatcher = dispatcher
        self.stopping = stopping
        self.heartbeat_interval = heartbeat_interval
        self.enrollment = enrollment

    async def JoinAgent(
        self, request: agent_service_pb2.JoinAgentRequest, context: Any
    ) -> agent_service_pb2.JoinAgentResponse:
        return await self.enrollment.join(request, str(context.peer() or ""))

    async def RenewAgentCertificate(
        self, request: agent_service_pb2.RenewAgentCertificateRequest, context: Any
    ) -> agent_service_pb2.RenewAgentCertificateResponse:
        return await self.enrollment.renew(request, auth.current())

    async def Connect(
        self, request_iterator: AsyncIterator[agent_service_pb2.ConnectRequest], context: Any
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
        caller = auth.current()
        if caller.kind != "agent" and caller.via != "insecure":
            raise errors.PermissionDeniedError(
                f"{caller.identity} is not an agent", metadata={"identity": caller.identity}
            )
        if caller.kind == "agent" and caller.name != hello.agent_id:
            # The certificate is the identity: an agent cannot register as another.
            raise errors.PermissionDeniedError(
                f"hello.agent_id {hello.agent_id!r} is not the certificate's agent id {caller.name!r}",
                metadata={"agent_id": hello.agent_id, "identity": caller.identity},
            )
        self.registry.admit(hello.agent_id)
        record = self.registry.connect(
            agent_pb2.Agent(
                agent_id=hello.agent_id,
                hostname=hello.hostname,
                inventory=hello.inventory,
                labels=hello.labels,
                version=hello.version,
            )
        )
        agent_id = hello.agent_id
        outbox = self.dispatcher.agent_connected(record.agent, hello.running)
        yield agent_service_pb2.ConnectResponse(
            welcome=agent_service_pb2.AgentWelcome(
                agent_id=agent_id,
                lease_duration=wellknown.duration(self.registry.lease_seconds),
                heartbeat_interval=wellknown.duration(self.heartbeat_interval),
            )
        )
        reader = asyncio.ensure_future(self._read(agent_id, request_iterator))
        stopping = asyncio.ensure_future(self.stopping.wait())
        assert record.closing is not None
        closing = asyncio.ensure_future(record.closing.wait())
        nxt: asyncio.Future[agent_service_pb2.ConnectResponse] | None = None
        try:
            while True:
                nxt = asyncio.ensure_future(outbox.get())
                done, _ = await asyncio.wait(
                    [nxt, reader, stopping, closing], return_when=asyncio.FIRST_COMPLETED
                )
                if nxt not in done:
                    nxt.cancel()
                    break
                yield nxt.result()
        finally:
            # The stream cancelled mid-wait leaves the outbox read pending too ("Task was destroyed but
            # it is pending!" in the log).
            for task in (reader, stopping, closing, nxt):
                if task is not None:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            # Unless Stratum itself is stopping, the agent hung up or its stream reset (process gone).
            self.dispatcher.agent_disconnected(agent_id, outbox, broken=not self.stopping.is_set())
            if self.registry.agents[agent_id].closing is record.closing:
                self.registry.disconnect(agent_id)

    async def _read(self, agent_id: str, requests: AsyncIterator[agent_service_pb2.ConnectRequest]) -> None:
        seen: set[str] = set()
        async for message in requests:
            # Messages re-sent after a reconnect carry the same request_id: apply each once per stream.
            if message.request_id and message.request_id in seen:
                continue
            if message.request_id:
                seen.add(message.request_id)
                if len(seen) > 10_000:
                    seen.clear()
            if message.WhichOneof("message") == "heartbeat":
                self.registry.heartbeat(agent_id)
            else:
                await self.dispatcher.agent_message(agent_id, message)
