"""Objective quality of an encoded chunk against its source chunk: VMAF and PSNR in one decode.

The distorted stream is scaled back to the reference's frame size (bicubic, as a player would upscale)
and both are converted to yuv420p with timestamps starting at zero; then one filtergraph feeds
``libvmaf`` (the built-in default model, ``vmaf_v0.6.1``, pooled mean) and ``psnr`` (the mean of the
per-frame averages over Y, U and V, weighted 4:1:1; the ``psnr_y`` mean is reported too).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from cosmos.optimus import profiles
from cosmos.optimus.media.chunks import chunk_index
from cosmos.optimus.media.ffmpeg import MediaError, Progress, run_ffmpeg
from cosmos.optimus.media.probe import probe

__all__ = ["quality"]

_PSNR = re.compile(r"PSNR y:([\d.]+|inf) u:([\d.]+|inf) v:([\d.]+|inf) average:([\d.]+|inf)")


def _psnr_value(text: str) -> float:
    return 100.0 if text == "inf" else float(text)  # identical frames: report a finite ceiling


def quality(
    reference: str, distorted: str, profile_name: str, index: int | None, progress: Progress
) -> dict[str, Any]:
    """Measure ``distorted`` against ``reference``; returns mean VMAF and PSNR and the frame count."""
    profiles.get(profile_name)
    ref = probe(reference, what="reference", count_frames=False)
    dist = probe(distorted, what="distorted", count_frames=False)
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="cosmos-vmaf-") as tmp:
        log = Path(tmp) / "vmaf.json"
        graph = (
            f"[0:v]scale={ref.width}:{ref.height}:flags=bicubic,setpts=PTS-STARTPTS,format=yuv420p,"
            "split=2[d1][d2];"
            "[1:v]setpts=PTS-STARTPTS,format=yuv420p,split=2[r1][r2];"
            f"[d1][r1]libvmaf=log_path={log}:log_fmt=json:n_threads={threads}[vmaf];"
            "[d2][r2]psnr[psnr]"
        )
        run = run_ffmpeg(
            [
                "-i",
                dist.path,
                "-i",
                ref.path,
                "-filter_complex",
                graph,
                "-map",
                "[vmaf]",
                "-f",
                "null",
                "-",
                "-map",
                "[psnr]",
                "-f",
                "null",
                "-",
            ],
            what=f"measuring quality of {dist.path}",
            progress=progress,
            duration=ref.duration,
            message=f"vmaf {profile_name}",
            loglevel="info",
        )
        try:
            data = json.loads(log.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MediaError(f"libvmaf wrote no readable log: {exc}") from None
    frames = data.get("frames") or []
    vmaf = float(data["pooled_metrics"]["vmaf"]["mean"])
    summaries = list(_PSNR.finditer(run.stderr))
    if not summaries:
        raise MediaError("the psnr filter printed no summary")
    m = summaries[-1]
    if index is None:
        index = chunk_index(reference)
    if index is None:
        index = chunk_index(distorted)
    return {
        "vmaf": round(vmaf, 3),
        "psnr": round(_psnr_value(m.group(4)), 3),
        "psnr_y": round(_psnr_value(m.group(1)), 3),
        "profile": profile_name,
        "index": index,
        "frames": len(frames),
        "duration": ref.duration,
        "reference": ref.path,
        "distorted": dist.path,
    }
