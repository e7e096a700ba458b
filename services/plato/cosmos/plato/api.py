"""Plato's gRPC API: WorkflowService (definitions, workflows, history, watch) and StepService.

Every mutation is a durable JetStream publish to the workflow's inbox, de-duplicated by a message id
derived from the request; the evaluator applies it. Reads come from the workflow state (header, step
records, blobs: :mod:`cosmos.plato.records`) and the events stream.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace

from cosmos import errors
from cosmos.plato import limits, listing, pollers, records
from cosmos.plato.engine import machine, reset
from cosmos.plato.language import parser
from cosmos.plato.store import Conflict, PlatoStore
from cosmos.plato.task_tokens import TaskKey
from cosmos.plato.v1 import (
    definition_pb2,
    engine_pb2,
    events_pb2,
    step_service_pb2,
    step_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from cosmos.protocol import inputs, subjects, values
from cosmos.runtime import paging, rpc_errors, telemetry, validation, wellknown
from cosmos.security import auth

Context = Any
WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_=-]{0,127}$")
_DEFINITION_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}\Z")
"""What a definition id may look like (the parser's rule): anything else never names a definition."""
_NAMESPACE = uuid.UUID("5b0c7c53-7a1c-4b0e-9a55-0f6f7f2c1a11")
DEFAULT_TENANT = "default"
"""Tenant of workloads that start workflows in their own name."""
MAX_BATCH = 1000
"""Starts one ``StartWorkflows`` call may hold."""
RESUME_WAIT = 5.0
"""Seconds RetryWorkflow and ResetWorkflow wait for the evaluator to apply them before answering."""
RESPONSE_VALUE_BYTES = 2 * 1024 * 1024
"""Bytes of large values (inputs, outputs kept as blobs) one read answers with; past it a value
reads as ``{"omitted": {"bytes": N, ...}}``, so a response stays under gRPC's 4 MiB default."""
tracer = trace.get_tracer("cosmos.plato")
log = logging.getLogger(__name__)
_TERMINAL_EVENTS = (
    events_pb2.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED,
    events_pb2.WORKFLOW_EVENT_TYPE_WORKFLOW_FAILED,
    events_pb2.WORKFLOW_EVENT_TYPE_WORKFLOW_CANCELLED,
)


def _require(value: str, field: str) -> None:
    errors.require(value, field, message=f"{field}: is required")


def _check_id(value: str, field: str) -> None:
    _require(value, field)
    if not _ID.match(value):
        raise errors.invalid(
            field, f"{value!r} must match {_ID.pattern} (letters, digits, _ = -; at most 128)"
        )


def _workflow_not_found(workflow_id: str) -> errors.NotFoundError:
    return errors.NotFoundError(
        f"workflow {workflow_id!r} does not exist",
        reason=errors.Reason.ERROR_REASON_WORKFLOW_NOT_FOUND,
        metadata={"workflow_id": workflow_id},
    )


class WorkflowApi(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """``cosmos.plato.v1.WorkflowService``."""

    def __init__(
        self,
        store: PlatoStore,
        stopping: asyncio.Event,
        created: Callable[[str, engine_pb2.WorkflowRecord, int], None] | None = None,
    ) -> None:
        self.store = store
        self.stopping = stopping
        self.created = created
        self.pollers = pollers.Pollers(lambda: store.js)
        """Which task queues have a worker: GetWorkflow marks steps that wait on one with none."""
        """Told of every record a start created, with its revision (the evaluator caches it)."""

    # ------------------------------------------------------------------ definitions

    async def RegisterDefinition(
        self, request: workflow_service_pb2.RegisterDefinitionRequest, context: Context
    ) -> workflow_service_pb2.RegisterDefinitionResponse:
        _require(request.request_id, "request_id")
        _require(request.source_yaml, "source_yaml")
        validation.check_yaml(request.source_yaml, "source_yaml")
        try:
            compiled = parser.parse(request.source_yaml)
        except errors.InvalidArgumentError as exc:
            violations = [
                errors.FieldViolation(f"source_yaml.{v.field}", v.description) for v in exc.violations
            ]
            refused = errors.InvalidArgumentError(exc.message, violations=violations)
            refused.reason = exc.reason  # the parser's reason, as it named it
            raise refused from exc
        definition = definition_pb2.WorkflowDefinition(
            definition_id=compiled.id,
            source_yaml=request.source_yaml,
            step_names=sorted(compiled.steps),
            content_hash=hashlib.sha256(request.source_yaml.encode()).hexdigest(),
        )
        definition.create_time.GetCurrentTime()
        stored = await self.store.put_definition(definition)
        return workflow_service_pb2.RegisterDefinitionResponse(definition=stored)

    async def GetDefinition(
        self, request: workflow_service_pb2.GetDefinitionRequest, context: Context
    ) -> workflow_service_pb2.GetDefinitionResponse:
        _require(request.definition_id, "definition_id")
        if request.version < 0:
            raise errors.invalid("version", "must be 0 (latest) or a positive version")
        stored = await self.store.get_definition(request.definition_id, request.version)
        return workflow_service_pb2.GetDefinitionResponse(definition=stored)

    async def ListDefinitions(
        self, request: workflow_service_pb2.ListDefinitionsRequest, context: Context
    ) -> workflow_service_pb2.ListDefinitionsResponse:
        if not request.definition_id:
            query = "definitions"
            every: list[tuple[str, int | None]] = [(d, None) for d in await self.store.definition_ids()]
        else:
            # One definition: every version, newest first (an id never registered lists nothing).
            if not _DEFINITION_ID.match(request.definition_id):
                raise errors.invalid(
                    "definition_id", "must match [a-z0-9][a-z0-9._-]*, at most 128 characters"
                )
            query = f"definitions;def={request.definition_id}"
            latest, _ = await self.store.latest_version(request.definition_id)
            every = [(request.definition_id, v) for v in range(latest, 0, -1)]
        page = paging.parse(request.page_size, request.page_token, query)
        keys = every[page.offset : page.offset + page.size]
        definitions = paging.within(
            [await self.store.get_definition(d, v or 0) for d, v in keys],
            lambda d: d.ByteSize(),
            paging.MAX_PAGE_BYTES,
        )
        end = page.offset + len(definitions)
        next_token = paging.token(end, query) if end < len(every) else ""
        return workflow_service_pb2.ListDefinitionsResponse(
            definitions=definitions, next_page_token=next_token
        )

    # ------------------------------------------------------------------ workflows

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
        _require(request.request_id, "request_id")
        _require(request.definition_id, "definition_id")
        if request.workflow_id:
            _check_id(request.workflow_id, "workflow_id")
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

    async def _record(self, workflow_id: str) -> engine_pb2.WorkflowRecord:
        """The workflow's header (its workflow without steps)."""
        _require(workflow_id, "workflow_id")
        loaded = await records.load_header(self.store, workflow_id, RESPONSE_VALUE_BYTES)
        # Another tenant's workflow does not exist for this caller.
        if loaded is None or not auth.current().sees(loaded[0].workflow.tenant):
            raise _workflow_not_found(workflow_id)
        return loaded[0]

    async def _workflow(self, workflow_id: str) -> workflow_pb2.Workflow:
        """The whole public workflow, steps included."""
        await self._record(workflow_id)
        state = await records.load(self.store, workflow_id, RESPONSE_VALUE_BYTES)
        if state is None:
            raise _workflow_not_found(workflow_id)
        return state.workflow()

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
        _require(request.request_id, "request_id")
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

    async def RetryWorkflow(
        self, request: workflow_service_pb2.RetryWorkflowRequest, context: Context
    ) -> workflow_service_pb2.RetryWorkflowResponse:
        new_input = request.input if request.HasField("input") else None
        workflow = await self._resume(request.request_id, request.workflow_id, "", new_input)
        return workflow_service_pb2.RetryWorkflowResponse(workflow=workflow)

    async def ResetWorkflow(
        self, request: workflow_service_pb2.ResetWorkflowRequest, context: Context
    ) -> workflow_service_pb2.ResetWorkflowResponse:
        _require(request.step_name, "step_name")
        new_input = request.input if request.HasField("input") else None
        workflow = await self._resume(request.request_id, request.workflow_id, request.step_name, new_input)
        return workflow_service_pb2.ResetWorkflowResponse(workflow=workflow)

    async def _resume(
        self, request_id: str, workflow_id: str, step_name: str, new_input: Any
    ) -> workflow_pb2.Workflow:
        """Check a retry (``step_name`` empty) or reset, post it to the workflow's inbox, and answer
        with the workflow once the evaluator applied it (or after :data:`RESUME_WAIT`)."""
        _require(request_id, "request_id")
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
            raise _workflow_not_found(workflow_id)
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

    async def SignalWorkflow(
        self, request: workflow_service_pb2.SignalWorkflowRequest, context: Context
    ) -> workflow_service_pb2.SignalWorkflowResponse:
        _require(request.request_id, "request_id")
        _require(request.signal_name, "signal_name")
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

    # ------------------------------------------------------------------ history

    async def ListWorkflowEvents(
        self, request: workflow_service_pb2.ListWorkflowEventsRequest, context: Context
    ) -> workflow_service_pb2.ListWorkflowEventsResponse:
        await self._record(request.workflow_id)
        page = paging.parse(request.page_size, "", "")
        start = _decode_cursor(request.page_token)
        events, last_stream_seq = await self._read_events(request.workflow_id, start, page.size)
        next_token = _encode_cursor(last_stream_seq + 1) if len(events) == page.size else ""
        return workflow_service_pb2.ListWorkflowEventsResponse(events=events, next_page_token=next_token)

    async def _read_events(
        self, workflow_id: str, start_stream_seq: int, limit: int
    ) -> tuple[list[events_pb2.WorkflowEvent], int]:
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_stream_seq else DeliverPolicy.ALL,
            opt_start_seq=start_stream_seq or None,
            inactive_threshold=10.0,
            filter_subject=subjects.events(workflow_id),
        )
        sub = await self.store.js.pull_subscribe(
            subjects.events(workflow_id), stream=subjects.EVENTS_STREAM, config=config
        )
        events: list[events_pb2.WorkflowEvent] = []
        last = start_stream_seq
        try:
            while len(events) < limit:
                try:
                    msgs = await sub.fetch(limit - len(events), timeout=0.3)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                for msg in msgs:
                    events.append(events_pb2.WorkflowEvent.FromString(msg.data))
                    last = msg.metadata.sequence.stream
        finally:
            await sub.unsubscribe()
        return events, last

    async def WatchWorkflow(
        self, request: workflow_service_pb2.WatchWorkflowRequest, context: Context
    ) -> AsyncIterator[workflow_service_pb2.WatchWorkflowResponse]:
        record = await self._record(request.workflow_id)
        sub = await self.store.js.subscribe(
            subjects.events(request.workflow_id),
            stream=subjects.EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        try:
            if record.workflow.state in machine.TERMINAL_WORKFLOW_STATES and record.workflow.last_sequence < (
                request.from_sequence or 1
            ):
                return
            while not self.stopping.is_set():
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                event = events_pb2.WorkflowEvent.FromString(msg.data)
                if event.sequence < request.from_sequence:
                    continue
                yield workflow_service_pb2.WatchWorkflowResponse(event=event)
                # A terminal event that a retry or reset already followed (the history goes on past
                # it) does not end the stream.
                if event.type in _TERMINAL_EVENTS and event.sequence >= record.workflow.last_sequence:
                    return
        finally:
            await sub.unsubscribe()


def _encode_cursor(stream_seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{stream_seq}".encode()).decode()


def _decode_cursor(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("s"):
            raise ValueError(text)
        return int(text[1:])
    except ValueError as exc:
        raise errors.InvalidArgumentError(
            "page_token is not a token this service issued",
            reason=errors.Reason.ERROR_REASON_INVALID_PAGE_TOKEN,
            violations=[errors.FieldViolation("page_token", "malformed; pass next_page_token unchanged")],
        ) from exc


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
        _require(request_id, "request_id")
        _require(workflow_id, "workflow_id")
        _require(step_id, "step_id")
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
            raise _workflow_not_found(workflow_id)
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
        _require(request.error, "error")
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
