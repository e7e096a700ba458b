"""A workflow's steps as SVG: the step graph (DAG) and the timeline of attempts (Gantt)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import yaml

from cosmos.console.views._html import h, step_state
from cosmos.plato.v1 import definition_pb2, events_pb2, workflow_pb2


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
