"""Which published files the console may serve: only beside an encode's HLS master, only under the
console's storage roots (the path checks behind ``/encodes/ID/media/...``), from a local directory or
an ``s3://`` root; and the content types the player needs for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from cosmos.security import storage

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".ts": "video/mp2t",
    ".vtt": "text/vtt",
}
"""What a published file is served as (by its suffix); anything else is ``application/octet-stream``."""


def content_type(name: str) -> str:
    """The ``Content-Type`` of a published file."""
    return CONTENT_TYPES.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")


def _relative_ok(relative: str) -> bool:
    """A path below the master's directory: no absolute path, backslash, empty, '.' or '..' segment."""
    if not relative or relative.startswith("/") or "\\" in relative or "\0" in relative:
        return False
    return all(segment not in ("", ".", "..") for segment in relative.split("/"))


def media_source(master_uri: str, relative: str, roots: Sequence[storage.Root]) -> Path | str | None:
    """Where the published file ``relative`` beside the HLS master at ``master_uri`` is: a local
    :class:`~pathlib.Path` (an existing file under a directory root), an ``s3://`` URI (lexically
    under an ``s3://`` root, as :func:`cosmos.security.storage.check_object_uri` judges keys), or None
    when it is neither. Whether the user may read the encode is checked before (with their token)."""
    if not _relative_ok(relative):
        return None
    if urlparse(master_uri).scheme == "s3":
        directory = master_uri.rsplit("/", 1)[0]
        try:
            return storage.check_object_uri(
                f"{directory}/{relative}", roots, storage.DEFAULT_TENANT, "media", all_tenants=True
            )
        except storage.OutsideStorageRoot:
            return None
    return media_file(master_uri, relative, [r for r in roots if isinstance(r, Path)])


def media_file(master_uri: str, relative: str, roots: Sequence[Path]) -> Path | None:
    """The published file ``relative`` beside the HLS master at ``master_uri``, when the master is a
    local file under one of ``roots`` and ``relative`` stays inside its directory; else None."""
    parsed = urlparse(master_uri)
    if parsed.scheme not in ("file", "") or not parsed.path:
        return None
    base = Path(unquote(parsed.path)).parent.resolve()
    if not any(base.is_relative_to(root.resolve()) for root in roots):
        return None
    if not relative or relative.startswith("/") or "\\" in relative:
        return None
    target = (base / relative).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target
