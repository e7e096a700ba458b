"""``cosmos workflows list|show|history|cancel|retry|reset``: Plato's workflows, their steps and events.

The command line (flags, checks, errors) is :mod:`cosmos.cli.platform`; this module holds the calls
to Plato and the tables they print.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from rich.table import Table

from cosmos import errors
from cosmos.cli import output
from cosmos.cli.lookup import collect, exists, pages, parse_since, state_name, unique, when
from cosmos.plato.v1 import events_pb2, workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.security.context import Context

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
SHOW_EVENTS = 30
"""``show`` prints this many of the latest events; ``history`` prints them all."""


def parse_input(text: str) -> struct_pb2.Struct | None:
    """``--input``: a JSON object, or ``@FILE`` holding one; None when not given."""
    if not text:
        return None
    source = "--input"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise errors.ConfigError(f"--input: cannot read {source}: {exc.strerror or exc}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.ConfigError(f"{source}: not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise errors.ConfigError(f"{source}: the workflow input must be a JSON object")
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _plato(channel: grpc.aio.Channel) -> workflow_service_pb2_grpc.WorkflowServiceAsyncStub:
    return workflow_service_pb2_grpc.WorkflowServiceStub(channel)


async def list_workflows(
    stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub,
    *,
    state: str = "",
    definition: str = "",
    tenant: str = "",
    since: dt.datetime | None = None,
    prefix: str = "",
    limit: int = 50,
) -> list[workflow_pb2.Workflow]:
    """Workflows matching the filters, newest first (every filter is applied by Plato)."""
    wanted = WS.Value(f"WORKFLOW_STATE_{state.upper()}") if state else WS.WORKFLOW_STATE_UNSPECIFIED

    async def fetch(token: str) -> tuple[Sequence[workflow_pb2.Workflow], str]:
        request = workflow_service_pb2.ListWorkflowsRequest(
            page_size=min(limit, 1000) if limit else 1000,
            page_token=token,
            definition_id=definition,
            state=wanted,
            tenant=tenant,
            workflow_id_prefix=prefix,
        )
        if since is not None:
            request.created_after_time.FromDatetime(since)
        reply = await stub.ListWorkflows(request)
        return reply.workflows, reply.next_page_token

    return await collect(fetch, lambda _: True, limit)


async def resolve_workflow(stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub, text: str) -> str:
    """The workflow id ``text`` names: itself, or the one workflow whose id starts with it."""
    if await exists(stub.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(workflow_id=text))):
        return text
    matching = await list_workflows(stub, prefix=text, limit=6)  # enough to show an ambiguity
    return unique(text, [wf.workflow_id for wf in matching], "workflow")


async def workflow_history(
    stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub, workflow_id: str
) -> list[events_pb2.WorkflowEvent]:
    """Every event of a workflow, oldest first."""
    events: list[events_pb2.WorkflowEvent] = []

    async def fetch(token: str) -> tuple[Sequence[events_pb2.WorkflowEvent], str]:
        request = workflow_service_pb2.ListWorkflowEventsRequest(
            workflow_id=workflow_id, page_size=1000, page_token=token
        )
        reply = await stub.ListWorkflowEvents(request)
        return reply.events, reply.next_page_token

    async for page in pages(fetch):
        events.extend(page)
    return events


def workflows_table(workflows: Sequence[workflow_pb2.Workflow]) -> Table:
    t = output.table(
        "workflows",
        ("workflow", "definition", "state", "tenant", "steps", "started", "reason"),
        ids=["workflow"],
    )
    output.fit_ids(
        t,
        [
            [
                wf.workflow_id,
                f"{wf.definition_id} v{wf.definition_version}",
                state_name(WS, wf.state, "WORKFLOW_STATE_"),
                wf.tenant or "-",
                str(len(wf.steps)),
                when(wf.start_time),
                wf.failure_reason[:60],
            ]
            for wf in workflows
        ],
    )
    return t


def step_progress(step: workflow_pb2.StepExecution) -> str:
    """A step's progress as people read it: a completed step is done, whatever its last report said."""
    if step.state == SS.STEP_STATE_COMPLETED:
        return "100%"
    if step.state in (SS.STEP_STATE_RUNNING,) and step.progress.percent:
        return f"{step.progress.percent:.0f}%"
    return ""


def steps_table(wf: workflow_pb2.Workflow) -> Table:
    state = state_name(WS, wf.state, "WORKFLOW_STATE_")
    t = output.table(
        f"{wf.workflow_id} ({wf.definition_id} v{wf.definition_version}, {state})",
        ("step", "state", "attempt", "progress", "error"),
        ids=["step"],
    )
    output.fit_ids(
        t,
        [
            [
                s.step_id,
                state_name(SS, s.state, "STEP_STATE_"),
                str(s.attempt),
                step_progress(s),
                s.error[:80],
            ]
            for s in wf.steps
        ],
    )
    return t


def events_table(events: Sequence[events_pb2.WorkflowEvent], title: str) -> Table:
    t = output.table(title, ("#", "time", "event", "step", "detail"), ids=["step"])
    output.fit_ids(
        t,
        [
            [
                str(e.sequence),
                when(e.event_time),
                state_name(events_pb2.WorkflowEventType, e.type, "WORKFLOW_EVENT_TYPE_"),
                e.step_id,
                (e.error or e.rule)[:80],
            ]
            for e in events
        ],
    )
    return t


def no_worker_notices(wf: workflow_pb2.Workflow, now: dt.datetime | None = None) -> list[str]:
    """ "no worker for step X for 30 s" for each step waiting on a task queue nobody polls."""
    now = now or dt.datetime.now(dt.UTC)
    notices = []
    for step in wf.steps:
        if step.HasField("no_worker_since_time"):
            waited = max(0, int((now - step.no_worker_since_time.ToDatetime(dt.UTC)).total_seconds()))
            notices.append(
                f"[yellow]no worker for step {step.step_id} for {waited} s[/yellow] (nothing polls task "
                f"queue {step.task_queue!r}: start a worker with a handler for it)"
            )
    return notices


async def _show(
    stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub, workflow_id: str, verb: str, fmt: str
) -> None:
    """``show`` (steps, waiting notices, the latest events) or ``history`` (every event)."""
    wf = (await stub.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id))).workflow
    events = await workflow_history(stub, workflow_id)
    if verb == "history":
        history = {"workflowId": workflow_id, "events": [output.to_data(e) for e in events]}
        title = f"history of {workflow_id} ({len(events)} events)"
        output.emit(history, fmt, lambda: [events_table(events, title)])
        return
    shown = events[-SHOW_EVENTS:]
    title = f"history (last {len(shown)} of {len(events)} events)"

    def tables() -> list[Table | str]:
        out: list[Table | str] = [steps_table(wf), *no_worker_notices(wf), events_table(shown, title)]
        if len(events) > len(shown):
            out.append(f"every event: cosmos workflows history {workflow_id}")
        return out

    output.emit({"workflow": output.to_data(wf)}, fmt, tables)


async def command(args: argparse.Namespace, ctx: Context) -> str | None:
    """Run the verb of ``cosmos workflows``; what to print for people, if anything is left to."""
    async with ctx.channel("plato") as channel:
        stub = _plato(channel)
        if args.verb == "list":
            found = await list_workflows(
                stub,
                state=args.state,
                definition=args.definition,
                tenant=args.tenant,
                since=parse_since(args.since),
                limit=0 if args.all else args.limit,
            )
            data = {"workflows": [output.to_data(wf) for wf in found]}
            output.emit(data, args.output, lambda: [workflows_table(found)])
            return None
        workflow_id = await resolve_workflow(stub, args.id)
        if args.verb in ("show", "history"):
            await _show(stub, workflow_id, args.verb, args.output)
            return None
        if args.verb == "cancel":
            reply = await stub.CancelWorkflow(
                workflow_service_pb2.CancelWorkflowRequest(
                    request_id=uuid.uuid4().hex, workflow_id=workflow_id, reason="cancelled from the CLI"
                )
            )
            return output.said(args.output, reply.workflow, f"cancellation of {workflow_id} requested")
        workflow, text = await _resume(stub, workflow_id, args.step, parse_input(args.input), args.request_id)
        return output.said(args.output, workflow, text)


async def _resume(
    stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub,
    workflow_id: str,
    step: str,
    new_input: struct_pb2.Struct | None,
    request_id: str,
) -> tuple[workflow_pb2.Workflow, str]:
    request_id = request_id or uuid.uuid4().hex
    if step:
        reset = workflow_service_pb2.ResetWorkflowRequest(
            request_id=request_id, workflow_id=workflow_id, step_name=step, input=new_input
        )
        workflow = (await stub.ResetWorkflow(reset)).workflow
        what = f"reset to step {step}"
    else:
        retry = workflow_service_pb2.RetryWorkflowRequest(
            request_id=request_id, workflow_id=workflow_id, input=new_input
        )
        workflow = (await stub.RetryWorkflow(retry)).workflow
        what = "retried"
    return workflow, f"{workflow_id} {what}: {state_name(WS, workflow.state, 'WORKFLOW_STATE_')}"


async def resume(
    ctx: Context,
    workflow_id: str,
    *,
    step: str = "",
    new_input: struct_pb2.Struct | None = None,
    request_id: str = "",
) -> str:
    """``retry`` (no ``step``) or ``reset --step``; a request id makes a repeated command a no-op."""
    async with ctx.channel("plato") as channel:
        return (await _resume(_plato(channel), workflow_id, step, new_input, request_id))[1]
