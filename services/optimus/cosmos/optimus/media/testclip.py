"""A synthetic test clip: moving video (``testsrc2``) and a sine tone, H.264 + AAC, 2 s GOP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cosmos.optimus.media.chunks import gop_frames
from cosmos.optimus.media.ffmpeg import MediaError, Progress, run_ffmpeg
from cosmos.optimus.media.files import replacing
from cosmos.optimus.media.probe import probe

__all__ = ["make_test_clip"]


def make_test_clip(out: str, seconds: float, size: str, fps: float, progress: Progress) -> dict[str, Any]:
    """Write a ``seconds`` long ``size`` clip at ``fps`` to ``out`` (mp4) and return its probe."""
    if not re.fullmatch(r"\d+x\d+", size):
        raise MediaError(f"--size must be WIDTHxHEIGHT, got {size!r}")
    if seconds <= 0 or fps <= 0:
        raise MediaError("--seconds and --fps must be positive")
    out_path = Path(out).absolute()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    gop = gop_frames(fps)
    with replacing(out_path) as tmp:
        run_ffmpeg(
            [
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size={size}:rate={fps:g}:duration={seconds:g}",
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency=440:beep_factor=4:sample_rate=48000:duration={seconds:g}",
                "-map",
                "0:v",
                "-map",
                "1:a",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                "18",
                "-pix_fmt",
                "yuv420p",
                "-g",
                str(gop),
                "-keyint_min",
                str(gop),
                "-sc_threshold",
                "0",
                "-c:a",
                "aac",
                "-b:a",
                "128k",
                "-ac",
                "2",
                "-movflags",
                "+faststart",
                "-f",
                "mp4",
                str(tmp),
            ],
            what="making the test clip",
            progress=progress,
            duration=seconds,
            message="making test clip",
        )
    return probe(out_path, what="test clip").to_dict()
