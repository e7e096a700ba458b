"""WorkflowService's starts: StartWorkflow and StartWorkflows (part of
:class:`cosmos.plato.api.WorkflowApi`).

A start is published to the workflow's inbox first (durable from then on), then its record is
created; losing that create means the workflow exists, and the stored start is compared with this one
(see ``docs/plato.md``, the dedupe check).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from opentelemetry import trace

from cosmos import errors
from cosmos.plato import limits, records
from cosmos.plato.api_common import Context, WorkflowRpcs, check_id, require
from cosmos.plato.engine import machine
from cosmos.plato.store import Conflict
from cosmos.plato.v1 import engine_pb2, workflow_pb2, workflow_service_pb2
from cosmos.protocol import inputs, values
from cosmos.runtime import rpc_errors, telemetry, wellknown
from cosmos.security import auth

_NAMESPACE = uuid.UUID("5b0c7c53-7a1c-4b0e-9a55-0f6f7f2c1a11")
DEFAULT_TENANT = "default"
"""Tenant of workloads that start workflows in their own name."""
MAX_BATCH = 1000
"""Starts one ``StartWorkflows`` call may hold."""
tracer = trace.get_tracer("cosmos.plato")


class StartRpcs(WorkflowRpcs):
    """Starts, one or a batch, idempotent on the request id (per tenant) or the workflow id."""

    async def StartWorkflow(
        self, request: workflow_service_pb2.StartWorkflowRequest, context: Context
    ) -> workflow_service_pb2.StartWorkflowResponse:
        return await self._start(request)

    async def StartWorkflows(
        self, request: workflow_service_pb2.StartWorkflowsRequest, context: Context
    ) -> workflow_service_pb2.StartWorkflowsResponse:
        if len(request.entries) > MAX_BATCH:
            raise errors.invalid("entries", f"{len(request.entries)} starts; at most {MAX_BATCH} per call")
        # Concurrently: their JetStream publishes and record creates share round trips on the wire.
        results = await asyncio.gather(*(self._start_entry(entry) for entry in request.entries))
        return workflow_service_pb2.StartWorkflowsResponse(results=results)

    async def _start_entry(
        self, entry: workflow_service_pb2.StartWorkflowsEntry
    ) -> workflow_service_pb2.StartWorkflowResult:
        # Each entry continues its own caller's trace (this runs in a task of its own, so the span
        # is current for this start only).
        context = telemetry.extract_context(entry.trace_context)
        with tracer.start_as_current_span("plato.start", context=context):
            try:
                started = await self._start(entry.request)
            except Exception as exc:  # one entry's failure, whatever it is, is that entry's result
                error = rpc_errors.as_rpc_error(exc, "StartWorkflows")
                return workflow_service_pb2.StartWorkflowResult(error=rpc_errors.status_proto(error))
        return workflow_service_pb2.StartWorkflowResult(started=started)

    async def _start(
        self, request: workflow_service_pb2.StartWorkflowRequest
    ) -> workflow_service_pb2.StartWorkflowResponse:
        require(request.request_id, "request_id")
        require(request.definition_id, "definition_id")
        if request.workflow_id:
            check_id(request.workflow_id, "workflow_id")
        if request.definition_version < 0:
            raise errors.invalid("definition_version", "must be 0 (latest) or a positive version")
        size, limit = request.input.ByteSize(), limits.max_value_bytes(self.store.nc.max_payload)
        if size > limit:
            # It could never be posted to the inbox (one NATS message), nor a task carry it.
            raise errors.invalid("input", f"is {size:,} bytes; at most {limit:,}")
        definition = await self.store.start_definition(request.definition_id, request.definition_version)
        tenant = auth.current().tenant or DEFAULT_TENANT
        # A retried start (same request_id, same tenant) lands on the same workflow id, so it finds the
        # first one; two tenants' request ids never meet.
        derived = "wf-" + uuid.uuid5(_NAMESPACE, f"{tenant}\n{request.request_id}").hex
        workflow_id = request.workflow_id or derived
        start = engine_pb2.StartInput(
            definition_id=definition.definition_id,
            definition_version=definition.version,
            input=request.input,
            request_id=request.request_id,
            tenant=tenant,
        )
        now = wellknown.utcnow()
        start.request_time.FromDatetime(now)
        inp = engine_pb2.EngineInput(workflow_id=workflow_id, start=start)
        # Publish first: from here on the start is durable, whatever happens to this process. There
        # is no lookup of an existing workflow before: creating the record below is that check (a
        # start input published for a workflow that already exists changes nothing: only a PENDING
        # workflow starts, on the input its record holds).
        duplicate = await self.store.publish_input(
            inp, inputs.start_msg_id(workflow_id), telemetry.inject_headers()
        )
        record = machine.new_record(workflow_id, start, now)
        try:
            revision = await self.store.save_record(workflow_id, record, None)
        except Conflict:
            return await self._existing(workflow_id, request, start, duplicate)
        if self.created is not None:
            self.created(workflow_id, record, revision)
        return workflow_service_pb2.StartWorkflowResponse(workflow=record.workflow)

    async def _existing(
        self,
        workflow_id: str,
        request: workflow_service_pb2.StartWorkflowRequest,
        start: engine_pb2.StartInput,
        duplicate: bool,
    ) -> workflow_service_pb2.StartWorkflowResponse:
        """The record exists already: this start's own (the evaluator created it first), a retry's
        first start, or a different request's (refused)."""
        stored = await records.load_header(self.store, workflow_id)
        if stored is None:
            raise errors.UnavailableError(f"workflow {workflow_id!r} vanished while starting; retry")
        workflow = stored[0].workflow
        self._refuse_different(workflow, request)
        # JetStream dropping our start as a duplicate means an earlier start published it. Past the
        # duplicate window it cannot tell; then a record created well before this request is older.
        # Otherwise the evaluator created the record from this very start.
        window = self.store.config.duplicate_window
        older = values.moment(workflow.create_time) < values.moment(start.request_time) - timedelta(
            seconds=window / 2
        )
        return workflow_service_pb2.StartWorkflowResponse(
            workflow=workflow, already_started=duplicate or older
        )

    @staticmethod
    def _refuse_different(
        workflow: workflow_pb2.Workflow, request: workflow_service_pb2.StartWorkflowRequest
    ) -> None:
        same = (
            workflow.request_id == request.request_id
            and workflow.definition_id == request.definition_id
            and workflow.input == request.input
            and workflow.tenant == (auth.current().tenant or DEFAULT_TENANT)
        )
        if not same:
            field = "workflow_id" if request.workflow_id else "request_id"
            raise errors.AlreadyExistsError(
                f"workflow {workflow.workflow_id!r} already exists with a different start request",
                reason=errors.Reason.ERROR_REASON_WORKFLOW_ALREADY_EXISTS
                if request.workflow_id
                else errors.Reason.ERROR_REASON_REQUEST_ID_REUSED,
                metadata={"workflow_id": workflow.workflow_id, "field": field},
            )
