"""``cosmos jobs list|show|logs [-f]|cancel``: Stratum's jobs and their output.

The command line (flags, checks, errors) is :mod:`cosmos.cli.platform`; this module holds the calls
to Stratum and the tables they print.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import uuid
from collections.abc import Sequence

from rich.table import Table

from cosmos.cli import output
from cosmos.cli.lookup import collect, exists, parse_since, state_name, unique, when
from cosmos.security.context import Context
from cosmos.stratum.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

JS = job_pb2.JobState


async def list_jobs(
    stub: job_service_pb2_grpc.JobServiceAsyncStub,
    *,
    state: str = "",
    tenant: str = "",
    agent: str = "",
    since: dt.datetime | None = None,
    limit: int = 50,
) -> list[job_pb2.Job]:
    """Jobs matching the filters, newest first."""
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
    """The job id ``text`` names: itself, or the one job whose id starts with it."""
    if await exists(stub.GetJob(job_service_pb2.GetJobRequest(job_id=text))):
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
                state_name(JS, job.state, "JOB_STATE_"),
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
        ("state", state_name(JS, job.state, "JOB_STATE_")),
        ("tenant", job.spec.tenant or "default"),
        ("agent", job.agent_id or "-"),
        ("attempt", str(job.attempt)),
        ("gpus", ",".join(map(str, job.gpu_indices)) or "-"),
        ("progress", f"{job.progress.percent:.0f}%" if job.progress.percent else "-"),
        ("command", " ".join(job.spec.argv)),
        ("created", when(job.create_time)),
        ("started", when(job.start_time)),
        ("ended", when(job.end_time)),
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


async def command(args: argparse.Namespace, ctx: Context) -> str | None:
    """Run the verb of ``cosmos jobs``; what to print for people, if anything is left to."""
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
        return output.said(args.output, reply.job, f"cancellation of {job_id} requested")
