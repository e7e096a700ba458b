"""The console's pages as HTML: pure functions of protobuf messages, no I/O (unit-tested directly).

Every value reaches the page through :func:`h` (HTML-escaped); nothing is inline script or inline
style, so the Content-Security-Policy can forbid both. Live parts carry ``data-*`` attributes that
``static/console.js`` updates from the server-sent events.

This package is the surface the handlers and the tests use; the pages live in private modules by area
(``_html``: escaping and the shared pieces; ``_signin``; ``_workflows`` with ``_charts``, its DAG and
timeline SVGs; ``_encodes``; ``_pool``: jobs, the pool, definitions), so they can move between modules
without changing a caller.
"""

from __future__ import annotations

from cosmos.console.views._charts import (
    Span,
    attempt_spans,
    dag_svg,
    layers,
    step_edges,
    timeline,
)
from cosmos.console.views._encodes import (
    ENCODE_STATES,
    QUALITY_MODES,
    encode_page,
    encode_update,
    encodes_page,
)
from cosmos.console.views._html import Page, encode_state, error_page, h, layout, q, wf_state
from cosmos.console.views._pool import (
    definition_page,
    definitions_page,
    job_event,
    job_page,
    jobs_page,
    pool_page,
)
from cosmos.console.views._signin import signin_page
from cosmos.console.views._workflows import (
    SINCE_CHOICES,
    WORKFLOW_STATES,
    WorkflowFilters,
    workflow_page,
    workflow_update,
    workflows_page,
)

__all__ = [
    "ENCODE_STATES",
    "QUALITY_MODES",
    "SINCE_CHOICES",
    "WORKFLOW_STATES",
    "Page",
    "Span",
    "WorkflowFilters",
    "attempt_spans",
    "dag_svg",
    "definition_page",
    "definitions_page",
    "encode_page",
    "encode_state",
    "encode_update",
    "encodes_page",
    "error_page",
    "h",
    "job_event",
    "job_page",
    "jobs_page",
    "layers",
    "layout",
    "pool_page",
    "q",
    "signin_page",
    "step_edges",
    "timeline",
    "wf_state",
    "workflow_page",
    "workflow_update",
    "workflows_page",
]
