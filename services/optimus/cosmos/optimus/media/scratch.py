"""Removing an encode's scratch (chunks, encoded chunks, renditions, audio, package) when it ends.

The encode workflow runs ``clean`` last, after publishing: a 30 s title leaves ~50 MB of scratch, and
nothing in it is read again. After a failure it runs ``clean --keep-resumable``: the outputs of the
steps that completed (cut chunks, encoded chunks, audio, renditions) are what a retry of the encode
reuses (``cosmos encode --retry``, docs/encoding.md), so only stale partial files go (a write cut
short before its rename, untouched for :data:`STALE_PARTIAL_S`: chunk jobs still running while the
failure is handled keep theirs). Such scratch stays until the encode is retried to success, whose ``clean``
removes it all, or until it is removed by hand (``python -m cosmos.optimus.media clean``).
``--within`` is the tenant's
scratch area: the directory removed must lie strictly inside it, reached without a symbolic link,
so a templated path can never make ``clean`` remove anything else.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from cosmos.optimus.media.ffmpeg import InputError

__all__ = ["STALE_PARTIAL_S", "clean"]

STALE_PARTIAL_S = 120.0
"""A partial file (``.NAME.tmp-PID``) not written to for this long belongs to a writer that is gone."""


def clean(work: str, within: str, keep_resumable: bool = False) -> dict[str, Any]:
    """Remove the directory ``work`` (inside ``within``); returns what was removed and what was left.
    With ``keep_resumable``, remove only the partial files in it and keep the rest for a retry.

    Removal problems are reported (``left``), not raised: the encode's result does not depend on them
    and a failed clean after a publish must not fail the encode. An unsafe ``work`` is refused (exit 2).
    """
    if not work or not within:
        raise InputError("clean needs --work and --within")
    area = Path(within).absolute()
    target = Path(work).absolute()
    if os.path.normpath(target) != str(target) or not target.is_relative_to(area) or target == area:
        raise InputError(f"--work {target} is not a directory inside --within {area}")
    # No link on the way down from the area: a link could point anywhere.
    current = area
    for part in target.relative_to(area).parts:
        current = current / part
        if current.is_symlink():
            raise InputError(f"--work: {current} is a symbolic link; refusing to clean through it")
    if not target.exists():
        return {"removed": str(target), "bytes": 0, "files": 0, "left": 0}
    if not target.is_dir():
        raise InputError(f"--work {target} is not a directory")
    if keep_resumable:
        return _remove_partials(target)
    size = files = 0
    for dirpath, _, filenames in os.walk(target):
        for name in filenames:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
            except OSError:
                continue
    shutil.rmtree(target, ignore_errors=True)
    left = sum(len(f) for _, _, f in os.walk(target)) if target.exists() else 0
    return {"removed": str(target), "bytes": size, "files": files, "left": left}


def _remove_partials(target: Path) -> dict[str, Any]:
    """Remove what :func:`cosmos.optimus.media.files.replacing` left half-written (``.NAME.tmp-PID``)
    and nobody writes any more. Never read (they are never renamed into place), they only take space."""
    removed = kept = size = 0
    stale_before = time.time() - STALE_PARTIAL_S
    for dirpath, _, filenames in os.walk(target):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.startswith(".") and ".tmp-" in name:
                try:
                    if os.lstat(path).st_mtime > stale_before:
                        continue  # still being written, by a chunk job that has not ended yet
                    os.unlink(path)
                    removed += 1
                except OSError:
                    continue
            else:
                try:
                    size += os.lstat(path).st_size
                    kept += 1
                except OSError:
                    continue
    return {"kept": str(target), "bytes": size, "files": kept, "partial_removed": removed}
