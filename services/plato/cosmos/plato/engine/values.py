"""Conversions between ``google.protobuf.Struct`` and plain Python values (fast paths, no JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2


def to_python(value: struct_pb2.Value) -> Any:
    """A ``Value`` as None, bool, float, str, list or dict."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [to_python(v) for v in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A ``Struct`` as a dict; whole numbers come back as ints."""
    return {key: to_python(value) for key, value in struct.fields.items()}


def dict_to_struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A dict as a ``Struct`` (values must be JSON-like)."""
    struct = struct_pb2.Struct()
    if data:
        struct.update(data)
    return struct


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A ``Timestamp`` for an aware datetime."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def moment(stamp: timestamp_pb2.Timestamp) -> datetime:
    """The aware datetime of a ``Timestamp``."""
    return stamp.ToDatetime(tzinfo=UTC)
