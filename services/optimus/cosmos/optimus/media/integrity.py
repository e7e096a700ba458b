"""Is a media file whole? Truncation from its own numbers, corruption by decoding it.

* **Truncated**: :func:`check_complete` (run by every counting probe) compares the container's
  duration with where the video packets actually end, and trusts the demuxer's ``partial file``
  (an mp4 whose index points past the end of the file). A truncated mp4 otherwise *probes* fine
  and encodes into a short output.
* **Corrupt**: only decoding finds damaged frames. The chunk encode decodes with ``-xerror``
  (the first damaged frame fails it, permanently, naming the source), and :func:`verify_chunk`
  decodes a produced chunk or rendition completely: an encode that resumes reuses a chunk only
  when it decodes without an error to the expected duration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmos.optimus.media.ffmpeg import CorruptMedia, MediaError, run_capture, stderr_tail
from cosmos.optimus.media.probe import PacketTiming, framecrc_timing, require_file

__all__ = ["TRUNCATION_SLACK_S", "Decoded", "check_complete", "decode", "verify_chunk"]

TRUNCATION_SLACK_S = 1.0
TRUNCATION_SLACK_RATIO = 0.05
"""Video may end up to max(1 s, 5 %) before the container's duration (audio a little longer than
video is common); a file ending earlier is truncated."""


def check_complete(path: Path, what: str, container: float | None, timing: PacketTiming) -> None:
    """Raise :class:`CorruptMedia` naming ``path`` when its packets show it was cut short."""
    if timing.partial:
        raise CorruptMedia(
            f"{what} {path} is truncated: the file ends before the data its index points to "
            f"(video packets end at {timing.start + timing.duration:.3f} s"
            + (f" of {container:.3f} s)" if container else ")")
        )
    if not container:
        return
    end = timing.start + timing.duration
    if end + max(TRUNCATION_SLACK_S, TRUNCATION_SLACK_RATIO * container) < container:
        raise CorruptMedia(
            f"{what} {path} is truncated: its container says {container:.3f} s but its video packets "
            f"end at {end:.3f} s"
        )


@dataclass(frozen=True)
class Decoded:
    """The first video stream of a file, decoded completely."""

    frames: int
    duration: float


def decode(path: str | Path, what: str = "file") -> Decoded:
    """Decode the first video stream of ``path`` to the end; :class:`CorruptMedia` on any decode
    error (``-xerror``) or a cut-short file."""
    p = require_file(path, what)
    rc, out, err = run_capture(
        ["-v", "error", "-xerror", "-i", str(p), "-map", "0:v:0", "-f", "framecrc", "-"],
        what=f"decoding {p}",
        check=False,
    )
    if rc != 0 or "partial file" in err:
        raise CorruptMedia(f"{what} {p} does not decode: {stderr_tail(err, 2) or f'ffmpeg exit {rc}'}")
    timing = framecrc_timing(out)
    return Decoded(timing.frames, timing.duration)


def verify_chunk(path: str | Path, expected_duration: float, *, what: str = "chunk") -> dict[str, Any]:
    """Check that an encoded chunk (or rendition) is whole before anything reuses it.

    It must decode without an error to ``expected_duration`` within one frame, and when its result
    file (``chunk_NNNNN.json`` beside ``chunk_NNNNN[.<key>].mp4``, written after the chunk) is there
    and names this file, have the size recorded in it.
    Returns ``{"path", "frames", "duration", "bytes"}``; raises :class:`MediaError` saying why not.
    """
    p = require_file(path, what)
    size = p.stat().st_size
    recorded = p.with_name(p.name.split(".")[0] + ".json")
    if recorded.is_file():
        try:
            result = json.loads(recorded.read_text())
            expected_bytes = result.get("bytes") if result.get("path", str(p)) == str(p) else None
        except (OSError, ValueError, AttributeError) as exc:
            raise MediaError(f"{what} {p}: unreadable result {recorded}: {exc}") from None
        if isinstance(expected_bytes, int) and expected_bytes != size:
            raise MediaError(f"{what} {p} has {size} bytes, its result records {expected_bytes}")
    decoded = decode(p, what)
    if decoded.frames == 0:
        raise CorruptMedia(f"{what} {p} holds no video frames")
    frame = decoded.duration / decoded.frames
    if abs(decoded.duration - expected_duration) > frame + 1e-3:
        raise MediaError(
            f"{what} {p} decodes to {decoded.duration:.3f} s, expected {expected_duration:.3f} s"
        )
    return {"path": str(p), "frames": decoded.frames, "duration": round(decoded.duration, 6), "bytes": size}
