"""Durations as authors write them (``90``, ``500ms``, ``1m30s``) and in JobSpec's protobuf-JSON."""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = ["parse_duration", "seconds_text"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds of a duration: a number of seconds, or ``500ms``, ``5s``, ``10m``, ``1h``, ``1d``, ``1m30s``.

    Raises ValueError naming the accepted forms. Public so the engine can read durations that only
    become known at run time (``timer`` with ``duration: ${input.wait}``).
    """
    hint = "use a number of seconds or a string like 500ms, 5s, 10m, 1h, 1d or 1m30s"
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().startswith("-"):
        raise ValueError(f"duration {value!r} must not be negative")
    elif isinstance(value, str):
        seconds = _duration_text(value.strip(), hint)
    else:
        raise ValueError(f"invalid duration {value!r}: {hint}")
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: {hint}")
    if seconds < 0:
        raise ValueError(f"duration {value!r} must not be negative")
    return seconds


def _duration_text(text: str, hint: str) -> float:
    total = 0.0
    pos = 0
    while pos < len(text):
        part = _DURATION_PART.match(text, pos)
        if part is None:
            break
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        pos = part.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {text!r}: {hint}")
    return total


def seconds_text(seconds: float) -> str:
    """Protobuf-JSON spelling of a duration (``"600s"``, ``"0.5s"``)."""
    return f"{int(seconds)}s" if seconds.is_integer() else f"{seconds!r}s"
