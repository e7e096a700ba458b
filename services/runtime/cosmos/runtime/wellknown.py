"""The one clock of Cosmos, and protobuf's well-known time types made from plain Python values.

Code that needs the current time asks :func:`now` (a ``Timestamp``) or :func:`utcnow` (an aware
``datetime`` in UTC) rather than reading the system clock itself."""

from __future__ import annotations

import datetime

from google.protobuf import duration_pb2, timestamp_pb2


def now() -> timestamp_pb2.Timestamp:
    """The current time as a ``Timestamp``."""
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def utcnow() -> datetime.datetime:
    """The current time as a timezone-aware ``datetime`` in UTC."""
    return datetime.datetime.now(datetime.UTC)


def duration(seconds: float) -> duration_pb2.Duration:
    """``seconds`` as a ``Duration``."""
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value
