"""Every generated service, message and enum follows the Cosmos contract rules.

The rules (on top of buf lint) are checked on the descriptors of the generated
``_pb2`` modules:

* every RPC has its own ``<Rpc>Request`` / ``<Rpc>Response`` and every service
  name ends with ``Service``;
* every mutating RPC (anything not Get/List/Watch) takes ``string request_id = 1``,
  marked REQUIRED; a batch RPC (``<Rpc>s``, whose request's only field is a repeated
  ``entries``) instead carries one ``<Rpc>Request`` per entry;
* every List RPC takes ``int32 page_size`` and ``string page_token`` and returns
  ``string next_page_token``;
* Watch RPCs are server-streaming;
* every enum's zero value is ``<ENUM>_UNSPECIFIED``;
* Timestamp fields are named ``*_time`` (or just ``time``);
* every RPC declares who may call it: a ``(cosmos.common.v1.access)`` option with a permission (or
  ``anonymous``), and every mutating RPC is audited.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
)

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
GEN_ROOT = REPO_ROOT / "protos" / "gen" / "python"
READ_ONLY_PREFIXES = ("Get", "List", "Watch")
ACCESS_OPTION = "cosmos.common.v1.access"
UNAUDITED = {"HeartbeatStep", "Connect"}
"""Mutating RPCs too frequent to audit line by line: liveness and progress, and the agent stream."""
EXPECTED_SERVICES = {
    "cosmos.optimus.v1.EncodeService",
    "cosmos.plato.v1.WorkflowService",
    "cosmos.plato.v1.StepService",
    "cosmos.stratum.v1.JobService",
    "cosmos.stratum.v1.AgentService",
    "cosmos.stratum.v1.PoolService",
}

if str(GEN_ROOT) not in sys.path:
    sys.path.insert(0, str(GEN_ROOT))


def field_behaviors(field: FieldDescriptor) -> set[str]:
    """Names of the google.api.field_behavior values set on a field (e.g. {"REQUIRED"})."""
    names: set[str] = set()
    for option, value in field.GetOptions().ListFields():
        if option.full_name == "google.api.field_behavior" and option.enum_type is not None:
            names.update(option.enum_type.values_by_number[number].name for number in value)
    return names


def generated_files() -> list[FileDescriptor]:
    """Import every generated ``_pb2`` module and return its file descriptor."""
    files = []
    for path in sorted(GEN_ROOT.rglob("*_pb2.py")):
        module_name = ".".join(path.relative_to(GEN_ROOT).with_suffix("").parts)
        files.append(importlib.import_module(module_name).DESCRIPTOR)
    return files


def _messages(messages: list[Descriptor]) -> Iterator[Descriptor]:
    for message in messages:
        yield message
        yield from _messages(list(message.nested_types))


def all_messages(file: FileDescriptor) -> Iterator[Descriptor]:
    """Every message in a file, nested ones included."""
    yield from _messages(list(file.message_types_by_name.values()))


def all_enums(file: FileDescriptor) -> Iterator[EnumDescriptor]:
    """Every enum in a file, nested ones included."""
    yield from file.enum_types_by_name.values()
    for message in all_messages(file):
        yield from message.enum_types


def _field(message: Descriptor, name: str) -> FieldDescriptor | None:
    return message.fields_by_name.get(name)


def _expect_field(
    problems: list[str], where: str, message: Descriptor, name: str, field_type: int
) -> FieldDescriptor | None:
    field = _field(message, name)
    if field is None:
        problems.append(f"{where}: {message.full_name} lacks field {name}")
    elif field.type != field_type or field.is_repeated:
        problems.append(f"{where}: {message.full_name}.{name} has the wrong type")
    return field


def _batch_of(request: Descriptor) -> FieldDescriptor | None:
    """The ``entries`` of a batch request (its only field, repeated messages), else None."""
    fields = list(request.fields)
    if len(fields) == 1 and fields[0].name == "entries" and fields[0].is_repeated:
        return fields[0]
    return None


def method_violations(method: MethodDescriptor) -> list[str]:
    """Rule violations of one RPC."""
    where = method.full_name
    problems: list[str] = []
    request, response = method.input_type, method.output_type
    if request.name != f"{method.name}Request":
        problems.append(f"{where}: request is {request.name}, want {method.name}Request")
    if response.name != f"{method.name}Response":
        problems.append(f"{where}: response is {response.name}, want {method.name}Response")
    batch = _batch_of(request)
    if batch is not None:
        # A batch call is idempotent entry by entry: each carries a request the rules hold for.
        if batch.message_type is None or not any(
            f.message_type is not None and f.message_type.name == f"{method.name.removesuffix('s')}Request"
            for f in batch.message_type.fields
        ):
            problems.append(f"{where}: {request.full_name}.{batch.name} entries must carry a single request")
    elif not method.name.startswith(READ_ONLY_PREFIXES):
        field = _expect_field(problems, where, request, "request_id", FieldDescriptor.TYPE_STRING)
        if field is not None:
            if field.number != 1:
                problems.append(f"{where}: request_id must be field 1")
            if "REQUIRED" not in field_behaviors(field):
                problems.append(f"{where}: request_id must be marked REQUIRED")
    if method.name.startswith("List"):
        _expect_field(problems, where, request, "page_size", FieldDescriptor.TYPE_INT32)
        _expect_field(problems, where, request, "page_token", FieldDescriptor.TYPE_STRING)
        _expect_field(problems, where, response, "next_page_token", FieldDescriptor.TYPE_STRING)
    if method.name.startswith("Watch") and not method.server_streaming:
        problems.append(f"{where}: Watch RPCs must be server-streaming")
    problems.extend(access_violations(method))
    return problems


def access_violations(method: MethodDescriptor) -> list[str]:
    """An RPC without an access rule, with neither permission nor ``anonymous``, or mutating unaudited."""
    where = method.full_name
    rule = next(
        (value for option, value in method.GetOptions().ListFields() if option.full_name == ACCESS_OPTION),
        None,
    )
    if rule is None:
        return [f"{where}: declares no ({ACCESS_OPTION}) rule"]
    problems = []
    if not rule.permission and not rule.anonymous:
        problems.append(f"{where}: its access rule names no permission")
    mutating = not method.name.startswith(READ_ONLY_PREFIXES) and method.name not in UNAUDITED
    if mutating and not rule.audited:
        problems.append(f"{where}: a mutating RPC must be audited")
    return problems


def service_violations(file: FileDescriptor) -> list[str]:
    """Rule violations of every service in a file, plus shared request/response types."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for service in file.services_by_name.values():
        if not service.name.endswith("Service"):
            problems.append(f"{service.full_name}: service names end with 'Service'")
        for method in service.methods:
            problems.extend(method_violations(method))
            for message in (method.input_type, method.output_type):
                other = seen.setdefault(message.full_name, method.full_name)
                if other != method.full_name:
                    problems.append(f"{message.full_name} used by {other} and {method.full_name}")
    return problems


def enum_violations(file: FileDescriptor) -> list[str]:
    """Enums whose zero value is not <ENUM>_UNSPECIFIED."""
    problems: list[str] = []
    for enum in all_enums(file):
        zero = enum.values_by_number.get(0)
        if zero is None or not zero.name.endswith("_UNSPECIFIED") or enum.values[0].number != 0:
            problems.append(f"{enum.full_name}: first value must be X_UNSPECIFIED = 0")
    return problems


def field_violations(file: FileDescriptor) -> list[str]:
    """Timestamp fields not named *_time."""
    problems: list[str] = []
    for message in all_messages(file):
        for field in message.fields:
            if field.message_type is None:
                continue
            if field.message_type.full_name == "google.protobuf.Timestamp" and not (
                field.name == "time" or field.name.endswith("_time")
            ):
                problems.append(f"{field.full_name}: Timestamp fields are named *_time")
    return problems


FILES = generated_files()
FILE_IDS = [f.name for f in FILES]


def test_expected_services_exist() -> None:
    services = {s.full_name for f in FILES for s in f.services_by_name.values()}
    assert services == EXPECTED_SERVICES


@pytest.mark.parametrize("file", FILES, ids=FILE_IDS)
def test_services_follow_rules(file: FileDescriptor) -> None:
    assert service_violations(file) == []


@pytest.mark.parametrize("file", FILES, ids=FILE_IDS)
def test_enums_start_unspecified(file: FileDescriptor) -> None:
    assert enum_violations(file) == []


@pytest.mark.parametrize("file", FILES, ids=FILE_IDS)
def test_timestamp_fields_named_time(file: FileDescriptor) -> None:
    assert field_violations(file) == []


def test_request_types_unique_across_files() -> None:
    owners: dict[str, str] = {}
    for file in FILES:
        for service in file.services_by_name.values():
            for method in service.methods:
                for message in (method.input_type, method.output_type):
                    owner = owners.setdefault(message.full_name, method.full_name)
                    assert owner == method.full_name, f"{message.full_name} is shared"


def _bad_file() -> FileDescriptor:
    """A deliberately rule-breaking file, to prove the checks can fail."""
    proto = descriptor_pb2.FileDescriptorProto(name="bad/v1/bad.proto", package="bad.v1", syntax="proto3")
    string, int64 = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_INT64
    optional = FieldDescriptor.LABEL_OPTIONAL
    thing = proto.message_type.add(name="Thing")
    thing.field.add(name="id", number=1, type=string, label=optional)
    lst = proto.message_type.add(name="ListThingsRequest")
    lst.field.add(name="page_size", number=1, type=int64, label=optional)
    proto.message_type.add(name="ListThingsResponse")
    color = proto.enum_type.add(name="Color")
    color.value.add(name="COLOR_RED", number=0)
    service = proto.service.add(name="Things")
    for name, in_type, out_type in [
        ("DeleteThing", "Thing", "Thing"),
        ("UpdateThing", "Thing", "Thing"),
        ("ListThings", "ListThingsRequest", "ListThingsResponse"),
        ("WatchThing", "Thing", "Thing"),
    ]:
        service.method.add(name=name, input_type=f".bad.v1.{in_type}", output_type=f".bad.v1.{out_type}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool.FindFileByName(proto.name)


def test_checks_detect_violations() -> None:
    bad = _bad_file()
    problems = "\n".join(service_violations(bad))
    for expected in [
        "service names end with 'Service'",
        "want DeleteThingRequest",
        "want DeleteThingResponse",
        "lacks field request_id",
        "ListThingsRequest.page_size has the wrong type",
        "lacks field page_token",
        "lacks field next_page_token",
        "must be server-streaming",
        "used by bad.v1.Things.DeleteThing and bad.v1.Things.UpdateThing",
        "bad.v1.Things.DeleteThing: declares no (cosmos.common.v1.access) rule",
    ]:
        assert expected in problems, f"{expected!r} not reported in:\n{problems}"
    assert enum_violations(bad) == ["bad.v1.Color: first value must be X_UNSPECIFIED = 0"]
