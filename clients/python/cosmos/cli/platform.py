"""``cosmos workflows list|show|cancel|retry|reset``, ``cosmos jobs list``, ``cosmos agents list|revoke``: the
platform's state in readable tables (``cosmos agents join-token``: :mod:`cosmos.cli.join_tokens`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from rich.table import Table

from cosmos import errors
from cosmos.cli import target
from cosmos.cli.console import make_console
from cosmos.plato.v1 import events_pb2, workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime import process
from cosmos.security.context import Context
from cosmos.stratum.v1 import (
    agent_pb2,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    pool_service_pb2,
    pool_service_pb2_grpc,
)

PREFIX = "COSMOS"


def _name(enum: object, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]


def _time(stamp: object) -> str:
    seconds = getattr(stamp, "seconds", 0)
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if seconds else "-"  # type: ignore[attr-defined]


async def workflows_list(ctx: Context, limit: int) -> Table:
    async with ctx.channel("plato") as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        reply = await stub.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest(page_size=limit))
    table = Table(title="workflows", title_justify="left")
    for column in ("workflow", "definition", "state", "steps", "started", "reason"):
        table.add_column(column)
    for wf in reply.workflows:
        table.add_row(
            wf.workflow_id,
            f"{wf.definition_id} v{wf.definition_version}",
            _name(workflow_pb2.WorkflowState, wf.state, "WORKFLOW_STATE_"),
            str(len(wf.steps)),
            _time(wf.start_time),
            wf.failure_reason[:60],
        )
    return table


async def workflows_show(ctx: Context, workflow_id: str) -> list[Table]:
    async with ctx.channel("plato") as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        wf = (
            await stub.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id))
        ).workflow
        history = await stub.ListWorkflowEvents(
            workflow_service_pb2.ListWorkflowEventsRequest(workflow_id=workflow_id, page_size=1000)
        )
    steps = Table(
        title=f"{wf.workflow_id} ({_name(workflow_pb2.WorkflowState, wf.state, 'WORKFLOW_STATE_')})"
    )
    for column in ("step", "state", "attempt", "progress", "error"):
        steps.add_column(column)
    for step in wf.steps:
        steps.add_row(
            step.step_id,
            _name(workflow_pb2.StepState, step.state, "STEP_STATE_"),
            str(step.attempt),
            f"{step.progress.percent:.0f}%" if step.progress.percent else "",
            step.error[:60],
        )
    events = Table(title="history (last 30 events)")
    for column in ("#", "time", "event", "step", "detail"):
        events.add_column(column)
    for event in list(history.events)[-30:]:
        events.add_row(
            str(event.sequence),
            _time(event.event_time),
            _name(events_pb2.WorkflowEventType, event.type, "WORKFLOW_EVENT_TYPE_"),
            event.step_id,
            (event.error or event.rule)[:50],
        )
    return [steps, events]


async def workflows_cancel(ctx: Context, workflow_id: str) -> str:
    async with ctx.channel("plato") as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        await stub.CancelWorkflow(
            workflow_service_pb2.CancelWorkflowRequest(
                request_id=uuid.uuid4().hex, workflow_id=workflow_id, reason="cancelled from the CLI"
            )
        )
    return f"cancellation of {workflow_id} requested"


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


async def workflows_resume(
    ctx: Context,
    workflow_id: str,
    *,
    step: str = "",
    new_input: struct_pb2.Struct | None = None,
    request_id: str = "",
) -> str:
    """``retry`` (no ``step``) or ``reset --step``; a request id makes a repeated command a no-op."""
    request_id = request_id or uuid.uuid4().hex
    async with ctx.channel("plato") as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
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
    state = _name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_")
    return f"{workflow_id} {what}: {state}"


async def jobs_list(ctx: Context, limit: int) -> Table:
    async with ctx.channel("stratum") as channel:
        reply = await job_service_pb2_grpc.JobServiceStub(channel).ListJobs(
            job_service_pb2.ListJobsRequest(page_size=limit)
        )
    table = Table(title="jobs", title_justify="left")
    for column in ("job", "state", "agent", "attempt", "gpus", "progress", "command"):
        table.add_column(column)
    for job in list(reply.jobs)[-limit:]:
        table.add_row(
            job.job_id,
            _name(job_pb2.JobState, job.state, "JOB_STATE_"),
            job.agent_id or "-",
            str(job.attempt),
            ",".join(map(str, job.gpu_indices)) or "-",
            f"{job.progress.percent:.0f}%" if job.progress.percent else "",
            " ".join(job.spec.argv)[:50],
        )
    return table


async def agents_revoke(ctx: Context, agent_id: str) -> str:
    async with ctx.channel("stratum") as channel:
        await pool_service_pb2_grpc.PoolServiceStub(channel).RevokeAgent(
            pool_service_pb2.RevokeAgentRequest(
                request_id=uuid.uuid4().hex, agent_id=agent_id, reason="revoked from the CLI"
            )
        )
    return f"agent {agent_id} revoked: its stream is closed and it may not connect again"


async def agents_list(ctx: Context) -> Table:
    async with ctx.channel("stratum") as channel:
        reply = await pool_service_pb2_grpc.PoolServiceStub(channel).ListAgents(
            pool_service_pb2.ListAgentsRequest()
        )
    table = Table(title="agents", title_justify="left")
    for column in ("agent", "state", "cpus", "memory", "gpus", "runtimes", "last heartbeat"):
        table.add_column(column)
    for agent in reply.agents:
        inv = agent.inventory
        table.add_row(
            agent.agent_id,
            _name(agent_pb2.AgentState, agent.state, "AGENT_STATE_"),
            f"{inv.cpu_millis / 1000:g}",
            f"{inv.memory_bytes / (1 << 30):.1f} GiB",
            ", ".join(g.model for g in inv.gpus) or "-",
            ", ".join(inv.runtimes),
            _time(agent.last_heartbeat_time),
        )
    return table


def main(argv: Sequence[str] | None = None, *, noun: str = "") -> int:
    """Entry point of ``cosmos workflows|jobs|agents``."""
    p = argparse.ArgumentParser(prog=f"cosmos {noun}", description=f"Show the platform's {noun}.")
    verbs = {
        "workflows": ["list", "show", "cancel", "retry", "reset"],
        "jobs": ["list"],
        "agents": ["list", "revoke"],
    }[noun]
    p.add_argument("verb", choices=verbs, nargs="?", default="list")
    if noun == "agents":
        p.epilog = "cosmos agents join-token create|list|delete: tokens for new agents to join with"
    if noun == "workflows":
        p.epilog = (
            "retry: rerun a FAILED or CANCELLED workflow's steps that did not complete; reset --step "
            "NAME: rerun a finished workflow from a step (docs/plato.md, 'Retry and reset')"
        )
    p.add_argument(
        "id", nargs="?", default="", help="workflow id (show, cancel, retry, reset) or agent id (revoke)"
    )
    p.add_argument("--limit", type=int, default=50, help="rows at most")
    if noun == "workflows":
        p.add_argument(
            "--step", default="", help="reset: the step to rerun from (a step name of the definition)"
        )
        p.add_argument("--input", default="", help="retry, reset: new workflow input, JSON or @FILE")
        p.add_argument(
            "--request-id", default="", help="retry, reset: idempotency key (default: a new one per command)"
        )
    target.add_arguments(p, "plato", "stratum")
    args = p.parse_args(argv)
    console = make_console()
    try:
        if args.verb in ("show", "cancel", "revoke", "retry", "reset") and not args.id:
            p.error(f"{args.verb} needs an id")
        if noun == "workflows" and args.verb == "reset" and not args.step:
            p.error("reset needs --step NAME")
        if noun == "workflows" and args.verb != "reset" and args.step:
            p.error("--step is for reset")
        new_input = parse_input(args.input) if noun == "workflows" else None
        ctx = target.resolve(args, "plato", "stratum")
        if noun == "workflows" and args.verb == "list":
            console.print(asyncio.run(workflows_list(ctx, args.limit)))
        elif noun == "workflows" and args.verb == "show":
            for table in asyncio.run(workflows_show(ctx, args.id)):
                console.print(table)
        elif noun == "workflows" and args.verb in ("retry", "reset"):
            resumed = workflows_resume(
                ctx, args.id, step=args.step, new_input=new_input, request_id=args.request_id
            )
            console.print(asyncio.run(resumed))
        elif noun == "workflows":
            console.print(asyncio.run(workflows_cancel(ctx, args.id)))
        elif noun == "jobs":
            console.print(asyncio.run(jobs_list(ctx, args.limit)))
        elif args.verb == "revoke":
            console.print(asyncio.run(agents_revoke(ctx, args.id)))
        else:
            console.print(asyncio.run(agents_list(ctx)))
    except errors.ConfigError as exc:
        print(f"cosmos {noun}: {exc}", file=sys.stderr)
        return process.EXIT_CONFIG
    except grpc.aio.AioRpcError as exc:
        print(f"cosmos {noun}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return process.EXIT_FAILED
    return process.EXIT_OK


def workflows(argv: Sequence[str] | None = None) -> int:
    """``cosmos workflows``."""
    return main(argv, noun="workflows")


def jobs(argv: Sequence[str] | None = None) -> int:
    """``cosmos jobs``."""
    return main(argv, noun="jobs")


def agents(argv: Sequence[str] | None = None) -> int:
    """``cosmos agents``; ``cosmos agents join-token ...`` is :mod:`cosmos.cli.join_tokens`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["join-token"]:
        from cosmos.cli import join_tokens

        return join_tokens.main(args[1:])
    return main(args, noun="agents")
