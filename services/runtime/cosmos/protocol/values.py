"""Conversions between ``google.protobuf.Struct`` and plain Python values (fast paths, no JSON).

Numbers: a ``Struct`` holds every number as a double (JSON's number), so ``3`` and ``3.0`` look alike
on the wire. Plato and the SDK read a whole number within ±2^53 (where a double is exact) back as an
``int`` and anything else as a ``float``: integer outputs stay integers end to end, and a whole-valued
float (``2.0``) reads back as ``2``, equal to it in every comparison and in arithmetic. An integer
beyond ±2^53 cannot be carried exactly and is refused (:class:`InexactNumber`) rather than rounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from cosmos import errors

MAX_EXACT_INT = 2**53
"""Integers up to this magnitude survive a double (a ``Struct`` number) exactly."""


class InexactNumber(errors.CosmosError, ValueError):
    """An integer too large for a ``Struct`` number; the message names where it is.

    Also a ``ValueError``, as it always was and like the protobuf ``Struct`` conversion's own
    refusals: step code handing an output to the SDK may catch it as one."""


def to_python(value: struct_pb2.Value) -> Any:
    """A ``Value`` as None, bool, int (a whole number within ±2^53), float, str, list or dict."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [to_python(v) for v in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) <= MAX_EXACT_INT else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A ``Struct`` as a dict; whole numbers come back as ints."""
    return {key: to_python(value) for key, value in struct.fields.items()}


def dict_to_struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A dict as a ``Struct`` (values must be JSON-like); :class:`InexactNumber` for an integer beyond
    ±2^53, which a double would silently round."""
    struct = struct_pb2.Struct()
    if data:
        _check_exact(data, "output")
        struct.update(data)
    return struct


def _check_exact(value: Any, where: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_EXACT_INT:
            raise InexactNumber(
                f"{where}: integer {value} is beyond ±2^53 and would lose precision as a JSON number; "
                "send it as a string"
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_exact(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_exact(item, f"{where}[{i}]")


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A ``Timestamp`` for an aware datetime."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def moment(stamp: timestamp_pb2.Timestamp) -> datetime:
    """The aware datetime of a ``Timestamp``."""
    return stamp.ToDatetime(tzinfo=UTC)
