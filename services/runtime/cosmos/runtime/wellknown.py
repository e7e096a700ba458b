"""Protobuf well-known time types, made from plain Python values in one place."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2


def now() -> timestamp_pb2.Timestamp:
    """The current time as a ``Timestamp``."""
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def duration(seconds: float) -> duration_pb2.Duration:
    """``seconds`` as a ``Duration``."""
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value
