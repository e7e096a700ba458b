"""Publishing a packaged tree to its destination URI (``file://`` only, for now).

The tree is copied into a temporary directory next to the destination and then renamed into place
(an existing destination is moved aside first and removed afterwards), so readers see either the old
or the new tree, never a half-copied one, and a re-run simply replaces it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cosmos.optimus.media.ffmpeg import InputError, Progress
from cosmos.optimus.media.package import MASTER, MPD

__all__ = ["SUPPORTED_SCHEMES", "destination_path", "publish"]

SUPPORTED_SCHEMES = ("file",)


def destination_path(uri: str) -> Path:
    """The local directory a ``file://`` URI names; :class:`InputError` for any other scheme."""
    parsed = urlparse(uri)
    if parsed.scheme not in SUPPORTED_SCHEMES:
        scheme = parsed.scheme or "(none)"
        raise InputError(
            f"unsupported URI scheme {scheme!r} in {uri!r}; supported: "
            + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        )
    if parsed.netloc not in ("", "localhost"):
        raise InputError(f"file:// URI with a remote host is not supported: {uri!r}")
    path = Path(unquote(parsed.path))
    if not path.is_absolute() or path == Path("/"):
        raise InputError(f"destination must be an absolute directory path: {uri!r}")
    return path


def publish(src: str, to: str, progress: Progress) -> dict[str, Any]:
    """Copy the packaged directory ``src`` to the directory named by ``to``."""
    dest = destination_path(to)
    source = Path(src).absolute()
    if not source.is_dir():
        raise InputError(f"packaged directory not found: {source}")
    for name in (MASTER, MPD):
        if not (source / name).is_file():
            raise InputError(f"{source} is not a packaged tree: {name} is missing")
    files = sorted(f for f in source.rglob("*") if f.is_file())
    total = sum(f.stat().st_size for f in files)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}"
    tmp = dest.with_name(f".{dest.name}.tmp-{tag}")
    old = dest.with_name(f".{dest.name}.old-{tag}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        done = 0
        for f in files:
            target = tmp / f.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            done += f.stat().st_size
            progress.report(percent=100.0 * done / total if total else 100.0, message="publishing")
        tmp.mkdir(exist_ok=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    progress.flush()
    return {
        "uri": dest.as_uri(),
        "hls_master_uri": (dest / MASTER).as_uri(),
        "dash_mpd_uri": (dest / MPD).as_uri(),
        "files": len(files),
        "bytes": total,
    }
