"""Escaping, enum and time formatting, and the pieces every page is built from: the layout, tables,
state badges, progress bars, action buttons.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from google.protobuf import json_format, struct_pb2

from cosmos.optimus.v1 import encode_pb2
from cosmos.plato.v1 import workflow_pb2
from cosmos.security.principals import Principal
from cosmos.stratum.v1 import agent_pb2, job_pb2


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


def error_page(page: Page, status: int, text: str) -> str:
    return layout(page, message(f"{status}: {text}", error=True))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str = "Nothing here yet.") -> str:
    """A table whose cells are already HTML."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="note">{h(empty)}</p>'
    head = "".join(f'<th scope="col">{h(x)}</th>' for x in headers)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def percent(progress: object) -> float:
    return float(getattr(progress, "percent", 0.0))


def progress_bar(value: float, key: str) -> str:
    v = max(0.0, min(100.0, value))
    return (
        f'<progress max="100" value="{v:.1f}" data-progress="{h(key)}">{v:.0f}%</progress>'
        f' <span data-percent="{h(key)}">{v:.0f}%</span>'
    )
