"""Splitting a source into keyframe-aligned, video-only chunks (stream copy, no re-encode).

ffmpeg's segment muxer cuts at the first keyframe at or after every ``chunk_seconds`` boundary, so each
chunk starts with a keyframe and decodes on its own. Chunks are mp4 (``chunk_00000.mp4`` ...) with
timestamps reset to zero. Their durations are *measured* from the packets (the cut points depend on
where the source's keyframes are), and ``start`` is the running sum, so the chunk list tiles the
source exactly.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from cosmos.optimus.media.ffmpeg import MediaError, Progress, run_ffmpeg
from cosmos.optimus.media.probe import packet_timing, probe

__all__ = ["CHUNK_PATTERN", "GOP_SECONDS", "chunk_index", "chunk_length", "gop_frames", "split"]

CHUNK_PATTERN = "chunk_%05d.mp4"
GOP_SECONDS = 2.0
"""Every rendition's (and the test clip's) fixed, closed GOP: keyframes every 2 s (see :mod:`encode`)."""
_INDEX = re.compile(r"chunk_(\d+)")


def gop_frames(fps: float) -> int:
    """The GOP length in frames at ``fps`` (24 when unknown)."""
    return max(1, round(GOP_SECONDS * (fps or 24.0)))


def chunk_index(path: str) -> int | None:
    """The chunk index encoded in a file name (``.../chunk_00012.mp4`` or ``chunk_00012-720p.mp4`` -> 12)."""
    m = _INDEX.search(Path(path).name)
    return int(m.group(1)) if m else None


def chunk_length(duration: float, chunk_seconds: float, max_chunks: int) -> float:
    """The chunk length to cut at: ``chunk_seconds``, or for a source longer than ``max_chunks`` of
    them, the whole number of GOPs that keeps it to at most ``max_chunks`` chunks (0: no limit)."""
    if max_chunks <= 0 or duration <= chunk_seconds * max_chunks:
        return chunk_seconds
    return math.ceil(duration / max_chunks / GOP_SECONDS) * GOP_SECONDS


def split(
    source: str, work: str, chunk_seconds: float, progress: Progress, max_chunks: int = 0
) -> dict[str, Any]:
    """Split ``source`` into chunks under ``work``; returns ``{"chunks": [...], "duration": total}``.

    ``max_chunks`` (0: no limit) lengthens the chunks of a long source: each chunk is a step of the
    encode workflow, whose whole state must fit in one NATS message (see docs/encoding.md).
    """
    if chunk_seconds <= 0:
        raise MediaError(f"--chunk-seconds must be positive, got {chunk_seconds}")
    if max_chunks < 0:
        raise MediaError(f"--max-chunks must be 0 (no limit) or positive, got {max_chunks}")
    info = probe(source, count_frames=False)
    chunk_seconds = chunk_length(info.duration, chunk_seconds, max_chunks)
    work_dir = Path(work).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    for old in work_dir.glob("chunk_*.mp4"):  # idempotent: a re-run replaces the whole set
        old.unlink()
    run_ffmpeg(
        [
            "-i",
            info.path,
            "-map",
            "0:v:0",
            "-c",
            "copy",
            "-f",
            "segment",
            "-segment_time",
            f"{chunk_seconds:g}",
            "-segment_format",
            "mp4",
            "-reset_timestamps",
            "1",
            str(work_dir / CHUNK_PATTERN),
        ],
        what=f"splitting {info.path}",
        progress=progress.span(0, 90),
        duration=info.duration,
        message="splitting",
    )
    files = sorted(work_dir.glob("chunk_*.mp4"))
    if not files:
        raise MediaError(f"splitting {info.path} produced no chunks")
    chunks: list[dict[str, Any]] = []
    start = 0.0
    for i, f in enumerate(files):
        timing = packet_timing(f)
        chunks.append(
            {
                "index": i,
                "path": str(f),
                "start": round(start, 6),
                "duration": round(timing.duration, 6),
                "frames": timing.frames,
            }
        )
        start += timing.duration
        progress.span(90, 100).report(percent=100.0 * (i + 1) / len(files), message="measuring chunks")
    progress.flush()
    return {
        "chunks": chunks,
        "count": len(chunks),
        "duration": round(start, 6),
        "source": info.path,
        "chunk_seconds": chunk_seconds,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
    }
