"""Publishing a packaged tree to its destination URI (``file://`` here; ``s3://`` through the agent).

An ``s3://`` destination is published by the agent, not by this tool (the job holds no S3
credentials): :func:`stage_for_s3` links the tree and its manifest into the job's work dir
(``published/``), the encode's publish job names that directory as its output to the ``s3://``
prefix, and the agent uploads it after the job succeeds, refusing a prefix that holds other objects
(a retry of the same tree is done already). The result names the ``s3://`` URIs.

Publishing never deletes what it did not write. The tree is copied into a temporary directory next
to the destination, with a manifest (:data:`MANIFEST`) listing every file written and its digest, and
then renamed into place, so readers see either the old or the new tree, never a half-copied one.

What is already at the destination decides:

- nothing, or an empty directory: the new tree is renamed into place;
- an earlier publish of the very same files (same manifest): nothing to do, the publish succeeds
  (a retried step after a publish that did complete);
- anything else is refused (:class:`OutputExists`, exit 2) unless ``overwrite`` is asked for, and
  overwrite replaces only an earlier Cosmos publish: a directory holding a manifest and *no file the
  manifest does not list*. Any other file there (someone's notes, another tool's output) makes the
  publish refuse rather than guess; the safe choice is to leave it and say so. The earlier tree is
  renamed aside, the new one into place, and then only the files its manifest lists are removed
  from the old one (and its emptied directories); anything that appeared meanwhile is left there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from cosmos.optimus.media.ffmpeg import InputError, Progress
from cosmos.optimus.media.package import MASTER, MPD

__all__ = ["MANIFEST", "SUPPORTED_SCHEMES", "OutputExists", "destination_path", "publish", "read_manifest"]

SUPPORTED_SCHEMES = ("file",)
MANIFEST = ".cosmos-publish.json"
"""The list of files a publish wrote, kept in the published directory."""
MANIFEST_FORMAT = "cosmos-publish/1"


class OutputExists(InputError):
    """The destination holds files this publish may not replace."""


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
    if not path.is_absolute() or path == Path("/") or ".." in path.parts:
        raise InputError(f"destination must be an absolute directory path without '..': {uri!r}")
    return path


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The publish manifest of ``directory`` (its ``files``: relative path → bytes and sha256), or
    None when it holds none (or one that is not Cosmos's: unreadable, malformed, naming ``..``)."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    files = data.get("files")
    if not isinstance(files, dict):
        return None
    for name in files:
        rel = PurePosixPath(name)
        if not name or rel.is_absolute() or ".." in rel.parts or name == MANIFEST:
            return None
    return data


def holds_only_a_publish(directory: Path) -> bool:
    """Whether ``directory`` holds a manifest and no file the manifest does not list."""
    manifest = read_manifest(directory)
    if manifest is None:
        return False
    listed = set(manifest["files"]) | {MANIFEST}
    return all(
        p.relative_to(directory).as_posix() in listed
        for p in directory.rglob("*")
        if not p.is_dir() or p.is_symlink()
    )


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _check_within(dest: Path, within: str | None) -> None:
    """:class:`InputError` unless ``dest`` lies inside ``within``, also after following links (the
    storage area Optimus accepted the output in: a link made since then must not lead out of it)."""
    if within is None:
        return
    area = Path(within)
    real = Path(os.path.realpath(dest))
    real_area = Path(os.path.realpath(area))
    if not dest.is_relative_to(area) or not real.is_relative_to(real_area) or real == real_area:
        raise InputError(f"destination {dest} is outside its storage area {area} (it resolves to {real})")


STAGED = "published"
"""Where :func:`stage_for_s3` puts the tree, relative to the job's work dir (its output path)."""


def stage_for_s3(src: str, to: str, progress: Progress) -> dict[str, Any]:
    """Hard-link the packaged tree ``src`` (and a manifest) into ``./published`` for the agent to
    upload to ``to`` (``s3://bucket/prefix``); the result names the manifests' ``s3://`` URIs."""
    source = Path(src).absolute()
    for name in (MASTER, MPD):
        if not (source / name).is_file():
            raise InputError(f"{source} is not a packaged tree: {name} is missing")
    files = sorted(f for f in source.rglob("*") if f.is_file() and f.name != MANIFEST)
    staged = Path(STAGED).absolute()
    shutil.rmtree(staged, ignore_errors=True)  # this job's own leftover of an earlier try
    for f in files:
        target = staged / f.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
    manifest = {
        "format": MANIFEST_FORMAT,
        "files": {
            f.relative_to(source).as_posix(): {"bytes": f.stat().st_size, "sha256": _digest(f)} for f in files
        },
    }
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    base = to.rstrip("/")
    progress.flush()
    return {
        "uri": base,
        "hls_master_uri": f"{base}/{MASTER}",
        "dash_mpd_uri": f"{base}/{MPD}",
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
    }


def publish(
    src: str, to: str, progress: Progress, *, overwrite: bool = False, within: str | None = None
) -> dict[str, Any]:
    """Copy the packaged directory ``src`` to the directory named by ``to`` (see the module doc),
    which must lie inside ``within`` when given. An ``s3://`` ``to`` is staged for the agent
    (:func:`stage_for_s3`)."""
    if urlparse(to).scheme == "s3":
        if overwrite:
            raise InputError("overwrite is not supported for s3:// outputs (publish to a new prefix)")
        return stage_for_s3(src, to, progress)
    dest = destination_path(to)
    _check_within(dest, within)
    source = Path(src).absolute()
    if not source.is_dir():
        raise InputError(f"packaged directory not found: {source}")
    for name in (MASTER, MPD):
        if not (source / name).is_file():
            raise InputError(f"{source} is not a packaged tree: {name} is missing")
    files = sorted(f for f in source.rglob("*") if f.is_file() and f.name != MANIFEST)
    total = sum(f.stat().st_size for f in files)
    result = {
        "uri": dest.as_uri(),
        "hls_master_uri": (dest / MASTER).as_uri(),
        "dash_mpd_uri": (dest / MPD).as_uri(),
        "files": len(files),
        "bytes": total,
    }
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "files": {
            f.relative_to(source).as_posix(): {"bytes": f.stat().st_size, "sha256": _digest(f)} for f in files
        },
    }
    replacing = _existing(dest, manifest, overwrite)
    if replacing == "same":
        progress.flush()
        return result
    dest.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}"
    tmp = dest.with_name(f".{dest.name}.tmp-{tag}")
    old = dest.with_name(f".{dest.name}.old-{tag}")
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover of an earlier attempt of this process id
    moved_aside = False
    try:
        done = 0
        tmp.mkdir()
        for f in files:
            target = tmp / f.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            done += f.stat().st_size
            progress.report(percent=100.0 * done / total if total else 100.0, message="publishing")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        _check_within(dest, within)  # again, right before the rename
        if replacing == "publish":
            dest.rename(old)
            moved_aside = True
        # Renaming onto an empty directory replaces it; onto one that gained files meanwhile fails.
        try:
            tmp.rename(dest)
        except OSError:
            if moved_aside:
                old.rename(dest)  # put the earlier publish back as it was
                moved_aside = False
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only ever our own copy
        if moved_aside:
            _remove_published(old)
    progress.flush()
    return result


def _existing(dest: Path, manifest: dict[str, Any], overwrite: bool) -> str:
    """What is at ``dest``: ``none`` (absent or empty), ``same`` (this very publish), ``publish``
    (an earlier Cosmos publish that overwrite may replace); :class:`OutputExists` otherwise."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise OutputExists(f"destination {dest} exists and is not a directory; refusing to replace it")
    if not dest.exists() or not any(dest.iterdir()):
        return "none"
    earlier = read_manifest(dest)
    if earlier is not None and earlier["files"] == manifest["files"] and holds_only_a_publish(dest):
        return "same"
    if not overwrite:
        raise OutputExists(
            f"destination {dest} is not empty; pass --overwrite to replace an earlier Cosmos publish"
        )
    if earlier is None:
        raise OutputExists(
            f"destination {dest} holds files Cosmos did not publish (no {MANIFEST}); "
            "overwrite replaces only an earlier Cosmos publish"
        )
    if not holds_only_a_publish(dest):
        raise OutputExists(
            f"destination {dest} holds files its {MANIFEST} does not list; move them away or publish "
            "elsewhere (overwrite never deletes what Cosmos did not write)"
        )
    return "publish"


def _remove_published(old: Path) -> None:
    """Remove from ``old`` (an earlier publish renamed aside) only the files its manifest lists, then
    its emptied directories; anything else stays (and so does ``old``, then)."""
    manifest = read_manifest(old)
    names = [*(manifest["files"] if manifest else []), MANIFEST]
    for name in names:
        path = old.joinpath(*PurePosixPath(name).parts)
        # What cannot be removed stays: never worse than keeping it.
        with contextlib.suppress(OSError):
            if path.is_symlink() or path.is_file():
                path.unlink()
    for directory in sorted((d for d in old.rglob("*") if d.is_dir() and not d.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):  # not empty: holds something that is not ours
            directory.rmdir()
    with contextlib.suppress(OSError):
        old.rmdir()
