"""The workflow pages: the filtered list, one workflow (facts, actions, steps, timeline, history),
and what its live updates carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from cosmos.common.v1 import access_pb2
from cosmos.console.views._charts import attempt_spans, dag_svg, summary_state, timeline
from cosmos.console.views._html import (
    Page,
    action_button,
    badge,
    csrf_field,
    enum_name,
    h,
    layout,
    may,
    message,
    q,
    stamp,
    step_state,
    struct_text,
    table,
    wf_state,
)
from cosmos.plato.v1 import definition_pb2, events_pb2, workflow_pb2

P = access_pb2


# -- workflows ---------------------------------------------------------------------------------------

WORKFLOW_STATES = [
    wf_state(v) for v in workflow_pb2.WorkflowState.values() if v != workflow_pb2.WORKFLOW_STATE_UNSPECIFIED
]


SINCE_CHOICES = {"15m": 15 * 60, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
"""The workflow list's time filter: created within this long before now (seconds)."""


@dataclass(frozen=True)
class WorkflowFilters:
    """The workflow list's filters as the query string gives them (unknown values read as "any")."""

    state: str = ""
    definition: str = ""
    tenant: str = ""
    since: str = ""
    search: str = ""

    @classmethod
    def of(cls, query: Any) -> WorkflowFilters:
        state = query.get("state", "")
        since = query.get("since", "")
        return cls(
            state=state if state in WORKFLOW_STATES else "",
            definition=query.get("definition", "").strip(),
            tenant=query.get("tenant", "").strip(),
            since=since if since in SINCE_CHOICES else "",
            search=query.get("id", "").strip(),
        )

    def state_value(self) -> workflow_pb2.WorkflowState.ValueType:
        if not self.state:
            return workflow_pb2.WORKFLOW_STATE_UNSPECIFIED
        return workflow_pb2.WorkflowState.Value(f"WORKFLOW_STATE_{self.state.upper()}")

    def params(self) -> dict[str, str]:
        """The filters as query parameters (those set)."""
        given = {
            "state": self.state,
            "definition": self.definition,
            "tenant": self.tenant,
            "since": self.since,
            "id": self.search,
        }
        return {k: v for k, v in given.items() if v}


def _select(name: str, label: str, choices: Iterable[str], chosen: str) -> str:
    options = "".join(
        f'<option value="{h(c)}"{" selected" if c == chosen else ""}>{h(c)}</option>' for c in choices
    )
    return f'<label>{label} <select name="{name}"><option value="">any</option>{options}</select></label>'


def workflows_page(
    page: Page, workflows: Sequence[workflow_pb2.Workflow], shown: WorkflowFilters, *, next_token: str
) -> str:
    filters = (
        '<form class="filters" method="get" action="/workflows" role="search">'
        + _select("state", "State", WORKFLOW_STATES, shown.state)
        + f'<label>Definition <input name="definition" value="{h(shown.definition)}"></label>'
        + f'<label>Tenant <input name="tenant" value="{h(shown.tenant)}"></label>'
        + _select("since", "Created within", SINCE_CHOICES, shown.since)
        + f'<label>Workflow id <input name="id" value="{h(shown.search)}" placeholder="id or prefix"></label>'
        + '<button type="submit">Filter</button></form>'
    )
    rows = [
        [
            f'<a href="/workflows/{q(wf.workflow_id)}">{h(wf.workflow_id)}</a>',
            f"{h(wf.definition_id)} v{wf.definition_version}",
            badge(wf_state(wf.state)),
            h(wf.tenant),
            str(len(wf.steps)),
            h(stamp(wf.start_time)),
            h(wf.failure_reason[:80]),
        ]
        for wf in workflows
    ]
    more = ""
    if next_token:
        params = urlencode({**shown.params(), "page": next_token})
        more = f'<p><a class="more" href="/workflows?{h(params)}">Next page</a></p>'
    headers = ("workflow", "definition", "state", "tenant", "steps", "started", "reason")
    return layout(page, filters + table(headers, rows, empty="No workflows match.") + more)


def workflow_page(
    page: Page,
    wf: workflow_pb2.Workflow,
    events: Sequence[events_pb2.WorkflowEvent],
    definition: definition_pb2.WorkflowDefinition | None,
    notice: str = "",
) -> str:
    user = page.user
    state = wf_state(wf.state)
    buttons = []
    if user is not None and may(user, P.PERMISSION_WORKFLOWS_WRITE):
        base = f"/workflows/{q(wf.workflow_id)}"
        if state in ("running", "pending"):
            buttons.append(action_button(f"{base}/cancel", "Cancel workflow", page.csrf, danger=True))
        if state in ("failed", "cancelled"):
            buttons.append(action_button(f"{base}/retry", "Retry", page.csrf))
        if state in ("completed", "failed", "cancelled"):
            names = sorted({s.step_name for s in wf.steps})
            options = "".join(f"<option>{h(n)}</option>" for n in names)
            buttons.append(
                f'<form class="inline" method="post" action="{h(base)}/reset">{csrf_field(page.csrf)}'
                f'<label>Reset from <select name="step">{options}</select></label>'
                '<button type="submit">Reset</button></form>'
            )
    summary = (
        f'<dl class="facts" data-live="/workflows/{q(wf.workflow_id)}/events">'
        f"<dt>State</dt><dd data-workflow-state>{badge(state)}</dd>"
        f'<dt>Definition</dt><dd><a href="/definitions/{q(wf.definition_id)}">{h(wf.definition_id)}</a>'
        f" v{wf.definition_version}</dd>"
        f"<dt>Tenant</dt><dd>{h(wf.tenant)}</dd>"
        f"<dt>Started</dt><dd>{h(stamp(wf.start_time))}</dd>"
        f"<dt>Closed</dt><dd>{h(stamp(wf.close_time))}</dd>"
        + (f"<dt>Reason</dt><dd>{h(wf.failure_reason)}</dd>" if wf.failure_reason else "")
        + "</dl>"
    )
    step_rows = [
        [
            h(s.step_id),
            f'<span data-step-id="{h(s.step_id)}">{badge(step_state(s.state))}</span>',
            str(s.attempt),
            f"{s.progress.percent:.0f}%" if s.progress.percent else "",
            f'<a href="/jobs/{q(s.job_id)}">{h(s.job_id)}</a>' if s.job_id else "",
            h(s.error[:120]),
        ]
        for s in wf.steps
    ]
    event_rows = [
        [
            str(e.sequence),
            h(stamp(e.event_time)),
            h(enum_name(events_pb2.WorkflowEventType, e.type, "WORKFLOW_EVENT_TYPE_")),
            h(e.step_id),
            h((e.error or e.rule)[:120]),
        ]
        for e in events
    ]
    body = (
        (message(notice) if notice else "")
        + summary
        + (f'<div class="actions">{"".join(buttons)}</div>' if buttons else "")
        + "<h2>Steps</h2>"
        + f'<div class="scroll">{dag_svg(wf.steps, definition)}</div>'
        + table(("step", "state", "attempt", "progress", "job", "error"), step_rows)
        + "<h2>Timeline</h2>"
        + f'<div class="scroll">{timeline(attempt_spans(events, wf.steps))}</div>'
        + "<h2>Input</h2>"
        + f"<pre>{h(struct_text(wf.input))}</pre>"
        + "<h2>Output</h2>"
        + f"<pre>{h(struct_text(wf.output))}</pre>"
        + f"<h2>History ({len(events)} events)</h2>"
        + table(("#", "time", "event", "step", "detail"), event_rows)
    )
    return layout(page, body)


def workflow_update(wf: workflow_pb2.Workflow) -> dict[str, object]:
    """What a live update of the workflow page carries (JSON for the SSE ``workflow`` event)."""
    by_name: dict[str, list[str]] = {}
    for s in wf.steps:
        by_name.setdefault(s.step_name, []).append(step_state(s.state))
    return {
        "state": wf_state(wf.state),
        "nodes": {name: summary_state(states) for name, states in by_name.items()},
        "steps": {s.step_id: step_state(s.state) for s in wf.steps},
    }
