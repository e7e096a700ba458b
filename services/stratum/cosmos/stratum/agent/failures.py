"""Why an attempt failed, and whether running it again can help (``JobResult.failure_class``).

Three sources, the first that applies wins:

1. the job's own word: on a non-zero exit it may write ``{"class": "permanent", "code":
   "CORRUPT_SOURCE", "message": "..."}`` to ``$COSMOS_FAILURE_FILE`` (see docs/stratum-jobs.md);
2. a full disk: the process's stderr says ``No space left on device`` (or ``Disk quota exceeded``),
   or the disk holding its work dir has less than the agent's reserve left;
3. the agent's own reason code (:data:`PERMANENT` lists the deterministic ones).

Disk space: :func:`check_space` runs before inputs are staged, so a job that cannot fit fails at
once with ``NO_SPACE`` instead of half-way through a copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cosmos.stratum.agent.staging import NoSpace
from cosmos.stratum.v1 import job_pb2

FC = job_pb2.FailureClass

FAILURE_FILE = ".cosmos-failure.json"
"""Where a failing job may declare why (``$COSMOS_FAILURE_FILE``), relative to its work dir."""
MAX_FAILURE_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 2000
"""The job's message is cut to this many characters."""

PERMANENT = frozenset(
    {
        "INVALID_SPEC",
        "UNSUPPORTED_RUNTIME",
        "UNSUPPORTED_SCHEME",
        "OUTSIDE_STORAGE_ROOT",
        "OUTPUT_EXISTS",
        "SPAWN_FAILED",
        "BAD_RESULT",
        "NO_SPACE",
        "INPUT_MISSING",
    }
)
"""The agent's reason codes that fail the same way on every run: not retried."""
UNCLASSIFIED = frozenset({"", "CANCELLED"})
"""Outcomes that are no failure of the job (success, a cancel)."""

_DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|ENOSPC")
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")
_CLASSES = {"permanent": FC.FAILURE_CLASS_PERMANENT, "transient": FC.FAILURE_CLASS_TRANSIENT}


def classify(reason: str) -> job_pb2.FailureClass.ValueType:
    """The class of one of the agent's reason codes."""
    if reason in UNCLASSIFIED:
        return FC.FAILURE_CLASS_UNSPECIFIED
    return FC.FAILURE_CLASS_PERMANENT if reason in PERMANENT else FC.FAILURE_CLASS_TRANSIENT


@dataclass(frozen=True)
class Declared:
    """What a job wrote to its failure file."""

    failure_class: job_pb2.FailureClass.ValueType
    code: str
    message: str


def read_declared(path: Path) -> Declared | None:
    """The failure a job declared in ``path``; None when it wrote none or nothing usable.

    The job owns its work dir: a link is not followed, a non-regular or oversized file is ignored, and
    an unknown class or malformed code leaves the failure unclassified rather than trusted.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = handle.read(MAX_FAILURE_BYTES + 1)
    if len(data) > MAX_FAILURE_BYTES:
        return None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    kind = _CLASSES.get(str(value.get("class", "")).lower())
    code = str(value.get("code", ""))
    if kind is None or not _CODE.match(code):
        return None
    message = str(value.get("message", ""))[:MAX_MESSAGE_CHARS]
    return Declared(kind, code, message)


def says_disk_full(text: str) -> bool:
    """Whether a process's output reports a full disk (``strerror(ENOSPC)``, quota)."""
    return bool(_DISK_FULL.search(text))


def free_bytes(path: Path) -> int:
    """Bytes available to unprivileged writers on the file system holding ``path``."""
    return shutil.disk_usage(_existing(path)).free


def check_space(path: Path, needed: int, reserve: int) -> None:
    """Raise :class:`NoSpace` unless ``needed`` bytes fit on ``path``'s disk with ``reserve`` left."""
    free = free_bytes(path)
    if free < needed + reserve:
        raise NoSpace(
            f"disk full: {_existing(path)} has {_size(free)} free; the job needs {_size(needed)} for its "
            f"inputs plus the agent's reserve of {_size(reserve)}",
        )


def copied_bytes(sources: Sequence[Path], work_root: Path) -> int:
    """Bytes staging ``sources`` into ``work_root`` writes: files on the same file system are hard
    linked (free), others copied. Unreadable entries count 0 (staging reports them)."""
    try:
        device = os.stat(_existing(work_root)).st_dev
    except OSError:
        return 0
    total = 0
    for source in sources:
        try:
            info = os.stat(source)
        except OSError:
            continue
        if info.st_dev == device:
            continue
        if stat.S_ISDIR(info.st_mode):
            for dirpath, _, filenames in os.walk(source):
                for name in filenames:
                    try:
                        total += os.lstat(os.path.join(dirpath, name)).st_size
                    except OSError:
                        continue
        else:
            total += info.st_size
    return total


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a work dir is made only after the check)."""
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path("/")


def _size(n: int) -> str:
    """1.5 MiB, 300 KiB, 12 B: sizes as people read them."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover
