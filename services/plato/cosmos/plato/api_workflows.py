"""WorkflowService's reads and commands of a running workflow: GetWorkflow, ListWorkflows,
CancelWorkflow, SignalWorkflow (part of :class:`cosmos.plato.api.WorkflowApi`)."""

from __future__ import annotations

import asyncio

from google.protobuf.message import DecodeError

from cosmos import errors
from cosmos.plato import listing, records
from cosmos.plato.api_common import RESPONSE_VALUE_BYTES, WS, Context, WorkflowRpcs, log, require
from cosmos.plato.engine import machine
from cosmos.plato.v1 import engine_pb2, workflow_pb2, workflow_service_pb2
from cosmos.runtime import paging, telemetry
from cosmos.security import auth


class ReadAndControlRpcs(WorkflowRpcs):
    """A workflow read whole, workflows listed, and cancel and signal posted to a workflow's inbox."""

    async def GetWorkflow(
        self, request: workflow_service_pb2.GetWorkflowRequest, context: Context
    ) -> workflow_service_pb2.GetWorkflowResponse:
        workflow = await self.pollers.annotate(await self._workflow(request.workflow_id))
        return workflow_service_pb2.GetWorkflowResponse(workflow=workflow)

    async def ListWorkflows(
        self, request: workflow_service_pb2.ListWorkflowsRequest, context: Context
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        keep = listing.matcher(request)
        query = listing.query(request)
        page = paging.parse(request.page_size, request.page_token, query)
        # Every record is read (see docs/plato.md, "Known limits"), many at a time.
        limit = asyncio.Semaphore(64)

        async def load(workflow_id: str) -> workflow_pb2.Workflow | None:
            async with limit:
                try:
                    loaded = await self.store.get_record(workflow_id)
                except DecodeError:
                    loaded = None
                else:
                    if loaded is None or loaded[0].workflow.workflow_id == workflow_id:
                        return None if loaded is None else loaded[0].workflow
            # One bad entry (garbage put into the bucket) must not break the listing for everyone.
            log.warning("unreadable workflow record skipped", extra={"fields": {"key": workflow_id}})
            return None

        prefix = request.workflow_id_prefix
        ids = [i for i in await self.store.workflow_ids() if i.startswith(prefix)]
        loaded = await asyncio.gather(*(load(i) for i in ids))
        caller = auth.current()
        matching = [wf for wf in loaded if wf is not None and caller.sees(wf.tenant) and keep(wf)]
        chunk, next_token = paging.newest_first(
            matching,
            lambda wf: (wf.create_time.ToNanoseconds(), wf.workflow_id),
            page,
            query,
            size=lambda wf: wf.ByteSize(),
        )
        # Filtering and ordering read headers only; the page's workflows are read whole.
        budget = RESPONSE_VALUE_BYTES // max(1, len(chunk))

        async def whole(wf: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
            async with limit:
                state = await records.load(self.store, wf.workflow_id, budget)
            return wf if state is None else state.workflow()

        full = await asyncio.gather(*(whole(wf) for wf in chunk))
        return workflow_service_pb2.ListWorkflowsResponse(workflows=full, next_page_token=next_token)

    async def CancelWorkflow(
        self, request: workflow_service_pb2.CancelWorkflowRequest, context: Context
    ) -> workflow_service_pb2.CancelWorkflowResponse:
        require(request.request_id, "request_id")
        record = await self._record(request.workflow_id)
        state = record.workflow.state
        if state in (WS.WORKFLOW_STATE_COMPLETED, WS.WORKFLOW_STATE_FAILED):
            raise errors.FailedPreconditionError(
                f"workflow {request.workflow_id!r} already ended ({WS.Name(state)})",
                reason=errors.Reason.ERROR_REASON_ALREADY_TERMINAL,
                metadata={"workflow_id": request.workflow_id, "state": WS.Name(state)},
            )
        inp = engine_pb2.EngineInput(
            workflow_id=request.workflow_id,
            cancel=engine_pb2.CancelInput(reason=request.reason, request_id=request.request_id),
        )
        await self.store.publish_input(inp, f"{request.workflow_id}:cancel", telemetry.inject_headers())
        return workflow_service_pb2.CancelWorkflowResponse(workflow=record.workflow)

    async def SignalWorkflow(
        self, request: workflow_service_pb2.SignalWorkflowRequest, context: Context
    ) -> workflow_service_pb2.SignalWorkflowResponse:
        require(request.request_id, "request_id")
        require(request.signal_name, "signal_name")
        record = await self._record(request.workflow_id)
        if record.workflow.state in machine.TERMINAL_WORKFLOW_STATES:
            raise errors.FailedPreconditionError(
                f"workflow {request.workflow_id!r} already ended",
                reason=errors.Reason.ERROR_REASON_ALREADY_TERMINAL,
                metadata={"workflow_id": request.workflow_id},
            )
        inp = engine_pb2.EngineInput(
            workflow_id=request.workflow_id,
            signal=engine_pb2.SignalInput(
                name=request.signal_name, payload=request.payload, request_id=request.request_id
            ),
        )
        msg_id = f"{request.workflow_id}:signal:{request.request_id}"
        await self.store.publish_input(inp, msg_id, telemetry.inject_headers())
        return workflow_service_pb2.SignalWorkflowResponse(workflow=record.workflow)
