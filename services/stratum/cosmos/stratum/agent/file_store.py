"""The ``file://`` store: inputs hard-linked (or copied) into the work dir, outputs copied beside their
destination and renamed into place, never replacing a directory that holds files.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from cosmos.stratum.agent.stores import (
    InputFailed,
    InvalidArtifact,
    OutputExists,
    OutputFailed,
    Owner,
    Store,
    no_space,
)


def file_uri_path(uri: str) -> Path:
    """The local path of a ``file:///abs/path`` (or ``file://localhost/abs/path``) URI."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() != "file":
        raise InvalidArtifact(f"{uri!r} is not a file:// URI")
    if parts.netloc not in ("", "localhost"):
        raise InvalidArtifact(f"{uri!r}: file URIs on another host ({parts.netloc}) are not supported")
    if not parts.path.startswith("/"):
        raise InvalidArtifact(f"{uri!r}: a file URI needs an absolute path (file:///dir/name)")
    return Path(urllib.request.url2pathname(parts.path))


class FileStore(Store):
    """``file://`` URIs: local (or network-mounted) paths.

    Inputs are hard-linked when source and work dir share a file system (no copy of a large media
    file), else copied. A hard link shares the source's data: jobs must treat inputs as read-only and
    write their results to new paths. ``link=False`` always copies.
    """

    def __init__(self, *, link: bool = True) -> None:
        self.link = link

    async def fetch(self, uri: str, dest: Path) -> None:
        src = file_uri_path(uri)
        try:
            await asyncio.to_thread(link_or_copy, src, dest, self.link)
        except FileNotFoundError as exc:
            raise InputFailed(f"input {uri!r} does not exist ({src})") from exc
        except OSError as exc:
            full = no_space(exc, f"cannot copy input {uri!r} to {dest}")
            if full is not None:
                raise full from exc
            raise InputFailed(f"input {uri!r} could not be copied: {exc}") from exc

    async def store(self, src: Path, uri: str, owner: Owner | None = None) -> str:
        dest = file_uri_path(uri)
        try:
            await asyncio.to_thread(_publish, src, dest, owner)
        except OSError as exc:
            full = no_space(exc, f"cannot store output {src.name!r} to {uri!r}")
            if full is not None:
                raise full from exc
            raise OutputFailed(f"output could not be stored to {uri!r}: {exc}") from exc
        return uri


def link_or_copy(src: Path, dest: Path, link: bool) -> None:
    """``src`` (a file or a tree) at ``dest``: hard-linked where ``link`` and the file system allow, else
    copied."""

    def copy_file(s: str, d: str) -> object:
        if link:
            try:
                os.link(s, d)
                return d
            except OSError:
                pass  # another file system, or links not permitted: fall back to copying
        return shutil.copy2(s, d)

    if not src.exists():
        raise FileNotFoundError(src)
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=copy_file)
    else:
        copy_file(str(src), str(dest))


def _publish(src: Path, dest: Path, owner: Owner | None = None) -> None:
    # Copy next to the destination, then rename: a reader never sees a half-written output. A file
    # replaces the file there (a retried attempt); a directory takes the place of nothing or of an
    # empty directory only: one holding files was not written by this attempt and is never removed.
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        for d in made:
            os.chown(d, *owner, follow_symlinks=False)
    if src.is_dir() and (dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir())))):
        raise OutputExists(f"{dest} already exists and is not an empty directory; it is left as it is")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        staged = tmp / dest.name
        if src.is_dir():
            shutil.copytree(src, staged)
        else:
            shutil.copy2(src, staged)
        if owner is not None:
            _chown_tree(staged, owner)
        try:
            os.replace(staged, dest)  # onto a directory that gained files meanwhile: refused (ENOTEMPTY)
        except OSError as exc:
            if src.is_dir() and dest.is_dir():
                raise OutputExists(f"{dest} gained files while the output was copied; left as it is") from exc
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only the copy made here


def _chown_tree(top: Path, owner: Owner) -> None:
    os.chown(top, *owner, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), *owner, follow_symlinks=False)
