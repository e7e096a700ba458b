"""The workflow handlers: the filtered list, one workflow, its actions (cancel, retry, reset) and
its live updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import grpc
from aiohttp import web

from cosmos.console import views
from cosmos.console.base import PAGE_SIZE, ConsoleBase, query, send_event
from cosmos.console.sessions import bearer
from cosmos.plato.v1 import workflow_service_pb2

TERMINAL_WF = {"completed", "failed", "cancelled"}


class WorkflowHandlers(ConsoleBase):
    """The handlers under ``/workflows``."""

    async def workflows(self, request: web.Request) -> web.Response:
        s = self.session(request)
        shown = views.WorkflowFilters.of(request.query)
        listing = workflow_service_pb2.ListWorkflowsRequest(
            page_size=PAGE_SIZE,
            page_token=request.query.get("page", ""),
            definition_id=shown.definition,
            state=shown.state_value(),
            tenant=shown.tenant,
            workflow_id_prefix=shown.search,
        )
        if shown.since:
            listing.created_after_time.FromSeconds(int(time.time()) - views.SINCE_CHOICES[shown.since])
        reply = await self.backend.workflows.ListWorkflows(listing, metadata=bearer(s))
        if shown.search and len(reply.workflows) == 1 and not reply.next_page_token:
            # An id, or a prefix only one workflow has: straight to it (as the CLI accepts prefixes).
            raise web.HTTPSeeOther(f"/workflows/{views.q(reply.workflows[0].workflow_id)}")
        page = self.page(request, "Workflows", "workflows")
        return self.html(views.workflows_page(page, reply.workflows, shown, next_token=reply.next_page_token))

    async def workflow(self, request: web.Request) -> web.Response:
        s = self.session(request)
        wid = request.match_info["id"]
        wf = (
            await self.backend.workflows.GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(workflow_id=wid), metadata=bearer(s)
            )
        ).workflow
        events = []
        token = ""
        for _ in range(20):  # the whole history, up to 20 pages of 1000
            reply = await self.backend.workflows.ListWorkflowEvents(
                workflow_service_pb2.ListWorkflowEventsRequest(
                    workflow_id=wid, page_size=1000, page_token=token
                ),
                metadata=bearer(s),
            )
            events += list(reply.events)
            token = reply.next_page_token
            if not token:
                break
        definition = None
        try:
            definition = (
                await self.backend.workflows.GetDefinition(
                    workflow_service_pb2.GetDefinitionRequest(
                        definition_id=wf.definition_id, version=wf.definition_version
                    ),
                    metadata=bearer(s),
                )
            ).definition
        except grpc.aio.AioRpcError:
            definition = None  # the DAG falls back to the steps seen so far
        notice = request.query.get("done", "")
        page = self.page(request, f"Workflow {wid}", "workflows")
        return self.html(views.workflow_page(page, wf, events, definition, notice))

    async def workflow_action(self, request: web.Request) -> web.Response:
        s = self.session(request)
        wid, action = request.match_info["id"], request.match_info["action"]
        rid = uuid.uuid4().hex
        stub = self.backend.workflows
        if action == "cancel":
            await stub.CancelWorkflow(
                workflow_service_pb2.CancelWorkflowRequest(
                    request_id=rid, workflow_id=wid, reason=f"cancelled from the console by {s.user.name}"
                ),
                metadata=bearer(s),
            )
            done = "Cancellation requested."
        elif action == "retry":
            await stub.RetryWorkflow(
                workflow_service_pb2.RetryWorkflowRequest(request_id=rid, workflow_id=wid), metadata=bearer(s)
            )
            done = "Retried."
        else:
            step = str((await request.post()).get("step") or "")
            await stub.ResetWorkflow(
                workflow_service_pb2.ResetWorkflowRequest(request_id=rid, workflow_id=wid, step_name=step),
                metadata=bearer(s),
            )
            done = f"Reset from {step}."
        raise web.HTTPSeeOther(f"/workflows/{views.q(wid)}?{query(done=done)}")

    async def workflow_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent ``workflow`` events: the step states after each change the watch reports
        (changes within half a second are sent as one)."""
        s = self.session(request)
        wid = request.match_info["id"]
        get = workflow_service_pb2.GetWorkflowRequest(workflow_id=wid)
        wf = (await self.backend.workflows.GetWorkflow(get, metadata=bearer(s))).workflow
        response = await self._sse(request)
        changed = asyncio.Event()
        ended = asyncio.Event()
        call = self.backend.workflows.WatchWorkflow(
            workflow_service_pb2.WatchWorkflowRequest(workflow_id=wid, from_sequence=wf.last_sequence + 1),
            metadata=bearer(s),
        )

        async def pump() -> None:
            try:
                async for _ in call:
                    changed.set()
            except grpc.aio.AioRpcError:
                pass
            finally:
                ended.set()
                changed.set()

        task = asyncio.create_task(pump())
        try:
            await send_event(response, "workflow", views.workflow_update(wf))
            while views.wf_state(wf.state) not in TERMINAL_WF and not ended.is_set():
                await _wait(changed, 15.0)
                if not changed.is_set():
                    await response.write(b": keep-alive\n\n")
                    continue
                changed.clear()
                wf = (await self.backend.workflows.GetWorkflow(get, metadata=bearer(s))).workflow
                await send_event(response, "workflow", views.workflow_update(wf))
                await asyncio.sleep(0.5)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            call.cancel()
            task.cancel()
        return response


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
