"""Writing outputs so that a re-run (a retried attempt) replaces them and a crash leaves none half-written."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["replacing", "write_json"]


@contextlib.contextmanager
def replacing(out: Path) -> Iterator[Path]:
    """A temporary name next to ``out`` to write to; renamed onto ``out`` when the block succeeds,
    removed when it fails."""
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as one line of compact JSON in ``path``, replaced atomically."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
