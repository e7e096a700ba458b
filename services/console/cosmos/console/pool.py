"""The handlers of jobs (the list, one job, its live events), the pool of agents and its actions
(cordon, uncordon, drain), and workflow definitions.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
from aiohttp import web

from cosmos.console import views
from cosmos.console.base import PAGE_SIZE, ConsoleBase, send_event
from cosmos.console.sessions import bearer
from cosmos.plato.v1 import workflow_service_pb2
from cosmos.stratum.v1 import job_service_pb2, pool_service_pb2

TERMINAL_JOB = {"succeeded", "failed", "cancelled", "timed_out"}


class PoolHandlers(ConsoleBase):
    """The handlers under ``/jobs``, ``/pool`` and ``/definitions``."""

    async def jobs(self, request: web.Request) -> web.Response:
        s = self.session(request)
        reply = await self.backend.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=PAGE_SIZE, page_token=request.query.get("page", "")),
            metadata=bearer(s),
        )
        page = self.page(request, "Jobs", "jobs")
        return self.html(views.jobs_page(page, reply.jobs, reply.next_page_token))

    async def job(self, request: web.Request) -> web.Response:
        s = self.session(request)
        reply = await self.backend.jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id=request.match_info["id"]), metadata=bearer(s)
        )
        page = self.page(request, f"Job {reply.job.job_id}", "jobs")
        return self.html(views.job_page(page, reply.job))

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent ``job`` (state, progress) and ``log`` (a line of output) events from WatchJob,
        from the job's first event, so the page's log tail starts at the beginning."""
        s = self.session(request)
        jid = request.match_info["id"]
        await self.backend.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=jid), metadata=bearer(s))
        response = await self._sse(request)
        call = self.backend.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=jid, from_sequence=1), metadata=bearer(s)
        )
        try:
            async for reply in call:
                sent = views.job_event(reply.event)
                if sent is not None:
                    await send_event(response, *sent)
                    if sent[0] == "job" and sent[1].get("state") in TERMINAL_JOB:
                        break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        except grpc.aio.AioRpcError as exc:
            await send_event(response, "failed", {"error": exc.details() or exc.code().name})
        finally:
            call.cancel()
        return response

    async def pool(self, request: web.Request) -> web.Response:
        s = self.session(request)
        agents = await self.backend.pool.ListAgents(pool_service_pb2.ListAgentsRequest(), metadata=bearer(s))
        stats = None
        try:
            stats = (
                await self.backend.pool.GetPoolStats(
                    pool_service_pb2.GetPoolStatsRequest(), metadata=bearer(s)
                )
            ).stats
        except grpc.aio.AioRpcError:
            stats = None
        page = self.page(request, "Pool", "pool")
        return self.html(views.pool_page(page, agents.agents, stats))

    async def pool_action(self, request: web.Request) -> web.Response:
        s = self.session(request)
        agent, action = request.match_info["id"], request.match_info["action"]
        rid = uuid.uuid4().hex
        why = f"from the console by {s.user.name}"
        if action == "cordon":
            await self.backend.pool.CordonAgent(
                pool_service_pb2.CordonAgentRequest(request_id=rid, agent_id=agent, reason=why),
                metadata=bearer(s),
            )
        elif action == "uncordon":
            await self.backend.pool.UncordonAgent(
                pool_service_pb2.UncordonAgentRequest(request_id=rid, agent_id=agent), metadata=bearer(s)
            )
        else:
            await self.backend.pool.DrainAgent(
                pool_service_pb2.DrainAgentRequest(request_id=rid, agent_id=agent, reason=why),
                metadata=bearer(s),
            )
        raise web.HTTPSeeOther("/pool")

    async def definitions(self, request: web.Request) -> web.Response:
        s = self.session(request)
        reply = await self.backend.workflows.ListDefinitions(
            workflow_service_pb2.ListDefinitionsRequest(page_size=200), metadata=bearer(s)
        )
        latest: dict[str, Any] = {}
        for d in reply.definitions:
            if d.definition_id not in latest or d.version > latest[d.definition_id].version:
                latest[d.definition_id] = d
        page = self.page(request, "Definitions", "definitions")
        return self.html(views.definitions_page(page, list(latest.values())))

    async def definition(self, request: web.Request) -> web.Response:
        s = self.session(request)
        did = request.match_info["id"]
        reply = await self.backend.workflows.ListDefinitions(
            workflow_service_pb2.ListDefinitionsRequest(page_size=200, definition_id=did), metadata=bearer(s)
        )
        versions = [d for d in reply.definitions if d.definition_id == did]
        if not versions:
            raise web.HTTPNotFound(text=f"no definition {did}")
        page = self.page(request, f"Definition {did}", "definitions")
        return self.html(views.definition_page(page, versions))
