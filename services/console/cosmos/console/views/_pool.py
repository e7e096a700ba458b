"""The jobs pages (the list, one job, its live events), the pool of agents, and workflow definitions."""

from __future__ import annotations

from collections.abc import Sequence

from cosmos.common.v1 import access_pb2
from cosmos.console.views._html import (
    Page,
    action_button,
    agent_state,
    badge,
    enum_name,
    h,
    job_state,
    layout,
    may,
    percent,
    progress_bar,
    q,
    stamp,
    table,
)
from cosmos.plato.v1 import definition_pb2
from cosmos.stratum.v1 import agent_pb2, job_pb2, pool_service_pb2

P = access_pb2


# -- jobs --------------------------------------------------------------------------------------------


def jobs_page(page: Page, jobs: Sequence[job_pb2.Job], next_token: str) -> str:
    rows = [
        [
            f'<a href="/jobs/{q(j.job_id)}">{h(j.job_id)}</a>',
            badge(job_state(j.state)),
            h(j.agent_id or "-"),
            h(",".join(map(str, j.gpu_indices)) or "-"),
            str(j.attempt),
            progress_bar(percent(j.progress), "job"),
            h(j.spec.display_name or " ".join(j.spec.argv)[:60]),
        ]
        for j in jobs
    ]
    more = f'<p><a class="more" href="/jobs?page={h(q(next_token))}">Next page</a></p>' if next_token else ""
    headers = ("job", "state", "agent", "gpus", "attempt", "progress", "what")
    return layout(page, table(headers, rows, empty="No jobs yet.") + more)


def job_page(page: Page, j: job_pb2.Job) -> str:
    gpus = ",".join(map(str, j.gpu_indices)) or "-"
    stderr = j.result.stderr_tail or ("(empty)" if j.result.ByteSize() else "(no result yet)")
    facts = (
        f'<dl class="facts" data-live="/jobs/{q(j.job_id)}/events">'
        f"<dt>State</dt><dd data-job-state>{badge(job_state(j.state))}</dd>"
        f"<dt>Attempt</dt><dd data-job-attempt>{j.attempt}</dd>"
        f"<dt>Placement</dt><dd>{h(j.agent_id or '-')} gpus {h(gpus)}</dd>"
        f"<dt>Progress</dt><dd>{progress_bar(percent(j.progress), 'job')}</dd>"
        f"<dt>Tenant</dt><dd>{h(j.spec.tenant)}</dd>"
        f"<dt>Created</dt><dd>{h(stamp(j.create_time))}</dd>"
        f"<dt>Started</dt><dd>{h(stamp(j.start_time))}</dd>"
        f"<dt>Ended</dt><dd>{h(stamp(j.end_time))}</dd>"
        + (f"<dt>Reason</dt><dd>{h(j.failure_reason)}</dd>" if j.failure_reason else "")
        + "</dl>"
    )
    body = (
        facts
        + "<h2>Command</h2>"
        + f"<pre>{h(' '.join(j.spec.argv))}</pre>"
        + "<h2>Log (live tail, last 500 lines)</h2>"
        + '<pre class="log" data-log aria-live="off"></pre>'
        + "<h2>End of stderr (from the result)</h2>"
        + f'<pre class="log">{h(stderr)}</pre>'
    )
    return layout(page, body)


def job_event(event: job_pb2.JobEvent) -> tuple[str, dict[str, object]] | None:
    """A WatchJob event as an SSE event name and data: ``job`` (state, attempt, progress) or ``log``."""
    which = event.WhichOneof("event")
    if which == "state":
        return "job", {"state": job_state(event.state), "attempt": event.attempt}
    if which == "progress":
        return "job", {"percent": round(percent(event.progress), 1), "attempt": event.attempt}
    if which == "log":
        stream = enum_name(job_pb2.LogStream, event.log.stream, "LOG_STREAM_")
        return "log", {"stream": stream, "text": event.log.text, "attempt": event.attempt}
    return None


# -- pool --------------------------------------------------------------------------------------------


def pool_page(page: Page, agents: Sequence[agent_pb2.Agent], stats: pool_service_pb2.PoolStats | None) -> str:
    user = page.user
    admin = user is not None and may(user, P.PERMISSION_POOL_ADMIN)
    rows = []
    for a in agents:
        inv = a.inventory
        shares = {g.index: g.allocated_share for g in a.gpu_allocations} if a.gpu_allocations else {}
        gpus = ", ".join(f"{g.model} ({shares.get(g.index, 0.0):.2f})" for g in inv.gpus) or "-"
        actions = ""
        if admin:
            base = f"/pool/{q(a.agent_id)}"
            state = agent_state(a.state)
            if state == "cordoned":
                actions = action_button(f"{base}/uncordon", "Uncordon", page.csrf)
            else:
                actions = action_button(f"{base}/cordon", "Cordon", page.csrf)
            if state != "draining":
                actions += action_button(f"{base}/drain", "Drain", page.csrf, danger=True)
        rows.append(
            [
                h(a.agent_id),
                badge(agent_state(a.state)),
                h(a.hostname),
                f"{inv.cpu_millis / 1000:g}",
                f"{inv.memory_bytes / (1 << 30):.1f} GiB",
                h(gpus),
                str(len(a.running_job_ids)),
                h(stamp(a.last_heartbeat_time)),
                actions,
            ]
        )
    summary = ""
    if stats is not None:
        gib = 1 << 30
        summary = (
            '<dl class="facts">'
            f"<dt>Agents</dt><dd>{stats.agents_ready} ready of {stats.agents_total}</dd>"
            f"<dt>Jobs</dt><dd>{stats.running_jobs} running, {stats.queued_jobs} queued</dd>"
            f"<dt>CPU</dt><dd>{stats.allocated_cpu_millis / 1000:g} of "
            f"{stats.total_cpu_millis / 1000:g} cores allocated</dd>"
            f"<dt>Memory</dt><dd>{stats.allocated_memory_bytes / gib:.1f} of "
            f"{stats.total_memory_bytes / gib:.1f} GiB allocated</dd>"
            f"<dt>GPUs</dt><dd>{stats.allocated_gpus:.2f} of {stats.total_gpus} allocated</dd>"
            + "".join(
                f"<dt>{h(m.model)}</dt><dd>{m.allocated:.2f} of {m.total} allocated</dd>"
                for m in stats.gpus_by_model
            )
            + f"<dt>GPU fragmentation</dt><dd>{stats.gpu_fragmentation:.2f} "
            "(share of free GPU capacity on partly used devices)</dd>" + "</dl>"
        )
    headers = ("agent", "state", "host", "cpus", "memory", "gpus (allocated share)", "jobs", "heartbeat", "")
    return layout(page, summary + table(headers, rows, empty="No agents connected."))


# -- definitions -------------------------------------------------------------------------------------


def definitions_page(page: Page, definitions: Sequence[definition_pb2.WorkflowDefinition]) -> str:
    rows = [
        [
            f'<a href="/definitions/{q(d.definition_id)}">{h(d.definition_id)}</a>',
            f"v{d.version}",
            str(len(d.step_names)),
            h(stamp(d.create_time)),
        ]
        for d in definitions
    ]
    return layout(page, table(("definition", "version", "steps", "registered"), rows))


def definition_page(page: Page, versions: Sequence[definition_pb2.WorkflowDefinition]) -> str:
    parts: list[str] = []
    for d in sorted(versions, key=lambda d: -d.version):
        parts.append(
            f"<details{' open' if not parts else ''}><summary>v{d.version} · {h(stamp(d.create_time))} · "
            f"{h(d.content_hash[:12])}</summary><pre>{h(d.source_yaml)}</pre></details>"
        )
    return layout(page, "".join(parts) or '<p class="note">No versions.</p>')
