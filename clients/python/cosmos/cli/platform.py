"""``cosmos workflows|jobs|agents``: the platform's state as tables for people or JSON/YAML for scripts.

* ``cosmos workflows list|show|history|cancel|retry|reset``
* ``cosmos jobs list|show|logs [-f]|cancel``
* ``cosmos agents list|show|cordon|uncordon|drain|revoke`` (``join-token``: :mod:`cosmos.cli.join_tokens`)

Every command takes ``-o table|json|yaml``; lists take ``--state``, ``--tenant``, ``--since`` (and
``--definition`` for workflows, ``--agent`` for jobs), ``--limit N`` rows or ``--all`` (every page).
Ids are printed whole; an id argument may be any unique prefix of one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from rich.table import Table

from cosmos import errors
from cosmos.cli import output, target
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
WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
JS = job_pb2.JobState
T = TypeVar("T", bound=Message)

VERBS = {
    "workflows": ["list", "show", "history", "cancel", "retry", "reset"],
    "jobs": ["list", "show", "logs", "cancel"],
    "agents": ["list", "show", "cordon", "uncordon", "drain", "revoke"],
}
SERVICE = {"workflows": "plato", "jobs": "stratum", "agents": "stratum"}
NEEDS_ID = {"show", "history", "cancel", "retry", "reset", "logs", "cordon", "uncordon", "drain", "revoke"}
STATES = {
    "workflows": [n.removeprefix("WORKFLOW_STATE_").lower() for n in WS.keys()[1:]],
    "jobs": [n.removeprefix("JOB_STATE_").lower() for n in JS.keys()[1:]],
    "agents": [n.removeprefix("AGENT_STATE_").lower() for n in agent_pb2.AgentState.keys()[1:]],
}


def _name(enum: object, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]


def _time(stamp: timestamp_pb2.Timestamp) -> str:
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if stamp.seconds else "-"


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime | None:
    """``--since``: a duration back from now (``90s``, ``15m``, ``2h``, ``1d``) or an ISO time."""
    if not text:
        return None
    now = now or dt.datetime.now(dt.UTC)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return now - dt.timedelta(seconds=float(match.group(1)) * unit)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise errors.ConfigError(
            f"--since {text!r}: expected a duration (30s, 15m, 2h, 1d) or an ISO time (2026-01-31T12:00)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _after(stamp: timestamp_pb2.Timestamp, since: dt.datetime | None) -> bool:
    return since is None or (bool(stamp.seconds) and stamp.ToDatetime(dt.UTC) >= since)


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


# -- paging and ids ---------------------------------------------------------------------------------


async def pages(fetch: Callable[[str], Awaitable[tuple[Sequence[T], str]]]) -> AsyncIterator[Sequence[T]]:
    """Every page of a list call, ``fetch(page_token) -> (items, next_page_token)``."""
    token = ""
    while True:
        items, token = await fetch(token)
        yield items
        if not token:
            return


async def collect(
    fetch: Callable[[str], Awaitable[tuple[Sequence[T], str]]],
    keep: Callable[[T], bool],
    limit: int,
    stamp: Callable[[T], timestamp_pb2.Timestamp] | None = None,
    since: dt.datetime | None = None,
) -> list[T]:
    """Items ``keep`` accepts, newest first, ``limit`` at most (0: all); lists are newest first, so
    a page entirely older than ``since`` ends the walk."""
    found: list[T] = []
    async for page in pages(fetch):
        for item in page:
            if keep(item) and (stamp is None or _after(stamp(item), since)):
                found.append(item)
                if limit and len(found) >= limit:
                    return found
        if (
            stamp is not None
            and since is not None
            and page
            and not any(_after(stamp(i), since) for i in page)
        ):
            return found
    return found


def unique(text: str, ids: Sequence[str], what: str) -> str:
    """The one id of ``ids`` that is ``text`` or starts with it."""
    if text in ids:
        return text
    matches = [i for i in ids if i.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise errors.ConfigError(f"no {what} with id or id prefix {text!r}")
    shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
    raise errors.ConfigError(f"{what} id prefix {text!r} is ambiguous: {shown}")


async def _exists(call: Awaitable[Any]) -> bool:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return False
        raise
    return True


# -- workflows --------------------------------------------------------------------------------------


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
    if await _exists(stub.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(workflow_id=text))):
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
                _name(WS, wf.state, "WORKFLOW_STATE_"),
                wf.tenant or "-",
                str(len(wf.steps)),
                _time(wf.start_time),
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
    state = _name(WS, wf.state, "WORKFLOW_STATE_")
    t = output.table(
        f"{wf.workflow_id} ({wf.definition_id} v{wf.definition_version}, {state})",
        ("step", "state", "attempt", "progress", "error"),
        ids=["step"],
    )
    output.fit_ids(
        t,
        [
            [s.step_id, _name(SS, s.state, "STEP_STATE_"), str(s.attempt), step_progress(s), s.error[:80]]
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
                _time(e.event_time),
                _name(events_pb2.WorkflowEventType, e.type, "WORKFLOW_EVENT_TYPE_"),
                e.step_id,
                (e.error or e.rule)[:80],
            ]
            for e in events
        ],
    )
    return t


SHOW_EVENTS = 30


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


async def workflows_command(args: argparse.Namespace, ctx: Context) -> str | None:
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
            wf = (
                await stub.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id))
            ).workflow
            events = await workflow_history(stub, workflow_id)
            if args.verb == "history":
                history = {"workflowId": workflow_id, "events": [output.to_data(e) for e in events]}
                title = f"history of {workflow_id} ({len(events)} events)"
                output.emit(history, args.output, lambda: [events_table(events, title)])
                return None
            shown = events[-SHOW_EVENTS:]
            title = f"history (last {len(shown)} of {len(events)} events)"

            def tables() -> list[Table | str]:
                out: list[Table | str] = [steps_table(wf), *no_worker_notices(wf), events_table(shown, title)]
                if len(events) > len(shown):
                    out.append(f"every event: cosmos workflows history {workflow_id}")
                return out

            output.emit({"workflow": output.to_data(wf)}, args.output, tables)
            return None
        if args.verb == "cancel":
            reply = await stub.CancelWorkflow(
                workflow_service_pb2.CancelWorkflowRequest(
                    request_id=uuid.uuid4().hex, workflow_id=workflow_id, reason="cancelled from the CLI"
                )
            )
            return _said(args, reply.workflow, f"cancellation of {workflow_id} requested")
        resumed = await _resume(stub, workflow_id, args.step, parse_input(args.input), args.request_id)
        return _said(args, resumed[0], resumed[1])


def _said(args: argparse.Namespace, message: Message, text: str) -> str | None:
    """What an action prints: a sentence for people, else the resulting object."""
    if args.output == "table":
        return text
    output.emit(output.to_data(message), args.output, lambda: [])
    return None


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
    return workflow, f"{workflow_id} {what}: {_name(WS, workflow.state, 'WORKFLOW_STATE_')}"


async def workflows_resume(
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


# -- jobs -------------------------------------------------------------------------------------------


async def list_jobs(
    stub: job_service_pb2_grpc.JobServiceAsyncStub,
    *,
    state: str = "",
    tenant: str = "",
    agent: str = "",
    since: dt.datetime | None = None,
    limit: int = 50,
) -> list[job_pb2.Job]:
    wanted = JS.Value(f"JOB_STATE_{state.upper()}") if state else JS.JOB_STATE_UNSPECIFIED

    async def fetch(token: str) -> tuple[Sequence[job_pb2.Job], str]:
        request = job_service_pb2.ListJobsRequest(
            page_size=min(limit, 1000) if limit else 1000,
            page_token=token,
            state=wanted,
            tenant=tenant,
            agent_id=agent,
        )
        reply = await stub.ListJobs(request)
        return reply.jobs, reply.next_page_token

    return await collect(fetch, lambda _: True, limit, lambda job: job.create_time, since)


async def resolve_job(stub: job_service_pb2_grpc.JobServiceAsyncStub, text: str) -> str:
    if await _exists(stub.GetJob(job_service_pb2.GetJobRequest(job_id=text))):
        return text
    return unique(text, [job.job_id for job in await list_jobs(stub, limit=0)], "job")


def jobs_table(jobs: Sequence[job_pb2.Job]) -> Table:
    t = output.table(
        "jobs",
        ("job", "state", "agent", "tenant", "attempt", "gpus", "progress", "command"),
        ids=["job"],
        cut=["command"],
    )
    output.fit_ids(
        t,
        [
            [
                job.job_id,
                _name(JS, job.state, "JOB_STATE_"),
                job.agent_id or "-",
                job.spec.tenant or "default",
                str(job.attempt),
                ",".join(map(str, job.gpu_indices)) or "-",
                f"{job.progress.percent:.0f}%"
                if job.state == JS.JOB_STATE_RUNNING and job.progress.percent
                else "",
                " ".join(job.spec.argv)[:60],
            ]
            for job in jobs
        ],
    )
    return t


def job_table(job: job_pb2.Job) -> Table:
    t = output.table(f"job {job.job_id}", ("field", "value"))
    rows = [
        ("state", _name(JS, job.state, "JOB_STATE_")),
        ("tenant", job.spec.tenant or "default"),
        ("agent", job.agent_id or "-"),
        ("attempt", str(job.attempt)),
        ("gpus", ",".join(map(str, job.gpu_indices)) or "-"),
        ("progress", f"{job.progress.percent:.0f}%" if job.progress.percent else "-"),
        ("command", " ".join(job.spec.argv)),
        ("created", _time(job.create_time)),
        ("started", _time(job.start_time)),
        ("ended", _time(job.end_time)),
    ]
    if job.HasField("result"):
        rows.append(("exit code", str(job.result.exit_code)))
    if job.failure_reason:
        rows.append(("failure", job.failure_reason))
    for row in rows:
        t.add_row(*row)
    return t


async def job_logs(
    stub: job_service_pb2_grpc.JobServiceAsyncStub, job_id: str, follow: bool, fmt: str
) -> None:
    """Print a job's output lines; ``follow``: until the job ends, else what is stored now."""
    job = (await stub.GetJob(job_service_pb2.GetJobRequest(job_id=job_id))).job
    last = job.last_sequence
    if not follow and last == 0:
        return
    async for reply in stub.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id, from_sequence=1)):
        event = reply.event
        if event.WhichOneof("event") == "log":
            if fmt == "table":
                stream = sys.stderr if event.log.stream == job_pb2.LOG_STREAM_STDERR else sys.stdout
                print(event.log.text, file=stream, flush=True)
            else:
                print(json.dumps(output.to_data(event)), flush=True)
        if not follow and event.sequence >= last:
            return


async def jobs_command(args: argparse.Namespace, ctx: Context) -> str | None:
    async with ctx.channel("stratum") as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        if args.verb == "list":
            found = await list_jobs(
                stub,
                state=args.state,
                tenant=args.tenant,
                agent=args.agent,
                since=parse_since(args.since),
                limit=0 if args.all else args.limit,
            )
            output.emit(
                {"jobs": [output.to_data(j) for j in found]}, args.output, lambda: [jobs_table(found)]
            )
            return None
        job_id = await resolve_job(stub, args.id)
        if args.verb == "show":
            job = (await stub.GetJob(job_service_pb2.GetJobRequest(job_id=job_id))).job
            output.emit({"job": output.to_data(job)}, args.output, lambda: [job_table(job)])
            return None
        if args.verb == "logs":
            await job_logs(stub, job_id, args.follow, args.output)
            return None
        reply = await stub.CancelJob(
            job_service_pb2.CancelJobRequest(
                request_id=uuid.uuid4().hex, job_id=job_id, reason="cancelled from the CLI"
            )
        )
        return _said(args, reply.job, f"cancellation of {job_id} requested")


# -- agents -----------------------------------------------------------------------------------------


def agents_table(agents: Sequence[agent_pb2.Agent]) -> Table:
    t = output.table(
        "agents",
        ("agent", "state", "cpus", "memory", "gpus", "jobs", "runtimes", "last heartbeat"),
        ids=["agent"],
    )
    output.fit_ids(
        t,
        [
            [
                agent.agent_id,
                _name(agent_pb2.AgentState, agent.state, "AGENT_STATE_"),
                f"{agent.inventory.cpu_millis / 1000:g}",
                f"{agent.inventory.memory_bytes / (1 << 30):.1f} GiB",
                ", ".join(g.model for g in agent.inventory.gpus) or "-",
                str(len(agent.running_job_ids)),
                ", ".join(agent.inventory.runtimes),
                _time(agent.last_heartbeat_time),
            ]
            for agent in agents
        ],
    )
    return t


async def agents_command(args: argparse.Namespace, ctx: Context) -> str | None:
    async with ctx.channel("stratum") as channel:
        stub = pool_service_pb2_grpc.PoolServiceStub(channel)
        agents = list((await stub.ListAgents(pool_service_pb2.ListAgentsRequest())).agents)
        if args.verb == "list":
            since = parse_since(args.since)
            found = [
                a
                for a in agents
                if (not args.state or _name(agent_pb2.AgentState, a.state, "AGENT_STATE_") == args.state)
                and _after(a.connect_time, since)
            ]
            found = found if args.all else found[: args.limit]
            output.emit(
                {"agents": [output.to_data(a) for a in found]}, args.output, lambda: [agents_table(found)]
            )
            return None
        agent_id = unique(args.id, [a.agent_id for a in agents], "agent")
        request_id = uuid.uuid4().hex
        reason = f"{args.verb} from the CLI"
        if args.verb == "show":
            agent = next(a for a in agents if a.agent_id == agent_id)
            output.emit({"agent": output.to_data(agent)}, args.output, lambda: [agents_table([agent])])
            return None
        if args.verb == "cordon":
            reply: Any = await stub.CordonAgent(
                pool_service_pb2.CordonAgentRequest(request_id=request_id, agent_id=agent_id, reason=reason)
            )
            text = f"agent {agent_id} cordoned: no new jobs are placed on it"
        elif args.verb == "uncordon":
            reply = await stub.UncordonAgent(
                pool_service_pb2.UncordonAgentRequest(request_id=request_id, agent_id=agent_id)
            )
            text = f"agent {agent_id} uncordoned: it takes new jobs again"
        elif args.verb == "drain":
            reply = await stub.DrainAgent(
                pool_service_pb2.DrainAgentRequest(request_id=request_id, agent_id=agent_id, reason=reason)
            )
            text = f"agent {agent_id} draining: no new jobs, its running jobs finish"
        else:
            reply = await stub.RevokeAgent(
                pool_service_pb2.RevokeAgentRequest(
                    request_id=request_id, agent_id=agent_id, reason="revoked from the CLI"
                )
            )
            text = f"agent {agent_id} revoked: its stream is closed and it may not connect again"
        if args.output == "table":
            return text
        output.emit(output.to_data(reply), args.output, lambda: [])
        return None


# -- the command line -------------------------------------------------------------------------------


def parser(noun: str) -> argparse.ArgumentParser:
    """Flags of ``cosmos <noun>``."""
    p = argparse.ArgumentParser(prog=f"cosmos {noun}", description=f"Show and act on the platform's {noun}.")
    p.add_argument("verb", choices=VERBS[noun], nargs="?", default="list")
    p.add_argument("id", nargs="?", default="", help=f"{noun[:-1]} id, or a unique prefix of one")
    output.add_output_argument(p)
    p.add_argument("--limit", type=int, default=50, help="list: rows at most (default 50)")
    p.add_argument("--all", action="store_true", help="list: every row, page after page")
    p.add_argument("--state", default="", choices=["", *STATES[noun]], metavar="STATE",
                   help=f"list: only in this state ({', '.join(STATES[noun])})")  # fmt: skip
    p.add_argument("--since", default="", help="list: only newer than a duration (15m, 2h, 1d) or ISO time")
    if noun in ("workflows", "jobs"):
        p.add_argument("--tenant", default="", help="list: only of this tenant")
    if noun == "workflows":
        p.add_argument("--definition", default="", help="list: only runs of this definition id")
        p.add_argument(
            "--step", default="", help="reset: the step to rerun from (a step name of the definition)"
        )
        p.add_argument("--input", default="", help="retry, reset: new workflow input, JSON or @FILE")
        p.add_argument("--request-id", default="", help="retry, reset: idempotency key (default: a new one)")
        p.epilog = (
            "history: every event of a workflow; retry: rerun a FAILED or CANCELLED workflow's steps that "
            "did not complete; reset --step NAME: rerun a finished workflow from a step (docs/plato.md)"
        )
    if noun == "jobs":
        p.add_argument("--agent", default="", help="list: only jobs placed on this agent")
        p.add_argument("-f", "--follow", action="store_true", help="logs: keep printing until the job ends")
    if noun == "agents":
        p.epilog = "cosmos agents join-token create|list|delete: tokens for new agents to join with"
    target.add_arguments(p, SERVICE[noun])
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace, Context], Coroutine[Any, Any, str | None]]] = {
    "workflows": workflows_command,
    "jobs": jobs_command,
    "agents": agents_command,
}


def main(argv: Sequence[str] | None = None, *, noun: str = "") -> int:
    """Entry point of ``cosmos workflows|jobs|agents``."""
    p = parser(noun)
    args = p.parse_args(argv)
    if args.verb in NEEDS_ID and not args.id:
        p.error(f"{args.verb} needs a {noun[:-1]} id")
    if args.verb == "list" and args.id:
        p.error(f"list takes no id (got {args.id!r}); did you mean `cosmos {noun} show {args.id}`?")
    if args.limit < 1:
        p.error("--limit must be 1 or more (--all: every row)")
    if noun == "workflows" and args.verb == "reset" and not args.step:
        p.error("reset needs --step NAME")
    if noun == "workflows" and args.verb != "reset" and args.step:
        p.error("--step is for reset")
    if noun == "jobs" and args.follow and args.verb != "logs":
        p.error("--follow is for logs")
    service = SERVICE[noun]
    address = ""
    try:
        if noun == "workflows":
            parse_input(args.input)
        parse_since(args.since)
        ctx = target.resolve(args, service)
        address = ctx.endpoint(service)
        said: str | None = asyncio.run(COMMANDS[noun](args, ctx))
        if said:
            print(said)
    except errors.ConfigError as exc:
        output.fail(noun, str(exc))
        return process.EXIT_CONFIG
    except grpc.aio.AioRpcError as exc:
        output.fail(noun, output.rpc_error(exc, service, address))
        return process.EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return process.EXIT_OK
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
