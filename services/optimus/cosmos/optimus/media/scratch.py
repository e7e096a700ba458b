"""Removing an encode's scratch (chunks, encoded chunks, renditions, audio, package) when it ends.

The encode workflow runs ``clean`` last, after publishing and after a failure alike: a 30 s title
leaves ~50 MB of scratch, and nothing in it is ever read again (an encode that resumes re-verifies
what it reuses, :func:`cosmos.optimus.media.integrity.verify_chunk`). ``--within`` is the tenant's
scratch area: the directory removed must lie strictly inside it, reached without a symbolic link,
so a templated path can never make ``clean`` remove anything else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from cosmos.optimus.media.ffmpeg import InputError

__all__ = ["clean"]


def clean(work: str, within: str) -> dict[str, Any]:
    """Remove the directory ``work`` (inside ``within``); returns what was removed and what was left.

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
