"""Objective quality against the source: VMAF and PSNR, for every frame or a sample of frames.

The distorted stream is scaled back to the reference's frame size (bicubic, as a player would upscale)
and both are converted to yuv420p; then one filtergraph per rendition feeds ``libvmaf`` (the built-in
default model, ``vmaf_v0.6.1``, pooled mean) and ``psnr`` (the mean of the per-frame averages over Y, U
and V, weighted 4:1:1; the ``psnr_y`` mean is reported too).

Modes (:class:`QualityMode`): ``full`` measures every frame; ``sampled`` (the encode ladder's default)
measures about one frame per second; ``off`` measures nothing. VMAF of a 1080p frame costs about ten
times its x264 veryfast encode on one core, so measuring every frame triples the work of a ladder;
one frame a second adds a few percent (docs/encoding.md has the figures). The sample stride is coprime
with the GOP length and counted on the title's frame numbers (a chunk passes its first frame number),
so over a title every position in the GOP — I, P and B frames alike — is sampled, not just keyframes.

The chains built here are used two ways: by the chunk encoder (:mod:`encode`), which measures its own
output in the same ffmpeg process through loopback decoders (the source is decoded once for encoding
and measuring), and by the standalone ``quality`` command below (any file against a reference).
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmos.optimus import profiles
from cosmos.optimus.media.chunks import chunk_index, gop_frames
from cosmos.optimus.media.ffmpeg import MediaError, Progress, run_ffmpeg
from cosmos.optimus.media.probe import probe

__all__ = [
    "Measurement",
    "QualityMode",
    "aggregate",
    "measure_chains",
    "measure_outputs",
    "parse_measurements",
    "quality",
    "sample_stride",
]

_PSNR = re.compile(
    r"\[psnr@q(\d+) @ [^\]]*\] PSNR y:([\d.]+|inf) u:[\d.inf]+ v:[\d.inf]+ average:([\d.]+|inf)"
)


class QualityMode(enum.StrEnum):
    """How much of a rendition is measured."""

    SAMPLED = "sampled"
    """About one frame per second (a stride coprime with the GOP length); the default."""
    FULL = "full"
    """Every frame."""
    OFF = "off"
    """Nothing: no VMAF or PSNR."""


def sample_stride(mode: QualityMode, fps: float) -> int:
    """Measure every ``n``-th frame: 1 for ``full``; for ``sampled`` the smallest stride of at least one
    second's worth of frames that shares no factor with the GOP length (so samples walk through it)."""
    if mode is QualityMode.FULL:
        return 1
    stride = max(2, round(fps or 24.0))
    while math.gcd(stride, gop_frames(fps)) != 1:
        stride += 1
    return stride


@dataclass(frozen=True)
class Measurement:
    """The mean quality of one rendition over the measured frames."""

    vmaf: float
    psnr: float
    psnr_y: float
    frames: int

    def to_dict(self) -> dict[str, Any]:
        return {"vmaf": self.vmaf, "psnr": self.psnr, "psnr_y": self.psnr_y, "quality_frames": self.frames}


def _sampled(stride: int, first_frame: int) -> str:
    # select before any scaling so skipped frames cost only their decode; then number the kept frames
    # 0, 1, 2... on both sides, so libvmaf and psnr pair reference and distorted frames by order.
    pick = f"select='not(mod(n+{first_frame}\\,{stride}))'," if stride > 1 else ""
    return f"{pick}settb=1/1000,setpts=N*40"


def measure_chains(
    reference: str,
    distorted: Sequence[str],
    *,
    width: int,
    height: int,
    stride: int,
    first_frame: int,
    logs: Sequence[Path],
    threads: int,
) -> tuple[list[str], list[str]]:
    """Filter chains measuring each ``distorted[i]`` pad against the ``reference`` pad (``[0:v:0]``-style
    labels) at ``width`` x ``height``; returns the chains and the output labels to map to null outputs.
    VMAF of rendition ``i`` is logged to ``logs[i]``; its PSNR filter is named ``psnr@q<i>``."""
    n = len(distorted)
    pick = _sampled(stride, first_frame)
    refs = "".join(f"[qr{i}a][qr{i}b]" for i in range(n))
    chains = [f"{reference}setpts=PTS-STARTPTS,{pick},format=yuv420p,split={2 * n}{refs}"]
    outs: list[str] = []
    vmaf_threads = f":n_threads={threads}" if threads > 0 else f":n_threads={os.cpu_count() or 1}"
    for i, label in enumerate(distorted):
        chains.append(
            f"{label}setpts=PTS-STARTPTS,{pick},scale={width}:{height}:flags=bicubic,format=yuv420p,"
            f"split=2[qd{i}a][qd{i}b]"
        )
        chains.append(f"[qd{i}a][qr{i}a]libvmaf=log_path={logs[i]}:log_fmt=json{vmaf_threads}[qv{i}]")
        chains.append(f"[qd{i}b][qr{i}b]psnr@q{i}[qp{i}]")
        outs += [f"[qv{i}]", f"[qp{i}]"]
    return chains, outs


def measure_outputs(labels: Sequence[str]) -> list[str]:
    """ffmpeg output options sending each measuring chain's frames nowhere."""
    args: list[str] = []
    for label in labels:
        args += ["-map", label, "-fps_mode", "passthrough", "-f", "null", "-"]
    return args


def aggregate(measured: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One rendition's quality from its chunks' measurements: means weighted by the frames each chunk
    measured (``quality_frames``; older results: ``frames``), and how many chunks and frames went in.
    Results without a ``vmaf`` (quality off) are skipped; none at all gives ``None`` scores."""

    def weight(q: dict[str, Any]) -> float:
        return float(q.get("quality_frames") or q.get("frames") or q.get("duration") or 1.0)

    qs = [q for q in measured if isinstance(q.get("vmaf"), int | float)]
    total = sum(weight(q) for q in qs)

    def mean(key: str) -> float | None:
        pairs = [(float(q[key]), weight(q)) for q in qs if isinstance(q.get(key), int | float)]
        return round(sum(v * w for v, w in pairs) / total, 3) if pairs and total else None

    return {
        "vmaf": mean("vmaf"),
        "psnr": mean("psnr"),
        "psnr_y": mean("psnr_y"),
        "quality_chunks": len(qs),
        "quality_frames": sum(int(q.get("quality_frames") or q.get("frames") or 0) for q in qs),
    }


def _psnr_value(text: str) -> float:
    return 100.0 if text == "inf" else float(text)  # identical frames: report a finite ceiling


def parse_measurements(stderr: str, logs: Sequence[Path]) -> list[Measurement]:
    """Read each rendition's VMAF log and the ``psnr@q<i>`` summaries from ffmpeg's (info-level) log."""
    psnr = {int(m.group(1)): m for m in _PSNR.finditer(stderr)}
    results: list[Measurement] = []
    for i, log in enumerate(logs):
        try:
            data = json.loads(log.read_text())
            vmaf = float(data["pooled_metrics"]["vmaf"]["mean"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MediaError(f"libvmaf wrote no readable log ({log.name}): {exc}") from None
        m = psnr.get(i)
        if m is None:
            raise MediaError(f"the psnr filter printed no summary for rendition {i}")
        frames = len(data.get("frames") or [])
        results.append(
            Measurement(
                vmaf=round(vmaf, 3),
                psnr=round(_psnr_value(m.group(3)), 3),
                psnr_y=round(_psnr_value(m.group(2)), 3),
                frames=frames,
            )
        )
    return results


def quality(
    reference: str,
    distorted: str,
    profile_name: str,
    index: int | None,
    progress: Progress,
    *,
    mode: QualityMode = QualityMode.FULL,
    first_frame: int = 0,
) -> dict[str, Any]:
    """Measure ``distorted`` against ``reference``; returns mean VMAF and PSNR and the frames measured."""
    profiles.get(profile_name)
    if mode is QualityMode.OFF:
        raise MediaError("--mode off measures nothing; use full or sampled")
    ref = probe(reference, what="reference", count_frames=False)
    dist = probe(distorted, what="distorted", count_frames=False)
    with tempfile.TemporaryDirectory(prefix="cosmos-vmaf-") as tmp:
        logs = [Path(tmp) / "vmaf.json"]
        chains, outs = measure_chains(
            "[1:v:0]",
            ["[0:v:0]"],
            width=ref.width,
            height=ref.height,
            stride=sample_stride(mode, ref.fps),
            first_frame=first_frame,
            logs=logs,
            threads=0,
        )
        run = run_ffmpeg(
            ["-i", dist.path, "-i", ref.path, "-filter_complex", ";".join(chains), *measure_outputs(outs)],
            what=f"measuring quality of {dist.path}",
            progress=progress,
            duration=ref.duration,
            message=f"vmaf {profile_name}",
            loglevel="info",
        )
        (measured,) = parse_measurements(run.stderr, logs)
    if index is None:
        index = chunk_index(reference)
    if index is None:
        index = chunk_index(distorted)
    return {
        **measured.to_dict(),
        "profile": profile_name,
        "index": index,
        "mode": mode.value,
        "frames": measured.frames,
        "duration": ref.duration,
        "reference": ref.path,
        "distorted": dist.path,
    }
