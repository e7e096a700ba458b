"""Every request checked at the door, before any of it reaches NATS (one place for all services).

A request is walked field by field, driven by its descriptor (:func:`check`): every string, bytes,
repeated, map, enum, number, duration, timestamp and ``Struct`` gets a limit, and the fields that become
NATS subject tokens, KV keys or message-id headers get a charset. :class:`RequestInterceptor` runs the
walk for every RPC of a server (and turns a request that does not even decode into INVALID_ARGUMENT),
so a handler only ever sees requests within these limits. The limits themselves are in
:mod:`cosmos.runtime.limits`; what a service checks beyond them (a GPU model, a storage root) stays
with the service.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import yaml
from google.protobuf import descriptor, message

from cosmos import errors
from cosmos.runtime import handlers
from cosmos.runtime.limits import (
    CONTROL,
    CONTROL_IN_TEXT,
    MAX_DURATION_SECONDS,
    MAX_NAME,
    MAX_REQUEST_BYTES,
    MAX_STRUCT_BYTES,
    MAX_STRUCT_DEPTH,
    MAX_TIMESTAMP_SECONDS,
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    METHOD_MAX_BYTES,
    Rule,
    rule_for,
)

FD = descriptor.FieldDescriptor


def bad(
    field: str,
    description: str,
    reason: errors.Reason.ValueType = errors.Reason.ERROR_REASON_INVALID_ARGUMENT,
) -> errors.InvalidArgumentError:
    """INVALID_ARGUMENT naming ``field`` (:func:`cosmos.errors.invalid`)."""
    return errors.invalid(field, description, reason=reason)


def check(request: message.Message, max_bytes: int = MAX_REQUEST_BYTES) -> None:
    """Raise INVALID_ARGUMENT naming every field of ``request`` outside its limits (at most 20)."""
    found: list[errors.FieldViolation] = []
    for violation in _walk(request, ""):
        found.append(violation)
        if len(found) >= 20:
            break
    if found:
        raise errors.InvalidArgumentError(
            f"invalid request: {found[0].field}: {found[0].description}", violations=found
        )
    size = request.ByteSize()
    if size > max_bytes:
        raise bad("(request)", f"the request is {size} bytes; at most {max_bytes}")


def _walk(msg: message.Message, prefix: str) -> Iterator[errors.FieldViolation]:
    full = msg.DESCRIPTOR.full_name
    if full == "google.protobuf.Struct":
        yield from _struct(msg, prefix)
        return
    if full in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        yield from _time(msg, prefix, full.endswith("Duration"))
        return
    for field, value in msg.ListFields():
        path = f"{prefix}{field.name}"
        rule = rule_for(field)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            yield from _map(field, value, path, rule)
        elif field.is_repeated:
            if len(value) > rule.max_items:
                yield errors.FieldViolation(path, f"{len(value)} items; at most {rule.max_items}")
                continue
            if rule.total and field.type == FD.TYPE_STRING and sum(len(v) for v in value) > rule.total:
                yield errors.FieldViolation(path, f"more than {rule.total} characters in all")
                continue
            for i, item in enumerate(value):
                yield from _value(field, item, f"{path}[{i}]", rule)
        else:
            yield from _value(field, value, path, rule)


def _map(
    field: descriptor.FieldDescriptor, value: Any, path: str, rule: Rule
) -> Iterator[errors.FieldViolation]:
    if len(value) > rule.max_items:
        yield errors.FieldViolation(path, f"{len(value)} entries; at most {rule.max_items}")
        return
    assert field.message_type is not None
    value_field = field.message_type.fields_by_name["value"]
    total = 0
    for key, item in value.items():
        shown = _short(str(key))
        key_path = f"{path}[{shown!r}]"
        if isinstance(key, str):
            total += len(key)
            if rule.key is not None and not rule.key.match(key):
                yield errors.FieldViolation(key_path, "the key must be an environment variable name")
                continue
            if not key or len(key) > MAX_NAME or CONTROL.search(key):
                yield errors.FieldViolation(
                    key_path, f"keys are 1 to {MAX_NAME} characters, no control characters"
                )
                continue
        if isinstance(item, str):
            total += len(item)
        yield from _value(value_field, item, key_path, rule)
    if rule.total and total > rule.total:
        yield errors.FieldViolation(path, f"more than {rule.total} characters in all")


def _value(
    field: descriptor.FieldDescriptor, value: Any, path: str, rule: Rule
) -> Iterator[errors.FieldViolation]:
    kind = field.type
    if kind == FD.TYPE_MESSAGE:
        assert field.message_type is not None
        if field.message_type.full_name == "google.protobuf.Struct" and value.ByteSize() > MAX_STRUCT_BYTES:
            yield errors.FieldViolation(path, f"{value.ByteSize():,} bytes; at most {MAX_STRUCT_BYTES:,}")
            return
        yield from _walk(value, f"{path}.")
    elif kind == FD.TYPE_STRING:
        yield from _string(value, path, rule)
    elif kind == FD.TYPE_BYTES:
        if len(value) > rule.max_len:
            yield errors.FieldViolation(path, f"{len(value)} bytes; at most {rule.max_len}")
    elif kind == FD.TYPE_ENUM:
        assert field.enum_type is not None
        if field.enum_type.values_by_number.get(value) is None:
            yield errors.FieldViolation(path, f"{value} is not a {field.enum_type.name} value")
    elif kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if not math.isfinite(value):
            yield errors.FieldViolation(path, f"{value} is not a finite number")
        else:
            yield from _range(value, path, rule)
    elif kind != FD.TYPE_BOOL:
        yield from _range(value, path, rule)


def _range(value: float, path: str, rule: Rule) -> Iterator[errors.FieldViolation]:
    if rule.low is not None and value < rule.low:
        yield errors.FieldViolation(path, f"{value} is below {rule.low:g}")
    elif rule.high is not None and value > rule.high:
        yield errors.FieldViolation(path, f"{value} is above {rule.high:g}")


def _string(value: str, path: str, rule: Rule) -> Iterator[errors.FieldViolation]:
    if len(value) > rule.max_len:
        yield errors.FieldViolation(path, f"{len(value)} characters; at most {rule.max_len}")
    elif rule.pattern is not None and value and not rule.pattern.match(value):
        yield errors.FieldViolation(path, f"{_short(value)!r} is not valid: {rule.what}")
    elif (CONTROL_IN_TEXT if rule.multiline else CONTROL).search(value):
        yield errors.FieldViolation(path, "must not contain control characters")


def _time(msg: Any, path: str, duration: bool) -> Iterator[errors.FieldViolation]:
    where = path.rstrip(".") or "request"
    if not 0 <= msg.nanos < 1_000_000_000:
        yield errors.FieldViolation(where, "nanos must be 0 to 999999999")
    elif duration and not 0 <= msg.seconds <= MAX_DURATION_SECONDS:
        yield errors.FieldViolation(where, f"must be 0 to {MAX_DURATION_SECONDS} seconds")
    elif not duration and not 0 <= msg.seconds <= MAX_TIMESTAMP_SECONDS:
        yield errors.FieldViolation(where, "must lie between 1970 and 9999")


def _struct(msg: Any, path: str) -> Iterator[errors.FieldViolation]:
    # Iterative, so a deep value cannot exhaust the stack of the check itself.
    pending: list[tuple[Any, int, str]] = [(msg, 1, path.rstrip("."))]
    while pending:
        node, depth, where = pending.pop()
        if depth > MAX_STRUCT_DEPTH:
            yield errors.FieldViolation(where, f"nested deeper than {MAX_STRUCT_DEPTH} levels")
            return
        name = node.DESCRIPTOR.full_name
        if name == "google.protobuf.Struct":
            pending.extend((v, depth + 1, f"{where}.{_short(k, 64)}") for k, v in node.fields.items())
        elif name == "google.protobuf.ListValue":
            pending.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node.values))
        else:
            kind = node.WhichOneof("kind")
            if kind == "number_value" and not math.isfinite(node.number_value):
                yield errors.FieldViolation(where, "numbers must be finite (JSON has no NaN or Infinity)")
            elif kind == "struct_value":
                pending.append((node.struct_value, depth, where))
            elif kind == "list_value":
                pending.append((node.list_value, depth, where))


def _short(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters: an error never echoes a whole oversized value."""
    return text if len(text) <= limit else f"{text[:limit]}…"


class Undecodable:
    """Stands for a request that did not parse as its message type (so the handler never sees it)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class RequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # grpc-stubs lags grpcio
    """Checks every request of every RPC (:func:`check`) before its handler runs.

    Sits inside :class:`cosmos.runtime.rpc_errors.ErrorInterceptor`, which answers what it raises.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = handler_call_details.method
        limit = METHOD_MAX_BYTES.get(method, MAX_REQUEST_BYTES)
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # grpc would answer INTERNAL; it is the caller's bytes
                return Undecodable(exc)

        if handler.unary_unary is None and handler.unary_stream is None:
            # A client stream (the agent stream) is checked by its handler message by message: one
            # refused message must not end a stream that carries running jobs.
            return handler
        handler = handler._replace(request_deserializer=deserialize)
        return handlers.guarded(handler, lambda request: _admit(request, limit))


def _admit(request: Any, limit: int) -> None:
    if isinstance(request, Undecodable):
        raise bad("", "the request does not decode as its message type (malformed or invalid UTF-8)")
    check(request, limit)


def check_yaml(text: str, field: str) -> None:
    """INVALID_ARGUMENT naming ``field`` when ``text`` is too big, too deep or expands too far.

    It reads the event stream, which nests no Python calls, so a document nested 10,000 deep is
    measured, not parsed into a ``RecursionError``.
    """
    if len(text) > MAX_YAML_BYTES:
        raise bad(field, f"{len(text)} characters; at most {MAX_YAML_BYTES}")
    depth = 0
    # One node count per open collection; an anchor remembers the count of the node it names.
    counts: list[int] = [0]
    anchors: dict[str, int] = {}
    opened: list[str | None] = []
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise bad(field, f"nested deeper than {MAX_YAML_DEPTH} levels")
                counts.append(1)
                opened.append(event.anchor)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
                inner = counts.pop()
                anchor = opened.pop()
                if anchor:
                    anchors[anchor] = inner
                counts[-1] += inner
            elif isinstance(event, yaml.ScalarEvent):
                counts[-1] += 1
                if event.anchor:
                    anchors[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                counts[-1] += anchors.get(event.anchor or "", 1)
            if counts[-1] > MAX_YAML_NODES or sum(counts) > MAX_YAML_NODES:
                raise bad(field, f"more than {MAX_YAML_NODES} nodes with its aliases expanded")
    except yaml.YAMLError as exc:
        raise bad(
            field, f"not YAML: {_short(str(exc), 200)}", errors.Reason.ERROR_REASON_INVALID_DEFINITION
        ) from exc
