"""The result file: the structured result a job may write (``$COSMOS_RESULT_FILE``), read back.

The job owns its work dir, so the file is untrusted input: never followed through a link, bounded in
size, and it must hold one JSON object.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

RESULT_FILE = ".cosmos-result.json"
"""Where a job may write its structured result (``$COSMOS_RESULT_FILE``), relative to its work dir."""
MAX_RESULT_BYTES = 1 << 20


def read_result(path: Path) -> dict[str, Any] | None:
    """The JSON object a job wrote as its result, None if it wrote none; ValueError if malformed."""
    try:
        # The job owns its work dir: never follow a link it put there to a file only the agent may read.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"result file cannot be read: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("result file is not a regular file")
        data = handle.read(MAX_RESULT_BYTES + 1)
    if len(data) > MAX_RESULT_BYTES:
        raise ValueError(f"result file is larger than {MAX_RESULT_BYTES} bytes")
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"result file is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError("result file must hold a JSON object")
    return value
