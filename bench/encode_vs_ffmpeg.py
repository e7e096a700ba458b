"""The encode platform vs one hand-written ffmpeg command, on this machine, in one run.

A 3-rendition ladder (1080p, 720p, 360p) of a synthetic 1080p clip (``make-test-clip``, default 60 s):

- **ffmpeg (hand)**: ONE ffmpeg command that decodes the source once, ``split=3``, scales each branch
  exactly as the media tool does and encodes three mp4 renditions with the profiles' encoder options
  (libx264 veryfast High, CRF 23, maxrate/bufsize of the rung, closed 2 s GOP, no scene-cut keyframes,
  ``+faststart`` like ``assemble``). Run before and after every round of platform runs.
- **platform**, once per quality mode (``--modes``, default ``off,sampled``): Optimus on a freshly
  started embedded stack (NATS, Plato, Stratum, Optimus, one local agent; start-up not timed):
  ``SubmitEncode`` until ``WatchEncode`` reports SUCCEEDED, i.e. probe, split, chunk encodes, assemble,
  HLS + DASH packaging (audio encoded once) and publishing. With ``off`` the platform produces what the
  hand command produces (plus the packaging); ``sampled`` (the default of a submit) also measures
  VMAF + PSNR on about one frame a second, ``full`` on every frame. The phases come from the workflow
  history (Plato ``ListWorkflowEvents``; the encode id is the workflow id). Security is on as
  ``cosmos up`` runs it (the stack's own CA, mutual TLS on every hop, this harness calling as the
  local admin through ``stack.context()``; ``--insecure``: ``StackConfig(insecure=True)``); the source
  and the output lie under the stack's storage root for tenant ``default``
  (``<data-dir>/storage/default/``).
- **ffmpeg + quality + package** (``--quality-baseline``): the hand command, then one hand-written
  ffmpeg command measuring VMAF (libvmaf, default model) and PSNR of all three renditions against the
  source on every frame, then the platform's ``dash`` packaging command and a copy of the package;
  the baseline for the ``full`` mode.

The issue's goal is platform / hand-written ffmpeg <= 1.15, for the platform producing the same
renditions (mode ``off``); the other modes are reported against the same baseline.

Hand and platform runs alternate (``--rounds``, default 2: hand, platform per mode, hand, platform per
mode, hand); each platform run is compared with the mean of the hand runs just before and after it,
and the median over the rounds is the figure (the shared machine drifts by 10-20 % over minutes).

Run::

    .venv/bin/python bench/encode_vs_ffmpeg.py            # 60 s clip: about 5 minutes on 2 cores
    .venv/bin/python bench/encode_vs_ffmpeg.py --quick    # 10 s clip: about a minute
    .venv/bin/python bench/encode_vs_ffmpeg.py --json     # one JSON object with every figure
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import report  # bench/report.py, next to this script
from google.protobuf import json_format, timestamp_pb2

from cosmos.optimus import profiles
from cosmos.optimus.media import encode as media_encode
from cosmos.optimus.media.ffmpeg import ffmpeg_exe
from cosmos.optimus.media.probe import probe
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.plato.v1 import events_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime.config import free_port
from cosmos.stack.embedded import EmbeddedStack, StackConfig
from cosmos.stratum.v1 import job_service_pb2, job_service_pb2_grpc

LADDER = ("1080p", "720p", "360p")
GOAL_RATIO = 1.15
ES = encode_pb2.EncodeState
TERMINAL = (ES.ENCODE_STATE_SUCCEEDED, ES.ENCODE_STATE_FAILED, ES.ENCODE_STATE_CANCELLED)
ET = events_pb2.WorkflowEventType
# The media tool's chunk filter (services/optimus/cosmos/optimus/media/encode.py), written out by hand.
SCALE = (
    "scale=w={w}:h={h}:force_original_aspect_ratio=decrease:force_divisible_by=2:flags=bicubic,"
    "setsar=1,setpts=PTS-STARTPTS,format=yuv420p"
)
_PSNR = re.compile(
    r"\[psnr@(\w+) @ [^\]]*\] PSNR y:([\d.]+|inf) u:[\d.inf]+ v:[\d.inf]+ average:([\d.]+|inf)"
)


# --------------------------------------------------------------------------- timed subprocesses


@dataclass
class Timed:
    """One command: wall seconds and CPU seconds (user + system of it and its children)."""

    name: str
    wall_s: float
    cpu_s: float
    load_before: float = 0.0
    stderr: str = field(default="", repr=False)


def run_timed(name: str, argv: Sequence[str], log_dir: Path) -> Timed:
    """Run ``argv``; wall time and its own rusage (``wait4``, so no other child is counted)."""
    log = log_dir / f"{name}.stderr"
    load = os.getloadavg()[0]
    with log.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}): {text[-1500:]}")
    return Timed(name, wall, usage.ru_utime + usage.ru_stime, load, text)


def ffmpeg(*args: str, loglevel: str = "error") -> list[str]:
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", loglevel, *args]


def gop(fps: float) -> list[str]:
    g = max(1, round(2.0 * fps))
    return ["-g", str(g), "-keyint_min", str(g), "-sc_threshold", "0", "-flags", "+cgop"]


def hand_encode_argv(source: Path, fps: float, outs: dict[str, Path]) -> list[str]:
    """The hand-written ladder command: one decode, split, scale + encode per rung."""
    names = list(outs)
    chains = [f"[0:v:0]split={len(names)}" + "".join(f"[s{i}]" for i in range(len(names)))]
    for i, name in enumerate(names):
        p = profiles.get(name)
        chains.append(f"[s{i}]" + SCALE.format(w=p.width, h=p.height) + f"[v{i}]")
    args = ["-i", str(source), "-filter_complex", ";".join(chains)]
    for i, name in enumerate(names):
        p = profiles.get(name)
        args += ["-map", f"[v{i}]", "-an", "-sn", "-dn", "-pix_fmt", "yuv420p", *p.args, *gop(fps)]
        args += ["-movflags", "+faststart", "-f", "mp4", str(outs[name])]
    return ffmpeg(*args)


def check_same_settings(fps: float) -> None:
    """The hand command must use exactly the media tool's per-chunk filter and GOP options."""
    for name in LADDER:
        p = profiles.get(name)
        if SCALE.format(w=p.width, h=p.height) != media_encode.scale_filter(p):
            raise SystemExit(f"the hand-written scale filter differs from the media tool's for {name}")
        if gop(fps) != media_encode.gop_args(p, fps):
            raise SystemExit(f"the hand-written GOP options differ from the media tool's for {name}")
        if p.encoder != "libx264":
            raise SystemExit(f"{name} is not an x264 profile")


def hand_quality_argv(
    source: Path, width: int, height: int, outs: dict[str, Path], log_dir: Path
) -> list[str]:
    """VMAF + PSNR of every rendition against the source, as the media tool's ``quality`` does (the
    distorted frames upscaled bicubic to the source size, yuv420p, pts from 0), source decoded once."""
    n = len(outs)
    threads = os.cpu_count() or 1
    args = ["-i", str(source)]
    for path in outs.values():
        args += ["-i", str(path)]
    chains = [
        "[0:v:0]setpts=PTS-STARTPTS,format=yuv420p,split="
        + str(2 * n)
        + "".join(f"[r{i}a][r{i}b]" for i in range(n))
    ]
    for i, name in enumerate(outs):
        chains.append(
            f"[{i + 1}:v:0]scale={width}:{height}:flags=bicubic,setpts=PTS-STARTPTS,format=yuv420p,"
            f"split=2[d{i}a][d{i}b]"
        )
        chains.append(
            f"[d{i}a][r{i}a]libvmaf=log_path={log_dir / f'vmaf-{name}.json'}:log_fmt=json:"
            f"n_threads={threads}[vm{i}]"
        )
        chains.append(f"[d{i}b][r{i}b]psnr@q{i}[ps{i}]")
    args += ["-filter_complex", ";".join(chains)]
    for i in range(n):
        args += ["-map", f"[vm{i}]", "-f", "null", "-", "-map", f"[ps{i}]", "-f", "null", "-"]
    return ffmpeg(*args, loglevel="info")


def hand_package_argv(source: Path, outs: dict[str, Path], pkg: Path) -> list[str]:
    """The media tool's ``package`` command: video stream-copied, audio to AAC once, HLS + DASH."""
    args: list[str] = []
    for path in outs.values():
        args += ["-i", str(path)]
    args += ["-i", str(source)]
    for i in range(len(outs)):
        args += ["-map", f"{i}:v:0"]
    args += ["-map", f"{len(outs)}:a:0", "-c:a", "aac", "-b:a", "128000", "-ac", "2", "-ar", "48000"]
    args += [
        "-c:v", "copy", "-f", "dash", "-seg_duration", "2", "-use_template", "1", "-use_timeline", "1",
        "-hls_playlist", "1", "-adaptation_sets", "id=0,streams=v id=1,streams=a",
        "-init_seg_name", "init-$RepresentationID$.m4s",
        "-media_seg_name", "seg-$RepresentationID$-$Number%05d$.m4s", str(pkg / "manifest.mpd"),
    ]  # fmt: skip
    return ffmpeg(*args)


def quality_figures(run: Timed, outs: dict[str, Path], log_dir: Path) -> dict[str, dict[str, float]]:
    psnr = {m.group(1): m for m in _PSNR.finditer(run.stderr)}
    figures: dict[str, dict[str, float]] = {}
    for i, name in enumerate(outs):
        data = json.loads((log_dir / f"vmaf-{name}.json").read_text())
        m = psnr.get(f"q{i}")
        figures[name] = {
            "vmaf": round(float(data["pooled_metrics"]["vmaf"]["mean"]), 3),
            "psnr": round(float(m.group(3)), 3) if m and m.group(3) != "inf" else 100.0,
        }
    return figures


def describe(outs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    described: dict[str, dict[str, Any]] = {}
    for name, path in outs.items():
        info = probe(path, what="rendition")
        size = path.stat().st_size
        described[name] = {
            "width": info.width,
            "height": info.height,
            "bytes": size,
            "bitrate": int(size * 8 / info.duration) if info.duration else 0,
            "frames": info.frames,
        }
    return described


def ffmpeg_round(label: str, source: Path, fps: float, work: Path, with_rest: bool) -> dict[str, Any]:
    """The hand command (and, with ``with_rest``, the quality and packaging commands after it)."""
    out_dir = work / label
    out_dir.mkdir(parents=True)
    outs = {name: out_dir / f"{name}.mp4" for name in LADDER}
    enc = run_timed(f"{label}-encode", hand_encode_argv(source, fps, outs), work)
    result: dict[str, Any] = {"encode": _timed(enc), "renditions": describe(outs)}
    if with_rest:
        info = probe(source, what="source", count_frames=False)
        qual = run_timed(
            f"{label}-quality", hand_quality_argv(source, info.width, info.height, outs, work), work
        )
        pkg = out_dir / "package"
        pkg.mkdir()
        pack = run_timed(f"{label}-package", hand_package_argv(source, outs, pkg), work)
        t0 = time.perf_counter()
        shutil.copytree(pkg, out_dir / "published")
        publish_s = time.perf_counter() - t0
        result.update(
            quality=_timed(qual),
            package=_timed(pack),
            publish_s=round(publish_s, 3),
            quality_figures=quality_figures(qual, outs, work),
        )
        result["total_wall_s"] = round(enc.wall_s + qual.wall_s + pack.wall_s + publish_s, 3)
        result["total_cpu_s"] = round(enc.cpu_s + qual.cpu_s + pack.cpu_s, 3)
    return result


def _timed(t: Timed) -> dict[str, float]:
    return {"wall_s": round(t.wall_s, 3), "cpu_s": round(t.cpu_s, 3), "load_before": round(t.load_before, 2)}


# --------------------------------------------------------------------------- the platform


def _cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a stack process: its own, and its reaped children's (the agent's jobs)."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return {"self": 0.0, "children": 0.0}
    return {"self": t.user + t.system, "children": t.children_user + t.children_system}


def stack_cpu(stack: EmbeddedStack) -> dict[str, dict[str, float]]:
    return {child.name: _cpu(child.pid) for child in stack.children}


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return float(ts.seconds) + ts.nanos / 1e9


async def history(channel: grpc.aio.Channel, workflow_id: str) -> list[events_pb2.WorkflowEvent]:
    """The workflow's whole event history (every page)."""
    stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
    events: list[events_pb2.WorkflowEvent] = []
    token = ""
    while True:
        page = await stub.ListWorkflowEvents(
            workflow_service_pb2.ListWorkflowEventsRequest(
                workflow_id=workflow_id, page_size=1000, page_token=token
            )
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


STEP_NAMES = ("probe", "split", "audio", "encode", "assemble", "package", "publish")
MODES = {
    "off": encode_pb2.QUALITY_MODE_OFF,
    "sampled": encode_pb2.QUALITY_MODE_SAMPLED,
    "full": encode_pb2.QUALITY_MODE_FULL,
}


def phases(
    events: Sequence[events_pb2.WorkflowEvent], submit_wall: float, seen_wall: float
) -> dict[str, Any]:
    """Phase boundaries from the workflow history, in seconds from the submit."""
    last_done: dict[str, float] = {}
    wf_started = wf_completed = None
    for ev in events:
        t = _seconds(ev.event_time) - submit_wall
        if ev.type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_STARTED:
            wf_started = t
        elif ev.type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED:
            wf_completed = t
        elif ev.type == ET.WORKFLOW_EVENT_TYPE_STEP_COMPLETED:
            last_done[ev.step_name] = max(last_done.get(ev.step_name, 0.0), t)
    seen = seen_wall - submit_wall
    split_done = max(last_done.get("probe", 0.0), last_done.get("split", 0.0))
    enc_done = last_done.get("encode", split_done)
    asm_done = last_done.get("assemble", enc_done)
    pub_done = last_done.get("publish", asm_done)
    durations = {
        "submit -> workflow started": wf_started or 0.0,
        "probe + split": split_done - (wf_started or 0.0),
        "chunk encodes (+ quality)": enc_done - split_done,
        "assemble": asm_done - enc_done,
        "package + publish": pub_done - asm_done,
        "complete + observed by the client": seen - pub_done,
    }
    return {
        "last_completed_s": {k: round(v, 3) for k, v in last_done.items()},
        "workflow_completed_s": round(wf_completed, 3) if wf_completed is not None else None,
        "durations_s": {k: round(v, 3) for k, v in durations.items()},
        "encode_assemble_s": round(asm_done, 3),
        "events": len(events),
    }


async def step_jobs(plato: grpc.aio.Channel, stratum: grpc.aio.Channel, workflow_id: str) -> dict[str, Any]:
    """Per step name, from the workflow's steps and their Stratum jobs: how long each job waited and
    ran, and what the orchestration added around it (Plato dispatch, job end -> step completed)."""
    wf = (
        await workflow_service_pb2_grpc.WorkflowServiceStub(plato).GetWorkflow(
            workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id)
        )
    ).workflow
    jobs_stub = job_service_pb2_grpc.JobServiceStub(stratum)
    rows: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, float] = {}
    for step in wf.steps:
        # The Stratum runner puts how the job ran under "job" in the step output.
        ran = json_format.MessageToDict(step.output).get("job") or {}
        if not ran.get("job_id"):
            continue
        cpu[step.step_name] = cpu.get(step.step_name, 0.0) + float(ran.get("cpu_seconds") or 0.0)
        job = (await jobs_stub.GetJob(job_service_pb2.GetJobRequest(job_id=ran["job_id"]))).job
        created, assigned = _seconds(job.create_time), _seconds(job.assign_time)
        started, ended = _seconds(job.start_time), _seconds(job.end_time)
        row = rows.setdefault(
            step.step_name, {k: [] for k in ("dispatch", "queue", "launch", "run", "report")}
        )
        row["dispatch"].append(created - _seconds(step.schedule_time))
        row["queue"].append(assigned - created)
        row["launch"].append(started - assigned)
        row["run"].append(ended - started)
        row["report"].append(_seconds(step.close_time) - ended)
    return {
        name: {
            "jobs": len(got["run"]),
            "run_s_total": round(sum(got["run"]), 3),
            "cpu_s_total": round(cpu.get(name, 0.0), 3),
            **{f"{k}_s_mean": round(statistics.fmean(v), 3) for k, v in got.items()},
        }
        for name in STEP_NAMES
        if (got := rows.get(name))
    }


async def platform_run(
    source: Path, work: Path, mode: str, tag: str, timeout: float, insecure: bool = False
) -> dict[str, Any]:
    cfg = StackConfig(
        optimus_port=free_port(), plato_port=free_port(), stratum_port=free_port(), nats_port=free_port(),
        data_dir=work / f"stack-{tag}", log_level="warning", insecure=insecure,
    )  # fmt: skip
    # Optimus takes only files under its storage root, per tenant: <data-dir>/storage/<tenant>/. A hard
    # link puts the (large) source there without a copy.
    storage = cfg.data_dir / "storage" / "default"
    storage.mkdir(parents=True)
    clip = storage / source.name
    os.link(source, clip)
    t0 = time.perf_counter()
    async with EmbeddedStack(cfg) as stack:
        stack_start = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # let the start-up settle (definition registration, agent heartbeat)
        out = storage / f"platform-out-{tag}"
        context = stack.context()
        async with (
            context.channel("optimus") as ch,
            context.channel("plato") as pch,
            context.channel("stratum") as sch,
        ):
            stub = encode_service_pb2_grpc.EncodeServiceStub(ch)
            request = encode_service_pb2.SubmitEncodeRequest(
                request_id=f"bench-{uuid.uuid4().hex}",
                source_uri=clip.as_uri(),
                profiles=list(LADDER),
                output_uri=out.as_uri(),
                quality=MODES[mode],
            )
            load = os.getloadavg()[0]
            cpu0 = stack_cpu(stack)
            submit_wall = time.time()
            t1 = time.perf_counter()
            submitted = (await stub.SubmitEncode(request, timeout=30)).encode
            submit_s = time.perf_counter() - t1
            last = submitted

            async def follow() -> encode_pb2.Encode:
                final = submitted
                watch = encode_service_pb2.WatchEncodeRequest(encode_id=submitted.encode_id)
                async for reply in stub.WatchEncode(watch):
                    final = reply.encode
                    if final.state in TERMINAL:
                        break
                return final

            last = await asyncio.wait_for(follow(), timeout)
            wall = time.perf_counter() - t1
            seen_wall = time.time()
            cpu1 = stack_cpu(stack)
            if last.state != ES.ENCODE_STATE_SUCCEEDED:
                raise RuntimeError(
                    f"encode {submitted.encode_id} ended {ES.Name(last.state)}: "
                    f"{last.failed_step} {last.error_message}"
                )
            events = await history(pch, submitted.encode_id)
            jobs = await step_jobs(pch, sch, submitted.encode_id)
    cpu = {name: {k: round(cpu1[name][k] - cpu0[name][k], 3) for k in ("self", "children")} for name in cpu1}
    return {
        "mode": mode,
        "encode_id": submitted.encode_id,
        "stack_start_s": round(stack_start, 3),
        "load_before": round(load, 2),
        "submit_rpc_s": round(submit_s, 4),
        "wall_s": round(wall, 3),
        "cpu_s": cpu,
        "cpu_s_total": round(sum(v["self"] + v["children"] for v in cpu.values()), 3),
        "phases": phases(events, submit_wall, seen_wall),
        "steps": jobs,
        "renditions": {
            r.profile: {
                "width": r.width,
                "height": r.height,
                "bytes": r.size_bytes,
                "bitrate": r.bitrate_bps,
                "vmaf": round(r.vmaf, 3) if r.quality_frames else None,
                "psnr": round(r.psnr, 3) if r.quality_frames else None,
                "quality_frames": r.quality_frames,
            }
            for r in last.renditions
        },
    }


def tool_startup(samples: int = 5) -> dict[str, float]:
    """Wall and CPU seconds of a media-tool process that does nothing (``profiles``): the fixed cost
    every Stratum job of the pipeline pays before its ffmpeg starts."""
    walls: list[float] = []
    cpus: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(samples):
            t = run_timed("tool", [sys.executable, "-m", "cosmos.optimus.media", "profiles"], Path(tmp))
            walls.append(t.wall_s)
            cpus.append(t.cpu_s)
    return {"wall_s": round(statistics.median(walls), 3), "cpu_s": round(statistics.median(cpus), 3)}


# --------------------------------------------------------------------------- report


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    return report.table(headers, rows, _fmt)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(r: dict[str, Any]) -> str:
    out: list[str] = []
    s = r["settings"]
    out.append(
        f"encode vs hand-written ffmpeg: {s['seconds']:g} s {s['size']} clip at {s['fps']:g} fps, "
        f"ladder {', '.join(LADDER)}; {r['machine']['cpus']} CPUs, {r['machine']['python']}, {r['date']}"
    )
    out.append("")
    rows: list[list[object]] = []
    for label, rnd in r["ffmpeg_rounds"].items():
        rows.append([f"ffmpeg hand command ({label})", rnd["encode"]["wall_s"], rnd["encode"]["cpu_s"],
                     rnd["encode"]["load_before"]])  # fmt: skip
        if "quality" in rnd:
            rows.append([f"  + quality ({label})", rnd["quality"]["wall_s"], rnd["quality"]["cpu_s"],
                         rnd["quality"]["load_before"]])  # fmt: skip
            rows.append([f"  + package + copy ({label})", rnd["package"]["wall_s"] + rnd["publish_s"],
                         rnd["package"]["cpu_s"], rnd["package"]["load_before"]])  # fmt: skip
    for mode, mode_runs in r["platform_runs"].items():
        for run in mode_runs:
            label = f"platform, quality {mode}, round {run['round']}: submit -> SUCCEEDED"
            rows.append([label, run["wall_s"], run["cpu_s_total"], None])
    out.append(table(["run", "wall s", "CPU s", "load avg before"], rows))
    t = r["tool_startup"]
    for mode, p in r["platform"].items():
        out.append("")
        out.append(f"platform, quality {mode}, round {p['round']}: phases (from the workflow history):")
        out.append(table(["phase", "seconds"], list(p["phases"]["durations_s"].items())))
        out.append("")
        steps = p["steps"]
        out.append("Stratum jobs per step (means in seconds; dispatch: step scheduled -> job created, queue:")
        out.append(
            "-> placed, launch: -> process started, run: -> process ended, report: -> step completed):"
        )
        keys = ("dispatch", "queue", "launch", "run", "report")
        out.append(
            table(
                ["step", "jobs", "run s (sum)", "CPU s (sum)", *keys],
                [
                    [n, v["jobs"], v["run_s_total"], v["cpu_s_total"], *(v[f"{k}_s_mean"] for k in keys)]
                    for n, v in steps.items()
                ],
            )
        )
        jobs = sum(v["jobs"] for v in steps.values())
        out.append(
            f"media-tool process start (no work): {t['wall_s']:.2f} s wall, {t['cpu_s']:.2f} s CPU;"
            f" {jobs} jobs"
        )
        cpu = p["cpu_s"]
        out.append(
            "platform CPU s: "
            + ", ".join(f"{n} {v['self']:.1f}" for n, v in cpu.items())
            + f"; jobs (agent's children) {cpu.get('agent', {}).get('children', 0.0):.1f}"
        )
    out.append("")
    rend = []
    for name, h in r["hand_renditions"].items():
        row: list[object] = [name, f"{h['width']}x{h['height']}", h["bitrate"] / 1e6]
        row += [p["renditions"].get(name, {}).get("bitrate", 0) / 1e6 for p in r["platform"].values()]
        row += [r["quality_hand"].get(name, {}).get("vmaf")]
        row += [p["renditions"].get(name, {}).get("vmaf") for p in r["platform"].values()]
        rend.append(row)
    modes = list(r["platform"])
    out.append(
        table(
            ["rendition", "size", "hand Mb/s", *(f"{m} Mb/s" for m in modes), "hand VMAF (all frames)",
             *(f"{m} VMAF" for m in modes)],
            rend,
        )
    )  # fmt: skip
    out.append("")
    out.append(table(["ratio (platform / baseline)", "value"], list(r["ratios"].items())))
    out.append("")
    out.append(
        table(
            ["round", "mode", "platform s", "hand s (around)", "ratio"],
            [
                [run["round"], mode, run["wall_s"], run["hand_wall_s_around"], run["ratio"]]
                for mode, mode_runs in r["platform_runs"].items()
                for run in mode_runs
            ],
        )
    )
    out.append("")
    for mode, g in r["goal"]["modes"].items():
        each = ", ".join(f"{x:.2f}" for x in g["ratios"])
        out.append(
            f"goal: platform / hand-written ffmpeg <= {GOAL_RATIO}, quality {mode}: median {g['ratio']:.2f} "
            f"({'met' if g['met'] else 'NOT met'}; rounds {each}); to assembled {g['encode_assemble']:.2f}"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="clip length (default 60)")
    p.add_argument("--quick", action="store_true", help="a 10 s clip (smoke run)")
    p.add_argument("--size", default="1920x1080", help="clip size (default 1920x1080)")
    p.add_argument("--fps", type=float, default=24.0, help="clip frame rate (default 24)")
    p.add_argument(
        "--modes", default="off,sampled", help="platform quality modes to run, in order (off,sampled,full)"
    )
    p.add_argument(
        "--quality-baseline", action="store_true", help="also time ffmpeg + every-frame quality + package"
    )
    p.add_argument("--rounds", type=int, default=2, help="platform runs per mode, each between hand runs")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds the platform encode may take")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--json-file", type=Path, help="also write the JSON object to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (printed)")
    p.add_argument(
        "--insecure", action="store_true", help="the stack without security (StackConfig(insecure=True))"
    )
    return p.parse_args(argv)


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("round", "encode_id", "wall_s", "hand_wall_s_around", "cpu_s_total", "ratio",
            "encode_assemble_ratio", "cpu_ratio")  # fmt: skip
    return {k: run.get(k) for k in keys}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    seconds = 10.0 if args.quick else args.seconds
    check_same_settings(args.fps)
    work = Path(tempfile.mkdtemp(prefix="cosmos-encode-bench-"))
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print
    try:
        source = work / "source.mp4"
        say(f"making a {seconds:g} s {args.size} test clip in {work} ...")
        subprocess.run(
            [sys.executable, "-m", "cosmos.optimus.media", "make-test-clip", "--out", str(source),
             "--seconds", f"{seconds:g}", "--size", args.size, "--fps", f"{args.fps:g}"],
            check=True, capture_output=True,
        )  # fmt: skip
        info = probe(source, what="source")
        with_rest = args.quality_baseline
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise SystemExit(f"--modes: unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
        # Hand command, then every mode, then the hand command again, round after round: each platform
        # run is compared with the hand runs just before and after it (the shared machine drifts).
        say("ffmpeg hand command (round 0) ...")
        hands = [ffmpeg_round("hand-0", source, info.fps, work, with_rest=with_rest)]
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for i in range(1, args.rounds + 1):
            for mode in modes:
                say(f"platform, quality {mode}, round {i} (fresh embedded stack) ...")
                run = asyncio.run(
                    platform_run(source, work, mode, f"{mode}-{i}", args.timeout, args.insecure)
                )
                run["round"] = i
                runs[mode].append(run)
            say(f"ffmpeg hand command (round {i}) ...")
            hands.append(ffmpeg_round(f"hand-{i}", source, info.fps, work, with_rest=False))
        say("media tool start-up ...")
        startup = tool_startup()
        hand_walls = [h["encode"]["wall_s"] for h in hands]
        hand_cpus = [h["encode"]["cpu_s"] for h in hands]
        hand = statistics.fmean(hand_walls)
        hand_cpu = statistics.fmean(hand_cpus)
        ratios: dict[str, float | None] = {}
        goals: dict[str, dict[str, Any]] = {}
        for mode, mode_runs in runs.items():
            for run in mode_runs:
                i = run["round"]
                around = statistics.fmean(hand_walls[i - 1 : i + 1])
                run["hand_wall_s_around"] = round(around, 3)
                run["ratio"] = round(run["wall_s"] / around, 3)
                run["encode_assemble_ratio"] = round(run["phases"]["encode_assemble_s"] / around, 3)
                run["cpu_ratio"] = round(run["cpu_s_total"] / statistics.fmean(hand_cpus[i - 1 : i + 1]), 3)
            median = statistics.median(r["ratio"] for r in mode_runs)
            ratios[f"quality {mode}: platform / ffmpeg hand command (median)"] = round(median, 3)
            ratios[f"quality {mode}: to assembled / ffmpeg hand command (median)"] = round(
                statistics.median(r["encode_assemble_ratio"] for r in mode_runs), 3
            )
            ratios[f"quality {mode}: platform CPU / ffmpeg hand command CPU (median)"] = round(
                statistics.median(r["cpu_ratio"] for r in mode_runs), 3
            )
            goals[mode] = {
                "ratio": round(median, 3),
                "ratios": [r["ratio"] for r in mode_runs],
                "met": median <= GOAL_RATIO,
                "encode_assemble": round(statistics.median(r["encode_assemble_ratio"] for r in mode_runs), 3),
            }
        plat = {mode: mode_runs[-1] for mode, mode_runs in runs.items()}
        full_baseline = None
        if with_rest:
            # The hand command's mean plus the quality and packaging commands (run once, first).
            first = hands[0]
            full_baseline = (
                hand + first["quality"]["wall_s"] + first["package"]["wall_s"] + first["publish_s"]
            )
            if "full" in runs:
                ratios["quality full: platform / ffmpeg + quality + package (median)"] = round(
                    statistics.median(r["wall_s"] for r in runs["full"]) / full_baseline, 3
                )
        result: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "ffmpeg": ffmpeg_exe(),
            },
            "settings": {
                "seconds": seconds,
                "size": args.size,
                "fps": args.fps,
                "ladder": list(LADDER),
                "security": "off (--insecure)" if args.insecure else "on (mutual TLS)",
            },
            "source": info.to_dict(),
            "ffmpeg_rounds": {f"round {i}": h for i, h in enumerate(hands)},
            "ffmpeg_hand_wall_s_mean": round(hand, 3),
            "ffmpeg_hand_cpu_s_mean": round(hand_cpu, 3),
            "ffmpeg_quality_package_wall_s": round(full_baseline, 3) if full_baseline else None,
            "hand_renditions": hands[0]["renditions"],
            "quality_hand": hands[0].get("quality_figures", {}),
            "platform": plat,
            "platform_runs": {m: [_summary(r) for r in rs] for m, rs in runs.items()},
            "tool_startup": startup,
            "ratios": ratios,
            "goal": {"ratio_max": GOAL_RATIO, "modes": goals},
        }
        if args.json_file:
            args.json_file.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2) if args.json else render(result))
        return 0
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
