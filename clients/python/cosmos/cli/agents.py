"""``cosmos agents list|show|cordon|uncordon|drain|revoke``: the agents of Stratum's pool.

The command line (flags, checks, errors) is :mod:`cosmos.cli.platform`; ``cosmos agents join-token``
is :mod:`cosmos.cli.join_tokens`.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from cosmos.cli import output
from cosmos.cli.lookup import after, parse_since, state_name, unique, when
from cosmos.security.context import Context
from cosmos.stratum.v1 import agent_pb2, pool_service_pb2, pool_service_pb2_grpc

AS = agent_pb2.AgentState


def agents_table(agents: Sequence[agent_pb2.Agent]) -> Table:
    t = output.table(
        "agents",
        ("agent", "state", "cpus", "memory", "gpus", "jobs", "runtimes", "last heartbeat"),
        ids=["agent"],
    )
    output.fit_ids(
        t,
        [
            [
                agent.agent_id,
                state_name(AS, agent.state, "AGENT_STATE_"),
                f"{agent.inventory.cpu_millis / 1000:g}",
                f"{agent.inventory.memory_bytes / (1 << 30):.1f} GiB",
                ", ".join(g.model for g in agent.inventory.gpus) or "-",
                str(len(agent.running_job_ids)),
                ", ".join(agent.inventory.runtimes),
                when(agent.last_heartbeat_time),
            ]
            for agent in agents
        ],
    )
    return t


async def _act(stub: pool_service_pb2_grpc.PoolServiceAsyncStub, verb: str, agent_id: str) -> tuple[Any, str]:
    """``cordon``, ``uncordon``, ``drain`` or ``revoke`` one agent: the reply, and what it means."""
    request_id = uuid.uuid4().hex
    reason = f"{verb} from the CLI"
    if verb == "cordon":
        reply: Any = await stub.CordonAgent(
            pool_service_pb2.CordonAgentRequest(request_id=request_id, agent_id=agent_id, reason=reason)
        )
        return reply, f"agent {agent_id} cordoned: no new jobs are placed on it"
    if verb == "uncordon":
        reply = await stub.UncordonAgent(
            pool_service_pb2.UncordonAgentRequest(request_id=request_id, agent_id=agent_id)
        )
        return reply, f"agent {agent_id} uncordoned: it takes new jobs again"
    if verb == "drain":
        reply = await stub.DrainAgent(
            pool_service_pb2.DrainAgentRequest(request_id=request_id, agent_id=agent_id, reason=reason)
        )
        return reply, f"agent {agent_id} draining: no new jobs, its running jobs finish"
    reply = await stub.RevokeAgent(
        pool_service_pb2.RevokeAgentRequest(
            request_id=request_id, agent_id=agent_id, reason="revoked from the CLI"
        )
    )
    return reply, f"agent {agent_id} revoked: its stream is closed and it may not connect again"


async def command(args: argparse.Namespace, ctx: Context) -> str | None:
    """Run the verb of ``cosmos agents``; what to print for people, if anything is left to."""
    async with ctx.channel("stratum") as channel:
        stub = pool_service_pb2_grpc.PoolServiceStub(channel)
        agents = list((await stub.ListAgents(pool_service_pb2.ListAgentsRequest())).agents)
        if args.verb == "list":
            since = parse_since(args.since)
            found = [
                a
                for a in agents
                if (not args.state or state_name(AS, a.state, "AGENT_STATE_") == args.state)
                and after(a.connect_time, since)
            ]
            found = found if args.all else found[: args.limit]
            output.emit(
                {"agents": [output.to_data(a) for a in found]}, args.output, lambda: [agents_table(found)]
            )
            return None
        agent_id = unique(args.id, [a.agent_id for a in agents], "agent")
        if args.verb == "show":
            agent = next(a for a in agents if a.agent_id == agent_id)
            output.emit({"agent": output.to_data(agent)}, args.output, lambda: [agents_table([agent])])
            return None
        reply, text = await _act(stub, args.verb, agent_id)
        return output.said(args.output, reply, text)
