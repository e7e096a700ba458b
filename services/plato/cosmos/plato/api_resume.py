"""WorkflowService's RetryWorkflow and ResetWorkflow: a finished workflow rerun from its failed steps
or from a named step (part of :class:`cosmos.plato.api.WorkflowApi`; the transitions are
:mod:`cosmos.plato.engine.reset`)."""

from __future__ import annotations

import asyncio
from typing import Any

from cosmos import errors
from cosmos.plato import limits, records
from cosmos.plato.api_common import WS, Context, WorkflowRpcs, require, workflow_not_found
from cosmos.plato.engine import reset
from cosmos.plato.v1 import engine_pb2, workflow_pb2, workflow_service_pb2
from cosmos.runtime import telemetry

RESUME_WAIT = 5.0
"""Seconds RetryWorkflow and ResetWorkflow wait for the evaluator to apply them before answering."""


class ResumeRpcs(WorkflowRpcs):
    """Retry (rerun what did not complete) and reset (rerun from a named step), each checked here and
    applied by the evaluator."""

    async def RetryWorkflow(
        self, request: workflow_service_pb2.RetryWorkflowRequest, context: Context
    ) -> workflow_service_pb2.RetryWorkflowResponse:
        new_input = request.input if request.HasField("input") else None
        workflow = await self._resume(request.request_id, request.workflow_id, "", new_input)
        return workflow_service_pb2.RetryWorkflowResponse(workflow=workflow)

    async def ResetWorkflow(
        self, request: workflow_service_pb2.ResetWorkflowRequest, context: Context
    ) -> workflow_service_pb2.ResetWorkflowResponse:
        require(request.step_name, "step_name")
        new_input = request.input if request.HasField("input") else None
        workflow = await self._resume(request.request_id, request.workflow_id, request.step_name, new_input)
        return workflow_service_pb2.ResetWorkflowResponse(workflow=workflow)

    async def _resume(
        self, request_id: str, workflow_id: str, step_name: str, new_input: Any
    ) -> workflow_pb2.Workflow:
        """Check a retry (``step_name`` empty) or reset, post it to the workflow's inbox, and answer
        with the workflow once the evaluator applied it (or after :data:`RESUME_WAIT`)."""
        require(request_id, "request_id")
        record = await self._record(workflow_id)
        if request_id in record.resume_request_ids:
            return await self._workflow(workflow_id)  # the same request again: its answer, nothing new
        wf = record.workflow
        why = reset.refusal(wf.state, step_name)
        if why:
            raise errors.FailedPreconditionError(
                f"workflow {workflow_id!r}: {why}",
                reason=errors.Reason.ERROR_REASON_NOT_RESUMABLE,
                metadata={"workflow_id": workflow_id, "state": WS.Name(wf.state)},
            )
        if new_input is not None:
            size, limit = new_input.ByteSize(), limits.max_value_bytes(self.store.nc.max_payload)
            if size > limit:
                raise errors.invalid("input", f"is {size:,} bytes; at most {limit:,}")
        state = await records.load(self.store, workflow_id, 0)
        if state is None:
            raise workflow_not_found(workflow_id)
        if step_name:
            definition = await self.store.compiled(wf.definition_id, wf.definition_version)
            if step_name not in definition.steps:
                raise errors.invalid(
                    "step_name", f"definition {wf.definition_id!r} has no step {step_name!r}"
                )
            if not state.table.by_name.get(step_name):
                raise errors.invalid("step_name", f"step {step_name!r} never ran in this workflow")
        elif not reset.rerun_candidates(state.table.steps()):
            raise errors.FailedPreconditionError(
                f"workflow {workflow_id!r} has no failed or cancelled step to rerun; "
                "ResetWorkflow reruns it from a named step",
                reason=errors.Reason.ERROR_REASON_NOT_RESUMABLE,
                metadata={"workflow_id": workflow_id, "state": WS.Name(wf.state)},
            )
        resume = engine_pb2.ResumeInput(request_id=request_id, step_name=step_name)
        if new_input is not None:
            resume.input.CopyFrom(new_input)
        inp = engine_pb2.EngineInput(workflow_id=workflow_id, resume=resume)
        await self.store.publish_input(inp, f"{workflow_id}:resume:{request_id}", telemetry.inject_headers())
        deadline = asyncio.get_running_loop().time() + RESUME_WAIT
        while asyncio.get_running_loop().time() < deadline:
            loaded = await self.store.get_record(workflow_id)
            if loaded is not None and request_id in loaded[0].resume_request_ids:
                break
            await asyncio.sleep(0.05)
        return await self._workflow(workflow_id)
