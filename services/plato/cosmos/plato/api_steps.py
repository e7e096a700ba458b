"""StepService: results and heartbeats of step attempts from handlers that speak gRPC (re-exported
by :mod:`cosmos.plato.api`)."""

from __future__ import annotations

from cosmos import errors
from cosmos.plato import limits, records
from cosmos.plato.api_common import SS, WS, Context, log, require, workflow_not_found
from cosmos.plato.store import PlatoStore
from cosmos.plato.task_tokens import TaskKey
from cosmos.plato.v1 import engine_pb2, step_service_pb2, step_service_pb2_grpc, workflow_pb2
from cosmos.protocol import inputs, values
from cosmos.runtime import telemetry
from cosmos.security import auth


class StepApi(step_service_pb2_grpc.StepServiceServicer):
    """``cosmos.plato.v1.StepService``: results and heartbeats from handlers that speak gRPC.

    Each request carries the task token of its attempt (see :mod:`cosmos.plato.task_tokens`): without
    the right one it is refused before anything is looked up, so a caller learns nothing of workflows
    whose tasks it was not given.
    """

    def __init__(self, store: PlatoStore, task_key: TaskKey) -> None:
        self.store = store
        self.task_key = task_key

    async def _fenced(
        self, request_id: str, workflow_id: str, step_id: str, attempt: int, token: bytes
    ) -> tuple[engine_pb2.WorkflowRecord, workflow_pb2.StepExecution]:
        require(request_id, "request_id")
        require(workflow_id, "workflow_id")
        require(step_id, "step_id")
        if attempt < 1:
            raise errors.invalid("attempt", "must be the attempt number of the task (1 or more)")
        if not self.task_key.verify(workflow_id, step_id, attempt, token):
            log.warning(
                "step report with a missing or wrong task token refused",
                extra={"fields": {"workflow_id": workflow_id, "step_id": step_id, "attempt": attempt}},
            )
            raise errors.PermissionDeniedError(
                "task_token: missing or not the token of this step attempt (echo the StepTask's task_token)",
                metadata={"field": "task_token", "workflow_id": workflow_id, "step_id": step_id},
            )
        loaded = await records.load_step(self.store, workflow_id, step_id)
        if loaded is None or not auth.current().sees(loaded[0].workflow.tenant):
            raise workflow_not_found(workflow_id)
        record, step_record = loaded
        step = None if step_record is None else step_record.step
        if step is None:
            raise errors.NotFoundError(
                f"workflow {workflow_id!r} has no step {step_id!r}",
                reason=errors.Reason.ERROR_REASON_STEP_NOT_FOUND,
                metadata={"workflow_id": workflow_id, "step_id": step_id},
            )
        return record, step

    @staticmethod
    def _refuse_stale(step: workflow_pb2.StepExecution, attempt: int) -> None:
        live = step.state in (SS.STEP_STATE_SCHEDULED, SS.STEP_STATE_RUNNING)
        if step.attempt != attempt or not live:
            raise errors.AbortedError(
                f"step {step.step_id!r} attempt {attempt} is no longer current "
                f"(current attempt {step.attempt}, {SS.Name(step.state)})",
                reason=errors.Reason.ERROR_REASON_STALE_ATTEMPT,
                metadata={
                    "step_id": step.step_id,
                    "attempt": str(attempt),
                    "current_attempt": str(step.attempt),
                },
            )

    async def CompleteStep(
        self, request: step_service_pb2.CompleteStepRequest, context: Context
    ) -> step_service_pb2.CompleteStepResponse:
        _, step = await self._fenced(
            request.request_id,
            request.workflow_id,
            request.step_id,
            request.attempt,
            request.task_token,
        )
        if not (step.attempt == request.attempt and step.state == SS.STEP_STATE_COMPLETED):
            self._refuse_stale(step, request.attempt)
            size, limit = request.output.ByteSize(), limits.max_value_bytes(self.store.nc.max_payload)
            if size > limit:
                # The step fails with the reason (no retry makes it fit), and the caller hears why.
                reason = f"output of {size:,} bytes exceeds the limit of {limit:,} bytes"
                inp, msg_id = inputs.result(
                    request.workflow_id,
                    request.step_id,
                    request.attempt,
                    error=reason,
                    non_retryable=True,
                    task_token=request.task_token,
                )
                await self.store.publish_input(inp, msg_id, telemetry.inject_headers())
                raise errors.invalid("output", f"is {size:,} bytes; at most {limit:,} (the step failed)")
            inp, msg_id = inputs.result(
                request.workflow_id,
                request.step_id,
                request.attempt,
                output=values.struct_to_dict(request.output),
                task_token=request.task_token,
            )
            await self.store.publish_input(inp, msg_id, telemetry.inject_headers())
        return step_service_pb2.CompleteStepResponse()

    async def FailStep(
        self, request: step_service_pb2.FailStepRequest, context: Context
    ) -> step_service_pb2.FailStepResponse:
        require(request.error, "error")
        _, step = await self._fenced(
            request.request_id,
            request.workflow_id,
            request.step_id,
            request.attempt,
            request.task_token,
        )
        self._refuse_stale(step, request.attempt)
        inp, msg_id = inputs.result(
            request.workflow_id,
            request.step_id,
            request.attempt,
            error=request.error,
            non_retryable=request.non_retryable,
            task_token=request.task_token,
        )
        await self.store.publish_input(inp, msg_id, telemetry.inject_headers())
        return step_service_pb2.FailStepResponse()

    async def HeartbeatStep(
        self, request: step_service_pb2.HeartbeatStepRequest, context: Context
    ) -> step_service_pb2.HeartbeatStepResponse:
        record, step = await self._fenced(
            request.request_id,
            request.workflow_id,
            request.step_id,
            request.attempt,
            request.task_token,
        )
        cancelled = record.workflow.state in (WS.WORKFLOW_STATE_CANCELLING, WS.WORKFLOW_STATE_CANCELLED) or (
            step.state == SS.STEP_STATE_CANCELLED
        )
        if cancelled:
            return step_service_pb2.HeartbeatStepResponse(cancel_requested=True)
        self._refuse_stale(step, request.attempt)
        progress = request.progress if request.HasField("progress") else None
        inp, msg_id = inputs.heartbeat(
            request.workflow_id,
            request.step_id,
            request.attempt,
            progress,
            request.request_id,
            task_token=request.task_token,
        )
        await self.store.publish_input(inp, msg_id, telemetry.inject_headers())
        return step_service_pb2.HeartbeatStepResponse(cancel_requested=False)
