"""PoolService: the operator's view of the agents (list, cordon, drain, revoke), pool totals, and the
admin's agent join tokens (see :mod:`cosmos.stratum.enrollment`)."""

from __future__ import annotations

from typing import Any

import grpc

from cosmos import errors
from cosmos.runtime import paging
from cosmos.security import auth
from cosmos.stratum.dispatcher import ON_AGENT, Dispatcher
from cosmos.stratum.enrollment import Enrollment
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.v1 import agent_pb2, job_pb2, pool_service_pb2, pool_service_pb2_grpc

JS = job_pb2.JobState
State = agent_pb2.AgentState
Context = grpc.aio.ServicerContext[Any, Any]


class PoolServicer(pool_service_pb2_grpc.PoolServiceServicer):
    """Answers from the in-process :class:`AgentRegistry`."""

    def __init__(self, registry: AgentRegistry, dispatcher: Dispatcher, enrollment: Enrollment) -> None:
        self.registry = registry
        self.dispatcher = dispatcher
        self.enrollment = enrollment

    async def ListAgents(
        self, request: pool_service_pb2.ListAgentsRequest, context: Context
    ) -> pool_service_pb2.ListAgentsResponse:
        query = f"state={request.state}"
        page = paging.parse(request.page_size, request.page_token, query)
        agents = [
            a for a in self.registry.sorted() if request.state in (State.AGENT_STATE_UNSPECIFIED, a.state)
        ]
        chunk, next_token = paging.slice_page(agents, page, query)
        return pool_service_pb2.ListAgentsResponse(agents=chunk, next_page_token=next_token)

    async def GetAgent(
        self, request: pool_service_pb2.GetAgentRequest, context: Context
    ) -> pool_service_pb2.GetAgentResponse:
        _require_agent_id(request.agent_id)
        return pool_service_pb2.GetAgentResponse(agent=self.registry.get(request.agent_id).agent)

    async def CordonAgent(
        self, request: pool_service_pb2.CordonAgentRequest, context: Context
    ) -> pool_service_pb2.CordonAgentResponse:
        _require_agent_id(request.agent_id)
        agent = self.registry.set_state(request.agent_id, State.AGENT_STATE_CORDONED)
        self.dispatcher.schedulable_changed(agent)
        return pool_service_pb2.CordonAgentResponse(agent=agent)

    async def UncordonAgent(
        self, request: pool_service_pb2.UncordonAgentRequest, context: Context
    ) -> pool_service_pb2.UncordonAgentResponse:
        _require_agent_id(request.agent_id)
        agent = self.registry.set_state(request.agent_id, State.AGENT_STATE_READY)
        self.dispatcher.schedulable_changed(agent)
        return pool_service_pb2.UncordonAgentResponse(agent=agent)

    async def DrainAgent(
        self, request: pool_service_pb2.DrainAgentRequest, context: Context
    ) -> pool_service_pb2.DrainAgentResponse:
        _require_agent_id(request.agent_id)
        agent = self.registry.set_state(request.agent_id, State.AGENT_STATE_DRAINING)
        self.dispatcher.schedulable_changed(agent)
        return pool_service_pb2.DrainAgentResponse(agent=agent)

    async def RevokeAgent(
        self, request: pool_service_pb2.RevokeAgentRequest, context: Context
    ) -> pool_service_pb2.RevokeAgentResponse:
        _require_agent_id(request.agent_id)
        agent = await self.dispatcher.revoke_agent(request.agent_id, request.reason or "revoked")
        return pool_service_pb2.RevokeAgentResponse(agent=agent)

    async def GetPoolStats(
        self, request: pool_service_pb2.GetPoolStatsRequest, context: Context
    ) -> pool_service_pb2.GetPoolStatsResponse:
        stats = pool_service_pb2.PoolStats()
        by_model: dict[str, int] = {}
        for agent in self.registry.sorted():
            stats.agents_total += 1
            if agent.state == State.AGENT_STATE_LOST:
                continue
            if agent.state == State.AGENT_STATE_READY:
                stats.agents_ready += 1
            stats.total_cpu_millis += agent.inventory.cpu_millis
            stats.total_memory_bytes += agent.inventory.memory_bytes
            stats.total_gpus += len(agent.inventory.gpus)
            for gpu in agent.inventory.gpus:
                by_model[gpu.model] = by_model.get(gpu.model, 0) + 1
        for model in sorted(by_model):
            stats.gpus_by_model.add(model=model, total=by_model[model])
        for job in self.dispatcher.jobs.values():
            if job.state == JS.JOB_STATE_QUEUED:
                stats.queued_jobs += 1
            elif job.state in ON_AGENT:
                stats.running_jobs += 1
                stats.allocated_gpus += len(job.gpu_indices) or job.spec.resources.gpu.share
        return pool_service_pb2.GetPoolStatsResponse(stats=stats)

    async def CreateJoinToken(
        self, request: pool_service_pb2.CreateJoinTokenRequest, context: Context
    ) -> pool_service_pb2.CreateJoinTokenResponse:
        return await self.enrollment.create(request, auth.current())

    async def ListJoinTokens(
        self, request: pool_service_pb2.ListJoinTokensRequest, context: Context
    ) -> pool_service_pb2.ListJoinTokensResponse:
        return await self.enrollment.list(request)

    async def DeleteJoinToken(
        self, request: pool_service_pb2.DeleteJoinTokenRequest, context: Context
    ) -> pool_service_pb2.DeleteJoinTokenResponse:
        return await self.enrollment.delete(request)


def _require_agent_id(agent_id: str) -> None:
    errors.require(agent_id, "agent_id", "must not be empty")
