"""Trace context flows through gRPC and spans when nothing is exported (no spans are recorded)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from cosmos.runtime import propagation, telemetry


def _call(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(f"/test.Hops/{method}", None, None)  # raw bytes both ways


def _trace_id() -> str:
    return f"{trace.get_current_span().get_span_context().trace_id:032x}"


@pytest.fixture
async def servers() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A server whose ``Front`` calls ``Back`` on a propagating channel; both note what they saw."""
    propagation.install()
    seen: list[dict[str, Any]] = []
    server = grpc.aio.server(interceptors=[propagation.ServerInterceptor()])
    port = server.add_insecure_port("127.0.0.1:0")
    target = f"127.0.0.1:{port}"
    back_channel = propagation.Channel(grpc.aio.insecure_channel(target))

    async def back(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        seen.append({"method": "back", "trace": _trace_id(), "traceparent": metadata.get("traceparent")})
        return request

    async def front(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        seen.append({"method": "front", "trace": _trace_id()})
        with trace.get_tracer("test").start_as_current_span("inner"):
            headers = telemetry.inject_headers()
            seen.append({"method": "inner", "trace": _trace_id(), "headers": headers})
            return await _call(back_channel, "Back")(request, metadata=(("x-other", "1"),))

    handlers = {
        "Front": grpc.unary_unary_rpc_method_handler(front),
        "Back": grpc.unary_unary_rpc_method_handler(back),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Hops", handlers),))
    await server.start()
    yield target, seen
    await back_channel.close()
    await server.stop(None)


async def test_the_callers_trace_reaches_every_hop(servers: tuple[str, list[dict[str, Any]]]) -> None:
    target, seen = servers
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    async with grpc.aio.insecure_channel(target) as channel:
        assert await _call(channel, "Front")(b"x", metadata=(("traceparent", traceparent),)) == b"x"
    front, inner, back = seen
    assert front["trace"] == inner["trace"] == back["trace"] == trace_id
    assert inner["headers"]["traceparent"].split("-")[1] == trace_id  # NATS publishes carry it on
    assert back["traceparent"].split("-")[1] == trace_id


async def test_a_call_without_context_begins_a_trace(servers: tuple[str, list[dict[str, Any]]]) -> None:
    target, seen = servers
    async with grpc.aio.insecure_channel(target) as channel:
        await _call(channel, "Front")(b"x")
        await _call(channel, "Front")(b"y")
    traces = [s["trace"] for s in seen]
    assert traces[0] != "0" * 32 and len(set(traces[:3])) == 1  # one trace across the hops
    assert traces[3] != traces[0]  # and a new one per request


def test_spans_continue_the_current_context_and_record_nothing() -> None:
    propagation.install()
    trace_id = secrets.token_hex(16)
    ctx = propagate.extract({"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    token = otel_context.attach(ctx)
    try:
        with trace.get_tracer("test").start_as_current_span("work") as span:
            assert not span.is_recording()
            assert _trace_id() == trace_id
    finally:
        otel_context.detach(token)
    with trace.get_tracer("test").start_as_current_span("root") as root:
        assert root.get_span_context().is_valid and not root.is_recording()


def test_exporting_follows_the_otel_variables() -> None:
    assert not telemetry.exporting({})
    assert not telemetry.exporting({"OTEL_TRACES_EXPORTER": "none"})
    assert telemetry.exporting({"OTEL_TRACES_EXPORTER": "console"})
    assert telemetry.exporting({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert not telemetry.exporting({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"})
