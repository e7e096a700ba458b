"""Malformed requests, built from the proto descriptors, thrown at every RPC of every public service
of a running stack (real NATS, Plato, Stratum and Optimus processes, mutual TLS, the local admin).

Whatever comes in, the answer is never UNKNOWN or INTERNAL (those are bugs), responses and error
trailers stay small, and listing and health still work afterwards. Examples per RPC:
``COSMOS_FUZZ_EXAMPLES`` (default 10); derandomized, so CI sees the same requests every run.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import security_harness
from google.protobuf import descriptor, message, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import ServiceProcess, stop_process, wait_serving

from cosmos.optimus.v1 import encode_service_pb2
from cosmos.plato.v1 import step_service_pb2, workflow_service_pb2
from cosmos.runtime.config import Address, free_port
from cosmos.stratum.v1 import agent_service_pb2, job_service_pb2, pool_service_pb2

FD = descriptor.FieldDescriptor
EXAMPLES = int(os.environ.get("COSMOS_FUZZ_EXAMPLES", "10"))
MAX_RESPONSE = 4 * 1024 * 1024
"""A client's default receive limit: every answer must fit it."""
MAX_TRAILER = 16 * 1024
"""Status message and details together, far below gRPC's header limits."""
SERVICES = {
    "optimus": [encode_service_pb2.DESCRIPTOR.services_by_name["EncodeService"]],
    "plato": [
        workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"],
        step_service_pb2.DESCRIPTOR.services_by_name["StepService"],
    ],
    "stratum": [
        job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
        pool_service_pb2.DESCRIPTOR.services_by_name["PoolService"],
        agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
    ],
}
METHODS = [(name, method) for name, services in SERVICES.items() for s in services for method in s.methods]
NASTY = [
    "", ">", "*", ".", "a.b", "a b", " ", "\x00", "\n", "\x1b[2J", "\u202e", "🙂", "wf-1", "job-1",
    "enc-1", "default", "../../etc/passwd", "file:///etc/passwd", "s3://b/k", "true", "A=B", "x" * 129,
]  # fmt: skip
BIG = [257, 5000, 70_000, 1 << 20]


def strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY), st.text(max_size=16), st.sampled_from(BIG).map(lambda n: "x" * n)
    )


def numbers(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.sampled_from([0.0, -1.0, 0.5, 101.0, math.nan, math.inf, -math.inf, 1e300])
    if kind in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return st.sampled_from([0, 1, 99, 2**32 - 1])
    if kind in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return st.sampled_from([0, 1, 2**64 - 1])
    if kind in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)])
    return st.sampled_from([0, 1, -1, 99, 2**31 - 1, -(2**31)])


def json_values(depth: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.none(), st.booleans(), st.sampled_from([0, -1.5, 1e300]), strings())
    if depth <= 0:
        return leaf
    return st.one_of(
        leaf,
        st.lists(json_values(depth - 1), max_size=3),
        st.dictionaries(st.sampled_from(["a", "items", ""]), json_values(depth - 1), max_size=3),
    )


def deep(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root


def scalar(field: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FD.TYPE_STRING:
        return strings()
    if kind == FD.TYPE_BYTES:
        return st.one_of(st.binary(max_size=32), st.sampled_from(BIG).map(lambda n: b"\xff" * n))
    if kind == FD.TYPE_BOOL:
        return st.booleans()
    if kind == FD.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([*field.enum_type.values_by_number, 99, -1])
    if kind == FD.TYPE_MESSAGE:
        assert field.message_type is not None
        return messages(field.message_type, depth + 1)
    return numbers(field)


def messages(desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[message.Message]:
    cls = message_factory.GetMessageClass(desc)
    if desc.full_name == "google.protobuf.Struct":
        return st.one_of(
            st.dictionaries(st.sampled_from(["a", "items", "x" * 300]), json_values(2), max_size=3),
            st.sampled_from([deep(40), deep(90), {"n": math.nan}]),
        ).map(lambda value: _struct(cls, value))
    if desc.full_name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        return st.builds(
            lambda s, n: cls(seconds=s, nanos=n),
            st.sampled_from([0, -1, 10**12, 253402300800]),
            st.sampled_from([0, -1, 10**9 - 1]),
        )
    fields = [f for f in desc.fields if depth < 3 or f.type != FD.TYPE_MESSAGE]
    return st.fixed_dictionaries({}, optional={f.name: _field_values(f, depth) for f in fields}).map(
        lambda values: _build(cls, values)
    )


def _field_values(field: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    assert field.message_type is None or field.message_type.full_name
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return st.one_of(
            st.dictionaries(strings(), scalar(value_field, depth), max_size=3),
            st.just({f"K{i}": "v" * 2000 for i in range(600)}),
        )
    if field.is_repeated:
        return st.one_of(
            st.lists(scalar(field, depth), max_size=3),
            st.just(["x"] * 100_000) if field.type == FD.TYPE_STRING else st.just([]),
        )
    return scalar(field, depth)


def _struct(cls: Any, value: dict[str, Any]) -> message.Message:
    struct = cls()
    struct.update(value)
    return struct  # type: ignore[no-any-return]


def _build(cls: Any, values: dict[str, Any]) -> message.Message:
    msg = cls()
    for name, value in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, message.Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            if field.type == FD.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.type == FD.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg  # type: ignore[no-any-return]


@dataclass
class Stack:
    targets: dict[str, str]
    channels: dict[str, grpc.Channel]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    nats = subprocess.Popen(
        security_harness.nats_argv(Address("127.0.0.1", port), base / "nats"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started: list[ServiceProcess] = []
    targets: dict[str, str] = {}

    def start(name: str, *args: str) -> None:
        target = f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "cosmos.cli", name, "--listen", target,
                *security_harness.service_args(name), *args]  # fmt: skip
        service = ServiceProcess(argv, target, base / f"{name}.log")
        started.append(service)
        wait_serving(target, proc=service.proc, timeout=60)
        targets[name] = target

    try:
        nats_url = f"nats://127.0.0.1:{port}"
        start("plato", "--nats", nats_url)
        start("stratum", "--nats", nats_url, "--storage-root", str(base / "storage"))
        start("optimus", "--plato", targets["plato"], "--storage-root", str(base / "storage"))
        channels = {name: security_harness.sync_channel(target) for name, target in targets.items()}
        yield Stack(targets, channels)
        for channel in channels.values():
            channel.close()
    finally:
        for service in reversed(started):
            service.stop()
        stop_process(nats)


def call(channel: grpc.Channel, method: descriptor.MethodDescriptor, request: message.Message) -> None:
    """One call; fails the test on UNKNOWN, INTERNAL or an oversized answer."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    data = request.SerializeToString()
    try:
        if method.client_streaming:
            replies = channel.stream_stream(path, None, None)(iter([data]), timeout=10)
            sizes = [len(reply) for reply in replies]
        elif method.server_streaming:
            stream = channel.unary_stream(path, None, None)(data, timeout=3)
            sizes = []
            try:
                for reply in stream:
                    sizes.append(len(reply))
                    if len(sizes) >= 3:
                        break
            finally:
                stream.cancel()  # type: ignore[no-untyped-call]
        else:
            sizes = [len(channel.unary_unary(path, None, None)(data, timeout=20))]
    except grpc.RpcError as err:
        code = err.code()
        if code == grpc.StatusCode.CANCELLED:
            return  # our own cancel of a stream that was streaming
        details = err.details() or ""
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (path, code, details[:500])
        metadata: Any = err.trailing_metadata() or ()
        trailer = sum(len(key) + len(value) for key, value in metadata)
        assert len(details) + trailer <= MAX_TRAILER, (path, len(details), trailer)
        return
    assert all(size <= MAX_RESPONSE for size in sizes), (path, sizes)


def still_works(stack: Stack) -> None:
    for channel in stack.channels.values():
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    lists = {
        "plato": "/cosmos.plato.v1.WorkflowService/ListWorkflows",
        "stratum": "/cosmos.stratum.v1.JobService/ListJobs",
        "optimus": "/cosmos.optimus.v1.EncodeService/ListEncodes",
    }
    for name, path in lists.items():
        stack.channels[name].unary_unary(path, None, None)(b"", timeout=20)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("server", "method"), METHODS, ids=[m.full_name for _, m in METHODS])
def test_malformed_requests_get_a_proper_answer(
    stack: Stack, server: str, method: descriptor.MethodDescriptor
) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(messages(method.input_type))
    def throw(request: message.Message) -> None:
        call(stack.channels[server], method, request)

    throw()
    still_works(stack)


def test_every_public_rpc_is_covered() -> None:
    # A service added to a proto but not to SERVICES would go unfuzzed.
    assert len(METHODS) == sum(len(s.methods) for services in SERVICES.values() for s in services)
    assert {m.containing_service.name for _, m in METHODS} >= {
        "EncodeService", "WorkflowService", "StepService", "JobService", "PoolService", "AgentService",
    }  # fmt: skip


def test_the_strategies_make_malformed_requests() -> None:
    # The generator itself can fail: it must produce the cases the issue names.
    seen: set[str] = set()

    @settings(max_examples=200, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(messages(job_service_pb2.SubmitJobRequest.DESCRIPTOR))
    def look(request: message.Message) -> None:
        assert isinstance(request, job_service_pb2.SubmitJobRequest)
        if request.request_id in (">", "*"):
            seen.add("wildcard id")
        if len(request.request_id) >= 1 << 20:
            seen.add("1 MB id")
        if len(request.spec.argv) >= 100_000:
            seen.add("100k argv")

    look()
    assert seen == {"wildcard id", "1 MB id", "100k argv"}
