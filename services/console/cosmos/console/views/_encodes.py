"""The encode pages: the list with the submit form, one encode (renditions, player), its live updates."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode

from cosmos.common.v1 import access_pb2
from cosmos.console.views._html import (
    Page,
    action_button,
    badge,
    csrf_field,
    encode_state,
    h,
    layout,
    may,
    message,
    percent,
    progress_bar,
    q,
    stamp,
    table,
)
from cosmos.optimus.v1 import encode_pb2

P = access_pb2


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
