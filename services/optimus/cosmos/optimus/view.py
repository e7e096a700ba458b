"""An encode as the user sees it, derived from its Plato workflow (Optimus keeps no state of its own).

Progress: each phase of the ladder weighs in (probe and split 5 %, chunk encodes with their quality
measurement 85 %, assembly 5 %, packaging and publishing 5 %); a running step counts with its
reported percent. Per rendition, progress is the mean over the chunk encodes of its profile's group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from cosmos.common.v1 import progress_pb2
from cosmos.optimus.v1 import encode_pb2
from cosmos.plato.v1 import workflow_pb2
from cosmos.protocol import values

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
ES = encode_pb2.EncodeState

_STATES = {
    WS.WORKFLOW_STATE_PENDING: ES.ENCODE_STATE_PENDING,
    WS.WORKFLOW_STATE_RUNNING: ES.ENCODE_STATE_RUNNING,
    WS.WORKFLOW_STATE_COMPLETED: ES.ENCODE_STATE_SUCCEEDED,
    WS.WORKFLOW_STATE_FAILED: ES.ENCODE_STATE_FAILED,
    WS.WORKFLOW_STATE_CANCELLING: ES.ENCODE_STATE_CANCELLED,
    WS.WORKFLOW_STATE_CANCELLED: ES.ENCODE_STATE_CANCELLED,
}
QUALITY_MODES = {
    encode_pb2.QUALITY_MODE_SAMPLED: "sampled",
    encode_pb2.QUALITY_MODE_FULL: "full",
    encode_pb2.QUALITY_MODE_OFF: "off",
}
"""QualityMode -> the workflow input's ``quality`` (the media tool's ``--quality``)."""
_QUALITY_ENUMS = {v: k for k, v in QUALITY_MODES.items()}
IMAGE_ENCODE_STEP = "encode-image"
"""The encode step's variant that runs in the encode's ``image`` (see the workflow)."""
PHASES = (
    (("probe", "split"), 5.0),
    (("encode",), 85.0),
    (("assemble",), 5.0),
    (("package", "publish"), 5.0),
)


def _percent(step: workflow_pb2.StepExecution) -> float:
    if step.state == SS.STEP_STATE_COMPLETED:
        return 100.0
    if step.state == SS.STEP_STATE_RUNNING or step.state == SS.STEP_STATE_SCHEDULED:
        return max(0.0, min(100.0, step.progress.percent))
    return 0.0


def _mean(numbers: Iterable[float]) -> float:
    items = list(numbers)
    return sum(items) / len(items) if items else 0.0


def _profiles_of(step: workflow_pb2.StepExecution) -> list[str]:
    """The profiles a chunk encode works on: its group's (older definitions: its one profile)."""
    fanout = values.struct_to_dict(step.fanout_vars)
    group, profile = fanout.get("group"), fanout.get("profile")
    if isinstance(group, dict):
        return [str(n) for n in group.get("profiles") or []]
    return [str(profile.get("name", ""))] if isinstance(profile, dict) else []


def _expected(name: str, chunks: int, groups: int, profiles: int) -> int:
    return {"encode": chunks * groups, "assemble": profiles}.get(name, 1)


def encode_view(workflow: workflow_pb2.Workflow, inp: Mapping[str, Any] | None = None) -> encode_pb2.Encode:
    """The :class:`Encode` of an encode-ladder workflow.

    ``inp``: the workflow's input as a dict, when the caller has it already (the submit that just
    sent it); converting the ``Struct`` back is most of the cost of viewing a new encode.
    """
    if inp is None:
        inp = values.struct_to_dict(workflow.input)
    profiles: list[dict[str, Any]] = list(inp.get("profiles") or [])
    names = [str(p.get("name")) for p in profiles]
    encode = encode_pb2.Encode(
        encode_id=workflow.workflow_id,
        workflow_id=workflow.workflow_id,
        state=_STATES.get(workflow.state, ES.ENCODE_STATE_PENDING),
        source_uri=str(inp.get("source_uri", "")),
        output_uri=str(inp.get("output", "")),
        profiles=names,
        ladder=str(inp.get("ladder", "")),
        priority=int(inp.get("priority") or 0),
        request_id=str(inp.get("request_id", "")),
        content_key=str(inp.get("content_key", "")),
        # Encodes started before quality modes existed measured every frame.
        quality=_QUALITY_ENUMS.get(str(inp.get("quality", "full")), encode_pb2.QUALITY_MODE_FULL),
        create_time=workflow.create_time,
        update_time=workflow.update_time,
    )
    if workflow.HasField("close_time"):
        encode.complete_time.CopyFrom(workflow.close_time)
    steps = list(workflow.steps)
    by_name: dict[str, list[workflow_pb2.StepExecution]] = {}
    for step in steps:
        # A chunk encode in the worker image is a chunk encode all the same.
        name = "encode" if step.step_name == IMAGE_ENCODE_STEP else step.step_name
        by_name.setdefault(name, []).append(step)
    outputs = {
        name: values.struct_to_dict(s[-1].output)
        for name, s in by_name.items()
        if s[-1].state == SS.STEP_STATE_COMPLETED
    }
    _source(encode, outputs.get("probe"))
    chunks = len((outputs.get("split") or {}).get("chunks") or []) or 1
    groups = len(inp.get("groups") or []) or len(names)
    _progress(encode, by_name, chunks, groups, len(names), workflow)
    publish = outputs.get("publish") or {}
    _renditions(encode, profiles, by_name, outputs.get("package"), str(publish.get("uri") or ""))
    encode.manifests.hls_master_uri = str(publish.get("hls_master_uri", ""))
    encode.manifests.dash_mpd_uri = str(publish.get("dash_mpd_uri", ""))
    if workflow.state == WS.WORKFLOW_STATE_COMPLETED and steps and not encode.manifests.hls_master_uri:
        # Never report success for an encode whose package was not published (a view without the
        # steps, e.g. of a submit answered from the workflow's header, cannot tell).
        encode.state = ES.ENCODE_STATE_FAILED
        encode.failed_step = "publish"
        encode.error_message = "the encode's workflow completed without publishing its package"
    if workflow.state == WS.WORKFLOW_STATE_FAILED:
        failed = [s for s in steps if s.state in (SS.STEP_STATE_FAILED, SS.STEP_STATE_TIMED_OUT)]
        encode.failed_step = failed[0].step_id if failed else ""
        encode.error_message = workflow.failure_reason
    if workflow.state in (WS.WORKFLOW_STATE_CANCELLED, WS.WORKFLOW_STATE_CANCELLING):
        encode.cancel_reason = workflow.failure_reason
    return encode


def _source(encode: encode_pb2.Encode, probe: dict[str, Any] | None) -> None:
    if not probe:
        return
    encode.source.duration.FromNanoseconds(int(float(probe.get("duration") or 0) * 1e9))
    encode.source.width = int(probe.get("width") or 0)
    encode.source.height = int(probe.get("height") or 0)
    encode.source.frame_rate = float(probe.get("fps") or 0)
    encode.source.video_codec = str(probe.get("video_codec") or "")
    encode.source.audio_codec = str(probe.get("audio_codec") or "")
    encode.source.bitrate_bps = int(probe.get("bitrate") or 0)


def _progress(
    encode: encode_pb2.Encode,
    by_name: dict[str, list[workflow_pb2.StepExecution]],
    chunks: int,
    groups: int,
    profiles: int,
    workflow: workflow_pb2.Workflow,
) -> None:
    if workflow.state == WS.WORKFLOW_STATE_COMPLETED:
        encode.progress.percent = 100.0
        return
    total = 0.0
    for names, weight in PHASES:
        done = [_percent(s) for name in names for s in by_name.get(name, [])]
        expected = sum(_expected(name, chunks, groups, profiles) for name in names)
        total += weight * sum(done) / 100.0 / max(expected, len(done), 1)
    encode.progress.percent = round(min(total, 99.9), 1)
    running = [s for s in by_name.get("encode", []) if s.state == SS.STEP_STATE_RUNNING]
    encode.progress.fps = sum(s.progress.fps for s in running)


def _renditions(
    encode: encode_pb2.Encode,
    profiles: Sequence[dict[str, Any]],
    by_name: dict[str, list[workflow_pb2.StepExecution]],
    package: dict[str, Any] | None,
    published: str = "",
) -> None:
    packaged = {str(r.get("profile")): r for r in (package or {}).get("renditions") or []}
    for profile in profiles:
        name = str(profile.get("name"))
        encodes = [s for s in by_name.get("encode", []) if name in _profiles_of(s)]
        rendition = encode.renditions.add(
            profile=name,
            width=int(profile.get("width") or 0),
            height=int(profile.get("height") or 0),
            codec=str(profile.get("codec") or ""),
        )
        rendition.progress.CopyFrom(
            progress_pb2.Progress(
                percent=round(_mean(_percent(s) for s in encodes), 1),
                fps=sum(s.progress.fps for s in encodes if s.state == SS.STEP_STATE_RUNNING),
                speed=sum(s.progress.speed for s in encodes if s.state == SS.STEP_STATE_RUNNING),
            )
        )
        if any(s.state in (SS.STEP_STATE_FAILED, SS.STEP_STATE_TIMED_OUT) for s in encodes):
            rendition.state = ES.ENCODE_STATE_FAILED
        elif name in packaged:
            rendition.state = ES.ENCODE_STATE_SUCCEEDED
        elif encodes:
            rendition.state = ES.ENCODE_STATE_RUNNING
        else:
            rendition.state = ES.ENCODE_STATE_PENDING
        result = packaged.get(name)
        if result:
            rendition.width = int(result.get("width") or rendition.width)
            rendition.height = int(result.get("height") or rendition.height)
            rendition.bitrate_bps = int(result.get("bitrate") or 0)
            rendition.size_bytes = int(result.get("bytes") or 0)
            rendition.duration.FromNanoseconds(int(float(result.get("duration") or 0) * 1e9))
            rendition.vmaf = float(result.get("vmaf") or 0)
            rendition.psnr = float(result.get("psnr") or 0)
            rendition.quality_frames = int(result.get("quality_frames") or 0)
            # The packaged playlist lies in the encode's scratch directory, published under the same
            # name next to the master playlist: its URI is known once the package is published.
            playlist = PurePosixPath(str(result.get("playlist") or "")).name
            rendition.playlist_uri = f"{published.rstrip('/')}/{playlist}" if published and playlist else ""
