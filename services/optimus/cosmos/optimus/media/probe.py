"""Probing media without ffprobe: ``ffmpeg -i`` for the stream layout, a packet dump for exact timing.

The bundled ffmpeg has no ffprobe, so :func:`probe` parses the stream summary ``ffmpeg -i`` prints and,
for frame-exact numbers, reads the first video stream's packets with ``-c copy -f framecrc`` (no
decoding; every packet's pts and duration in the stream time base). ``duration`` is the video duration
measured from those packets (first pts to last pts + duration), ``frames`` the packet count. A file
whose packets end well before its container's duration, or that the demuxer finds cut short, is
refused as truncated (:mod:`integrity`).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from cosmos.optimus.media.ffmpeg import InputError, run_capture, stderr_tail

__all__ = ["MediaInfo", "PacketTiming", "framecrc_timing", "packet_timing", "probe", "require_file"]

_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_BITRATE = re.compile(r"Duration: .*?bitrate: (\d+) kb/s")
_VIDEO = re.compile(r"Stream #\d+:\d+\S*: Video: ([a-z0-9_]+)(.*)")
_AUDIO = re.compile(r"Stream #\d+:\d+\S*: Audio: ([a-z0-9_]+)")
_SIZE = re.compile(r"\b(\d{2,5})x(\d{2,5})\b")
_FPS = re.compile(r"([\d.]+)(k?) (?:fps|tbr)\b")


@dataclass
class MediaInfo:
    """What the pipeline needs to know about a file (the ``probe`` command's result)."""

    path: str
    duration: float
    width: int
    height: int
    fps: float
    video_codec: str
    has_audio: bool
    audio_codec: str | None
    bitrate: int
    frames: int
    container_duration: float | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON result."""
        return asdict(self)


@dataclass
class PacketTiming:
    """Timing of a video stream measured from its packets (or decoded frames)."""

    frames: int
    start: float
    duration: float
    partial: bool = False
    """The demuxer found the file cut short (``partial file``: data the index points to is missing)."""


def require_file(path: str | os.PathLike[str], what: str = "source") -> Path:
    """``path`` as an absolute Path; :class:`InputError` (exit 2) when it is missing or not a file."""
    p = Path(path).absolute()
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    if not p.is_file():
        raise InputError(f"{what} is not a file: {p}")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} is not readable: {p}")
    return p


def packet_timing(path: Path) -> PacketTiming:
    """Frames, first pts and duration of the first video stream, from a packet dump (no decode)."""
    rc, out, err = run_capture(
        ["-loglevel", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"],
        what=f"reading packets of {path}",
        check=False,
    )
    if rc != 0:
        raise InputError(f"cannot read video packets of {path}: {stderr_tail(err)}")
    timing = framecrc_timing(out)
    timing.partial = "partial file" in err
    return timing


def framecrc_timing(out: str) -> PacketTiming:
    """Frames, first pts and duration of stream 0 in a ``framecrc`` listing."""
    tb = Fraction(1, 1)
    first: int | None = None
    end: int | None = None
    frames = 0
    for line in out.splitlines():
        if line.startswith("#tb 0:"):
            tb = Fraction(line.split(":", 1)[1].strip())
            continue
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or parts[0] != "0":
            continue
        pts, dur = int(parts[2]), int(parts[3])
        frames += 1
        first = pts if first is None else min(first, pts)
        end = pts + dur if end is None else max(end, pts + dur)
    if first is None or end is None:
        return PacketTiming(0, 0.0, 0.0)
    return PacketTiming(frames, float(first * tb), float((end - first) * tb))


def _seconds(m: re.Match[str]) -> float:
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def probe(path: str | os.PathLike[str], *, what: str = "source", count_frames: bool = True) -> MediaInfo:
    """Probe ``path``; :class:`InputError` (exit 2) if it is missing, unreadable or has no video."""
    p = require_file(path, what)
    _, _, err = run_capture(["-i", str(p)], what=f"probing {p}", check=False)
    video = _VIDEO.search(err)
    if video is None:
        if "Invalid data found" in err or "Input #0" not in err:
            raise InputError(f"{what} is not a readable media file: {p}: {stderr_tail(err, 2)}")
        raise InputError(f"{what} has no video stream: {p}")
    codec, details = video.group(1), video.group(2)
    size = _SIZE.search(details)
    if size is None:
        raise InputError(f"{what}: cannot read the video frame size of {p}")
    fps = 0.0
    fps_m = _FPS.search(details)
    if fps_m:
        fps = float(fps_m.group(1)) * (1000 if fps_m.group(2) else 1)
    audio = _AUDIO.search(err)
    dur_m = _DURATION.search(err)
    container = _seconds(dur_m) if dur_m else None
    bitrate_m = _BITRATE.search(err)
    bitrate = int(bitrate_m.group(1)) * 1000 if bitrate_m else 0
    duration = container or 0.0
    frames = round(duration * fps) if fps else 0
    if count_frames:
        timing = packet_timing(p)
        if timing.frames:
            frames, duration = timing.frames, timing.duration
            if not fps and duration:
                fps = frames / duration
        from cosmos.optimus.media.integrity import check_complete

        check_complete(p, what, container, timing)
    if not bitrate and duration:
        bitrate = int(p.stat().st_size * 8 / duration)
    return MediaInfo(
        path=str(p),
        duration=round(duration, 6),
        width=int(size.group(1)),
        height=int(size.group(2)),
        fps=round(fps, 3),
        video_codec=codec,
        has_audio=audio is not None,
        audio_codec=audio.group(1) if audio else None,
        bitrate=bitrate,
        frames=frames,
        container_duration=container,
    )
