"""Which published files the console may serve: only beside an encode's HLS master, only under the
console's storage roots (the path checks behind ``/encodes/ID/media/...``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse


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
