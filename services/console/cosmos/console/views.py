"""The console's pages as HTML: pure functions of protobuf messages, no I/O (unit-tested directly).

Every value reaches the page through :func:`h` (HTML-escaped); nothing is inline script or inline
style, so the Content-Security-Policy can forbid both. Live parts carry ``data-*`` attributes that
``static/console.js`` updates from the server-sent events.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import yaml
from google.protobuf import json_format, struct_pb2

from cosmos.common.v1 import access_pb2
from cosmos.optimus.v1 import encode_pb2
from cosmos.plato.v1 import definition_pb2, events_pb2, workflow_pb2
from cosmos.security.principals import Principal
from cosmos.stratum.v1 import agent_pb2, job_pb2, pool_service_pb2

P = access_pb2


def h(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def q(value: str) -> str:
    """``value`` as one URL path segment."""
    return quote(value, safe="")


def enum_name(enum: object, value: int, prefix: str) -> str:
    """``WORKFLOW_STATE_RUNNING`` -> ``running``."""
    try:
        name = str(enum.Name(value))  # type: ignore[attr-defined]
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def wf_state(value: int) -> str:
    return enum_name(workflow_pb2.WorkflowState, value, "WORKFLOW_STATE_")


def step_state(value: int) -> str:
    return enum_name(workflow_pb2.StepState, value, "STEP_STATE_")


def encode_state(value: int) -> str:
    return enum_name(encode_pb2.EncodeState, value, "ENCODE_STATE_")


def job_state(value: int) -> str:
    return enum_name(job_pb2.JobState, value, "JOB_STATE_")


def agent_state(value: int) -> str:
    return enum_name(agent_pb2.AgentState, value, "AGENT_STATE_")


def stamp(ts: object) -> str:
    """A Timestamp as ``YYYY-MM-DD HH:MM:SS`` UTC, ``-`` when unset."""
    if not getattr(ts, "seconds", 0):
        return "-"
    return str(ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))  # type: ignore[attr-defined]


def struct_text(value: struct_pb2.Struct) -> str:
    """A Struct as indented JSON (empty object when unset)."""
    return json.dumps(json_format.MessageToDict(value), indent=2, sort_keys=True)


def badge(state: str) -> str:
    return f'<span class="state state-{h(state)}" data-state>{h(state)}</span>'


def may(user: Principal, permission: int) -> bool:
    """Whether the signed-in user's roles grant ``permission`` (buttons are shown only then; the
    services check again on every call)."""
    return permission in user.permissions


@dataclass(frozen=True)
class Page:
    """What every page has around its body."""

    title: str
    user: Principal | None
    csrf: str = ""
    active: str = ""


NAV = (
    ("workflows", "/workflows", "Workflows"),
    ("encodes", "/encodes", "Encodes"),
    ("jobs", "/jobs", "Jobs"),
    ("pool", "/pool", "Pool"),
    ("definitions", "/definitions", "Definitions"),
)


def layout(page: Page, body: str) -> str:
    """The whole document: header, navigation, the body, the one script (vendored, same origin)."""
    nav = ""
    who = ""
    if page.user is not None:
        links = "".join(
            f'<li><a href="{href}"{" aria-current=page" if key == page.active else ""}>{label}</a></li>'
            for key, href, label in NAV
        )
        nav = f'<nav aria-label="main"><ul>{links}</ul></nav>'
        roles = ", ".join(sorted(page.user.roles))
        who = (
            f'<div class="who"><span>{h(page.user.name)} · {h(page.user.tenant)} · {h(roles)}</span>'
            f'<form method="post" action="/signout">{csrf_field(page.csrf)}'
            '<button type="submit">Sign out</button></form></div>'
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(page.title)} · Cosmos</title>"
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script>'
        "</head><body>"
        '<a class="skip" href="#main">Skip to content</a>'
        f'<header><a class="brand" href="/">Cosmos</a>{nav}{who}</header>'
        f'<main id="main" tabindex="-1"><h1>{h(page.title)}</h1>{body}</main>'
        "</body></html>\n"
    )


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{h(token)}">'


def action_button(url: str, label: str, csrf: str, *, danger: bool = False) -> str:
    """A POST form with one button (every state change is a POST carrying the CSRF token)."""
    cls = ' class="danger"' if danger else ""
    return (
        f'<form class="inline" method="post" action="{h(url)}">{csrf_field(csrf)}'
        f'<button type="submit"{cls}>{h(label)}</button></form>'
    )


def message(text: str, *, error: bool = False) -> str:
    role = "alert" if error else "status"
    return f'<p class="{"error" if error else "note"}" role="{role}">{h(text)}</p>'


def signin_page(pre: str, error: str = "", next_url: str = "/") -> str:
    body = (
        (message(error, error=True) if error else "")
        + '<form class="signin" method="post" action="/signin">'
        + f'<input type="hidden" name="pre" value="{h(pre)}">'
        + f'<input type="hidden" name="next" value="{h(next_url)}">'
        + '<label for="token">Platform token</label>'
        + '<textarea id="token" name="token" rows="5" required autocomplete="off" spellcheck="false"'
        + ' placeholder="eyJ..."></textarea>'
        + '<p class="hint">Make one with <code>cosmos token create --tenant default --role admin</code> '
        + "(roles: viewer, submitter, operator, admin). The console acts with it on your behalf; it is "
        + "kept on the server, never in the page.</p>"
        + '<button type="submit">Sign in</button></form>'
    )
    return layout(Page("Sign in", None), body)


def error_page(page: Page, status: int, text: str) -> str:
    return layout(page, message(f"{status}: {text}", error=True))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str = "Nothing here yet.") -> str:
    """A table whose cells are already HTML."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="note">{h(empty)}</p>'
    head = "".join(f'<th scope="col">{h(x)}</th>' for x in headers)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


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


def step_edges(
    steps: Sequence[workflow_pb2.StepExecution], definition: definition_pb2.WorkflowDefinition | None
) -> list[tuple[str, str]]:
    """Edges between step names: from the definition's rules (``when: X.completed`` -> the rule's
    steps), else from the rule strings the steps record."""
    edges: list[tuple[str, str]] = []
    names = {s.step_name for s in steps}
    if definition is not None and definition.source_yaml:
        try:
            doc = yaml.safe_load(definition.source_yaml) or {}
        except yaml.YAMLError:
            doc = {}
        names |= set(definition.step_names)
        if isinstance(doc, dict) and isinstance(doc.get("workflow"), dict):
            doc = doc["workflow"]
        for rule in (doc.get("rules") or []) if isinstance(doc, dict) else []:
            if not isinstance(rule, dict):
                continue
            when = str(rule.get("when", ""))
            sources = [n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", when)]
            targets = _rule_targets(rule)
            edges += [(a, b) for a in sources for b in targets if a != b and b in names]
    return list(dict.fromkeys(edges))


def _rule_targets(rule: dict[str, object]) -> list[str]:
    """The steps a rule starts: names in ``do``/``onExhausted``, and ``fanout.run``."""
    found: list[str] = []
    for key in ("do", "onExhausted"):
        value = rule.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                found.append(item)
            elif isinstance(item, dict):
                fanout = item.get("fanout")
                run = fanout.get("run") if isinstance(fanout, dict) else item.get("run")
                if isinstance(run, str):
                    found.append(run)
    return found


def layers(names: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Step names in columns: each after every step it depends on (longest path); cycles cut."""
    depth = dict.fromkeys(names, 0)
    for _ in range(len(names)):
        changed = False
        for a, b in edges:
            if a in depth and b in depth and depth[b] < depth[a] + 1 <= len(names):
                depth[b] = depth[a] + 1
                changed = True
        if not changed:
            break
    columns: dict[int, list[str]] = {}
    for name in names:
        columns.setdefault(depth[name], []).append(name)
    return [columns[k] for k in sorted(columns)]


def dag_svg(
    steps: Sequence[workflow_pb2.StepExecution], definition: definition_pb2.WorkflowDefinition | None
) -> str:
    """The workflow's steps as an SVG graph: a node per step name (fan-out instances summed up),
    coloured by state; ``data-step`` lets the live updates recolour it."""
    order: list[str] = []
    if definition is not None:
        order += list(definition.step_names)
    order += [s.step_name for s in steps if s.step_name not in order]
    if not order:
        return '<p class="note">No steps yet.</p>'
    edges = step_edges(steps, definition)
    columns = layers(order, edges)
    w, hgt, gx, gy = 170, 44, 60, 18
    pos: dict[str, tuple[int, int]] = {}
    for ci, column in enumerate(columns):
        for ri, name in enumerate(column):
            pos[name] = (10 + ci * (w + gx), 10 + ri * (hgt + gy))
    width = 20 + len(columns) * (w + gx) - gx
    height = 20 + max(len(c) for c in columns) * (hgt + gy) - gy
    by_name: dict[str, list[workflow_pb2.StepExecution]] = {}
    for s in steps:
        by_name.setdefault(s.step_name, []).append(s)
    parts = [
        f'<svg class="dag" role="img" aria-label="steps of the workflow" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6"'
        ' orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>'
    ]
    for a, b in edges:
        if a in pos and b in pos:
            (x1, y1), (x2, y2) = pos[a], pos[b]
            parts.append(
                f'<line class="edge" x1="{x1 + w}" y1="{y1 + hgt // 2}" x2="{x2}" y2="{y2 + hgt // 2}"'
                ' marker-end="url(#arrow)"/>'
            )
    for name in order:
        x, y = pos[name]
        instances = by_name.get(name, [])
        state = summary_state([step_state(s.state) for s in instances])
        count = f" x{len(instances)}" if len(instances) > 1 else ""
        parts.append(
            f'<g class="node state-{h(state)}" data-step="{h(name)}" data-state-class>'
            f'<rect x="{x}" y="{y}" width="{w}" height="{hgt}" rx="6"/>'
            f'<text x="{x + 8}" y="{y + 18}">{h(name[:22])}{h(count)}</text>'
            f'<text class="sub" x="{x + 8}" y="{y + 35}" data-state>{h(state)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


_PRECEDENCE = ("failed", "running", "retry_wait", "scheduled", "cancelled", "completed", "skipped")


def summary_state(states: Sequence[str]) -> str:
    """One state for a step's instances: the most telling one (failed over running over done)."""
    if not states:
        return "pending"
    for candidate in _PRECEDENCE:
        if candidate in states:
            return candidate
    return states[0]


Span = tuple[str, int, float, float, str]
"""One attempt of one step: step id, attempt, start and end (0: still open) in seconds, its state."""

_ENDS = {
    events_pb2.WORKFLOW_EVENT_TYPE_STEP_COMPLETED: "completed",
    events_pb2.WORKFLOW_EVENT_TYPE_STEP_FAILED: "failed",
    events_pb2.WORKFLOW_EVENT_TYPE_STEP_TIMED_OUT: "timed_out",
    events_pb2.WORKFLOW_EVENT_TYPE_STEP_CANCELLED: "cancelled",
}


def attempt_spans(
    events: Sequence[events_pb2.WorkflowEvent], steps: Sequence[workflow_pb2.StepExecution]
) -> list[Span]:
    """Every attempt of every step, from the history (scheduled or started -> its end); the steps'
    latest attempts when the history has none of them."""
    spans: dict[tuple[str, int], list[Any]] = {}
    for e in events:
        if not e.step_id:
            continue
        at = _seconds(e.event_time)
        key = (e.step_id, e.attempt or 1)
        if e.type == events_pb2.WORKFLOW_EVENT_TYPE_STEP_SCHEDULED and key not in spans:
            spans[key] = [at, 0.0, "scheduled"]
        elif e.type == events_pb2.WORKFLOW_EVENT_TYPE_STEP_STARTED:
            span = spans.setdefault(key, [at, 0.0, "running"])
            span[0], span[2] = at, "running"
        elif e.type in _ENDS:
            span = spans.setdefault(key, [at, 0.0, ""])
            span[1], span[2] = at, _ENDS[e.type]
    if not spans:
        for st in steps:
            begin = _seconds(st.start_time) or _seconds(st.schedule_time)
            if begin:
                spans[(st.step_id, st.attempt)] = [begin, _seconds(st.close_time), step_state(st.state)]
    return [
        (step_id, attempt, float(v[0]), float(v[1]), str(v[2])) for (step_id, attempt), v in spans.items()
    ]


def timeline(spans: Sequence[Span], now: float | None = None) -> str:
    """A Gantt chart of the attempts, scaled to the workflow's span (an SVG: the CSP allows no inline
    styles)."""
    if not spans:
        return '<p class="note">No attempt has started yet.</p>'
    t0 = min(sp[2] for sp in spans)
    # Attempts still open run up to now.
    t1 = max(sp[3] or max(now or time.time(), sp[2]) for sp in spans)
    total = max(t1 - t0, 1.0)
    row, label, width = 20, 190, 520
    parts = [
        f'<svg class="gantt" role="img" aria-label="timeline of attempts" viewBox="0 0 {label + width + 70}'
        f' {row * len(spans) + 10}" width="100%" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (step_id, attempt, start, end, state) in enumerate(spans):
        x = label + (start - t0) / total * width
        bar = max(((end or t1) - start) / total * width, 2)
        y = 5 + i * row
        parts.append(
            f'<text x="0" y="{y + 13}">{h(step_id[:26])}</text>'
            f'<rect class="bar state-{h(state)}" x="{x:.1f}" y="{y}" width="{bar:.1f}" height="{row - 6}">'
            f"<title>{h(step_id)} attempt {attempt}: {h(state)}</title></rect>"
            f'<text class="sub" x="{x + bar + 4:.1f}" y="{y + 13}">#{attempt} '
            f"{(end or t1) - start:.1f}s</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _seconds(ts: object) -> float:
    secs = getattr(ts, "seconds", 0)
    return float(secs) + getattr(ts, "nanos", 0) / 1e9 if secs else 0.0


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


# -- encodes -----------------------------------------------------------------------------------------


def percent(progress: object) -> float:
    return float(getattr(progress, "percent", 0.0))


def progress_bar(value: float, key: str) -> str:
    v = max(0.0, min(100.0, value))
    return (
        f'<progress max="100" value="{v:.1f}" data-progress="{h(key)}">{v:.0f}%</progress>'
        f' <span data-percent="{h(key)}">{v:.0f}%</span>'
    )


ENCODE_STATES = [
    encode_state(v) for v in encode_pb2.EncodeState.values() if v != encode_pb2.ENCODE_STATE_UNSPECIFIED
]
QUALITY_MODES = ("sampled", "full", "off")


def submit_form(page: Page) -> str:
    """The form that starts an encode (shown to roles with ENCODES_WRITE)."""
    quality = "".join(f"<option>{m}</option>" for m in QUALITY_MODES)
    return (
        '<details class="submit"><summary>Start an encode</summary>'
        f'<form class="filters" method="post" action="/encodes">{csrf_field(page.csrf)}'
        '<label>Source URI <input name="source" required placeholder="file:///... or s3://..."></label>'
        '<label>Output URI <input name="output" placeholder="default: beside the source"></label>'
        '<label>Profiles <input name="profiles" placeholder="360p,720p (default: the ladder)"></label>'
        f'<label>Quality <select name="quality">{quality}</select></label>'
        '<button type="submit">Start</button></form></details>'
    )


def encodes_page(
    page: Page, encodes: Sequence[encode_pb2.Encode], next_token: str, state: str = "", error: str = ""
) -> str:
    options = "".join(
        f'<option value="{h(st)}"{" selected" if st == state else ""}>{h(st)}</option>'
        for st in ENCODE_STATES
    )
    filters = (
        '<form class="filters" method="get" action="/encodes" role="search">'
        '<label>State <select name="state"><option value="">any</option>' + options + "</select></label>"
        '<button type="submit">Filter</button></form>'
    )
    user = page.user
    submit = submit_form(page) if user is not None and may(user, P.PERMISSION_ENCODES_WRITE) else ""
    rows = [
        [
            f'<a href="/encodes/{q(e.encode_id)}">{h(e.encode_id)}</a>',
            badge(encode_state(e.state)),
            progress_bar(percent(e.progress), "encode"),
            h(", ".join(r.profile for r in e.renditions) or ", ".join(e.profiles)),
            h(e.source_uri),
            h(stamp(e.create_time)),
        ]
        for e in encodes
    ]
    more = ""
    if next_token:
        params = urlencode({"state": state, "page": next_token})
        more = f'<p><a class="more" href="/encodes?{h(params)}">Next page</a></p>'
    headers = ("encode", "state", "progress", "renditions", "source", "created")
    body = (message(error, error=True) if error else "") + submit + filters
    return layout(page, body + table(headers, rows, empty="No encodes match.") + more)


def _metric(value: float) -> str:
    return f"{value:.2f}" if value else "-"


def encode_page(page: Page, e: encode_pb2.Encode, playable: bool) -> str:
    user = page.user
    state = encode_state(e.state)
    buttons = ""
    if user is not None and may(user, P.PERMISSION_ENCODES_WRITE) and state in ("pending", "running"):
        buttons = action_button(f"/encodes/{q(e.encode_id)}/cancel", "Cancel encode", page.csrf, danger=True)
    facts = (
        f'<dl class="facts" data-live="/encodes/{q(e.encode_id)}/events">'
        f"<dt>State</dt><dd data-encode-state>{badge(state)}</dd>"
        f"<dt>Progress</dt><dd>{progress_bar(percent(e.progress), 'encode')}</dd>"
        f"<dt>Source</dt><dd>{h(e.source_uri)}</dd>"
        f"<dt>Output</dt><dd>{h(e.output_uri)}</dd>"
        + (
            f'<dt>Workflow</dt><dd><a href="/workflows/{q(e.workflow_id)}">{h(e.workflow_id)}</a></dd>'
            if e.workflow_id
            else ""
        )
        + (f"<dt>HLS</dt><dd>{h(e.manifests.hls_master_uri)}</dd>" if e.manifests.hls_master_uri else "")
        + (f"<dt>DASH</dt><dd>{h(e.manifests.dash_mpd_uri)}</dd>" if e.manifests.dash_mpd_uri else "")
        + (f"<dt>Error</dt><dd>{h(e.failed_step)}: {h(e.error_message)}</dd>" if e.error_message else "")
        + "</dl>"
    )
    rows = [
        [
            h(r.profile),
            f'<span data-rendition-state="{h(r.profile)}">{badge(encode_state(r.state))}</span>',
            progress_bar(percent(r.progress), f"r:{r.profile}"),
            f"{r.width}&times;{r.height}" if r.width else "-",
            h(r.codec or "-"),
            f"{r.bitrate_bps / 1000:.0f} kb/s" if r.bitrate_bps else "-",
            _metric(r.vmaf),
            _metric(r.psnr),
            _metric(r.ssim),
        ]
        for r in e.renditions
    ]
    player = ""
    if playable:
        src = f"/encodes/{q(e.encode_id)}/media/master.m3u8"
        player = (
            "<h2>Player</h2>"
            f'<video class="player" controls preload="none" data-hls="{h(src)}"></video>'
            f'<p class="hint">HLS master playlist: <a href="{h(src)}">{h(e.manifests.hls_master_uri)}</a></p>'
        )
    headers = ("rendition", "state", "progress", "size", "codec", "bitrate", "VMAF", "PSNR", "SSIM")
    body = (
        facts
        + (f'<div class="actions">{buttons}</div>' if buttons else "")
        + "<h2>Renditions</h2>"
        + table(headers, rows, empty="No renditions planned yet.")
        + player
    )
    return layout(page, body)


def encode_update(e: encode_pb2.Encode) -> dict[str, object]:
    return {
        "state": encode_state(e.state),
        "percent": round(percent(e.progress), 1),
        "renditions": {
            r.profile: {"state": encode_state(r.state), "percent": round(percent(r.progress), 1)}
            for r in e.renditions
        },
    }


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
