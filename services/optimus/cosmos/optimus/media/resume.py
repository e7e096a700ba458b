"""What lets a failed encode resume: chunk outputs addressed by content, reused only when verified.

An encoded chunk is written to ``<out_dir>/<profile>/chunk_NNNNN.<key>.mp4``, where ``key``
(:func:`content_key`) is a hash of everything the bytes depend on: the source (path, size,
modification time), the chunk's place in it (index, start, duration), the profile's encoder settings
and GOP, and the quality mode. The chunk's result (``chunk_NNNNN.json``, what ``assemble`` reads)
names that file and key. So a file is only ever taken for the content it was made from: a source
replaced since, or a profile whose settings changed, gives another key and the chunk is encoded
again. An encode resumed by Plato's RetryWorkflow does not run its completed chunks at all (their
step outputs are kept); a chunk job that does run again (a reset, a redelivery after a crash) reuses a
chunk whose key matches and that decodes whole (:func:`reusable`) instead of encoding it again.

Fault injection, for drills and tests: while ``<work_dir>/.cosmos-fault/encode-<index>`` exists
(``work_dir`` is the encode's scratch directory, the parent of ``--out-dir``), the encode of chunk
``index`` fails with a permanent error (:func:`injected_fault`), so that resuming can be tried on a
real encode.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cosmos.optimus import profiles
from cosmos.optimus.media.ffmpeg import InputError, MediaError
from cosmos.optimus.media.integrity import verify_chunk

__all__ = ["FAULT_DIR", "content_key", "injected_fault", "reusable"]

FAULT_DIR = ".cosmos-fault"
KEY_CHARS = 16
"""Hex digits of the key in a chunk's file name (64 bits: no two contents of one encode meet)."""


class InjectedFault(InputError):
    """The fault a drill asked for (permanent: retrying the step cannot clear it; a retry of the
    workflow after the marker is removed does)."""

    code = "FAULT_INJECTED"


def _identity(path: str) -> dict[str, Any]:
    try:
        info = os.stat(path)
    except OSError:
        return {"path": path}
    return {"path": os.path.abspath(path), "bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def content_key(
    *,
    source: str,
    chunk: str,
    index: int,
    start: float,
    duration: float,
    fps: float,
    chosen: Sequence[profiles.Profile],
    gop: Sequence[Sequence[str]],
    quality: str,
) -> str:
    """The hash naming a chunk's encoded files (see the module docstring)."""
    facts = {
        "source": _identity(source) if source else _identity(chunk),
        "index": index,
        "start": round(start, 6),
        "duration": round(duration, 6),
        "fps": round(fps, 6),
        "profiles": [
            [p.name, p.width, p.height, list(p.args), list(g)] for p, g in zip(chosen, gop, strict=True)
        ],
        "quality": quality,
    }
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def reusable(
    outs: Sequence[Path],
    results: Sequence[Path],
    key: str,
    duration: float,
    named: Sequence[str] | None = None,
) -> list[dict[str, Any]] | None:
    """The recorded results of a chunk already encoded with ``key`` into every one of ``outs``,
    each verified to decode whole to ``duration``; None when any is missing, of another key or
    damaged (then the chunk is encoded again). ``named``: the path each result records for its
    file (default: the absolute path of ``outs``; a portable encode records it relatively)."""
    found = []
    names = [str(o) for o in outs] if named is None else list(named)
    for out, result, name in zip(outs, results, names, strict=True):
        try:
            recorded = json.loads(result.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(recorded, dict) or recorded.get("key") != key or recorded.get("path") != name:
            return None
        try:
            verify_chunk(out, duration)
        except MediaError:
            return None
        found.append(recorded)
    return found


def injected_fault(out_dir: str | Path, index: int) -> None:
    """Raise :class:`InjectedFault` while the drill's marker for chunk ``index`` exists."""
    marker = Path(out_dir).absolute().parent / FAULT_DIR / f"encode-{index}"
    if marker.exists():
        raise InjectedFault(f"chunk {index}: fault injected by {marker} (remove it, then retry the encode)")
