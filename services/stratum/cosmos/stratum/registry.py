"""The agents Stratum knows: their inventory, connection, lease and administrative state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from cosmos import errors
from cosmos.runtime import wellknown
from cosmos.stratum.v1 import agent_pb2

log = logging.getLogger(__name__)

State = agent_pb2.AgentState


@dataclass
class AgentRecord:
    """One agent as Stratum sees it."""

    agent: agent_pb2.Agent
    """The agent's public view (inventory, state, times)."""
    lease_deadline: float = 0.0
    """Monotonic time after which a silent agent is LOST."""
    connected: bool = False
    """Whether its stream is open right now."""
    closing: asyncio.Event | None = None
    """Set to end the agent's open stream (revocation)."""


@dataclass
class AgentRegistry:
    """Agents by id; lease bookkeeping. Single event loop, so no locking is needed."""

    lease_seconds: float = 10.0
    """How long an agent stays READY without a heartbeat."""
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    """Every agent ever seen since this process started, by id."""
    revoked: set[str] = field(default_factory=set)
    """Agent ids an operator revoked (loaded from the store at start-up)."""

    def admit(self, agent_id: str) -> None:
        """Refuse a revoked agent, or a second stream for an agent whose stream is open."""
        if agent_id in self.revoked:
            raise errors.PermissionDeniedError(
                f"agent {agent_id!r} is revoked",
                reason=errors.Reason.ERROR_REASON_AGENT_REVOKED,
                metadata={"agent_id": agent_id},
            )
        record = self.agents.get(agent_id)
        if record is not None and record.connected:
            raise errors.AlreadyExistsError(
                f"agent {agent_id!r} already has an open stream; one stream per agent identity",
                reason=errors.Reason.ERROR_REASON_AGENT_ID_CONFLICT,
                metadata={"agent_id": agent_id},
            )

    def revoke(self, agent_id: str) -> agent_pb2.Agent:
        """Mark ``agent_id`` revoked and end its stream; its jobs are the dispatcher's to requeue."""
        self.revoked.add(agent_id)
        record = self.agents.get(agent_id)
        if record is None:
            record = AgentRecord(agent=agent_pb2.Agent(agent_id=agent_id))
            self.agents[agent_id] = record
        record.agent.state = State.AGENT_STATE_REVOKED
        if record.closing is not None:
            record.closing.set()
        return record.agent

    def connect(self, hello: agent_pb2.Agent) -> AgentRecord:
        """Register (or re-register) an agent whose stream just opened."""
        record = self.agents.get(hello.agent_id)
        now = wellknown.now()
        if record is None:
            record = AgentRecord(agent=agent_pb2.Agent(agent_id=hello.agent_id))
            self.agents[hello.agent_id] = record
        agent = record.agent
        agent.hostname = hello.hostname
        agent.version = hello.version
        agent.inventory.CopyFrom(hello.inventory)
        agent.labels.clear()
        agent.labels.update(hello.labels)
        agent.connect_time.CopyFrom(now)
        agent.last_heartbeat_time.CopyFrom(now)
        # Administrative states survive reconnects; connection states do not.
        if agent.state not in (State.AGENT_STATE_CORDONED, State.AGENT_STATE_DRAINING):
            agent.state = State.AGENT_STATE_READY
        record.connected = True
        record.closing = asyncio.Event()
        record.lease_deadline = time.monotonic() + self.lease_seconds
        log.info(
            "agent connected",
            extra={"fields": {"agent_id": agent.agent_id, "gpus": len(agent.inventory.gpus)}},
        )
        return record

    def expect(self, agent_id: str) -> None:
        """Remember an agent that held jobs before a restart: it has one lease to reconnect."""
        if agent_id and agent_id not in self.agents:
            record = AgentRecord(
                agent=agent_pb2.Agent(agent_id=agent_id, state=State.AGENT_STATE_DISCONNECTED)
            )
            record.lease_deadline = time.monotonic() + self.lease_seconds
            self.agents[agent_id] = record

    def heartbeat(self, agent_id: str) -> None:
        """Extend the agent's lease."""
        record = self.get(agent_id)
        record.agent.last_heartbeat_time.CopyFrom(wellknown.now())
        record.lease_deadline = time.monotonic() + self.lease_seconds
        if record.agent.state == State.AGENT_STATE_LOST:
            record.agent.state = State.AGENT_STATE_READY

    def disconnect(self, agent_id: str) -> None:
        """The agent's stream closed; it keeps its lease until the deadline."""
        record = self.agents.get(agent_id)
        if record is not None:
            record.connected = False
            record.closing = None
            if record.agent.state == State.AGENT_STATE_READY:
                record.agent.state = State.AGENT_STATE_DISCONNECTED
            log.info("agent disconnected", extra={"fields": {"agent_id": agent_id}})

    def expire(self) -> list[str]:
        """Mark agents whose lease ran out LOST; return their ids."""
        now = time.monotonic()
        lost = []
        for record in self.agents.values():
            if record.agent.state in (State.AGENT_STATE_LOST, State.AGENT_STATE_REVOKED):
                continue
            if record.lease_deadline < now:
                record.agent.state = State.AGENT_STATE_LOST
                record.connected = False
                lost.append(record.agent.agent_id)
                log.warning("agent lost", extra={"fields": {"agent_id": record.agent.agent_id}})
        return lost

    def get(self, agent_id: str) -> AgentRecord:
        """The agent with ``agent_id``, or :class:`NotFoundError`."""
        record = self.agents.get(agent_id)
        if record is None:
            raise errors.NotFoundError(
                f"agent {agent_id!r} is not known to this Stratum",
                reason=errors.Reason.ERROR_REASON_AGENT_NOT_FOUND,
                metadata={"agent_id": agent_id},
            )
        return record

    def set_state(self, agent_id: str, state: agent_pb2.AgentState.ValueType) -> agent_pb2.Agent:
        """Cordon, drain or return an agent to READY."""
        record = self.get(agent_id)
        if record.agent.state == State.AGENT_STATE_LOST and state == State.AGENT_STATE_READY:
            raise errors.FailedPreconditionError(
                f"agent {agent_id!r} is lost; it becomes READY when it reconnects",
                metadata={"agent_id": agent_id},
            )
        record.agent.state = state
        return record.agent

    def sorted(self) -> Iterator[agent_pb2.Agent]:
        """Every agent, ordered by id (stable paging)."""
        for agent_id in sorted(self.agents):
            yield self.agents[agent_id].agent
