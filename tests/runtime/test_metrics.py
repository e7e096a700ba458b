"""The runtime's metrics: the RPC interceptor counts and times calls by code, refreshers run before a
scrape, and a server given ``metrics_listen`` serves the registry at /metrics and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Gauge
from prometheus_client.parser import text_string_to_metric_families

from cosmos import errors
from cosmos.runtime import handlers, metrics, process
from cosmos.runtime.config import Address
from cosmos.runtime.server import Server, ServerConfig
from cosmos.security.config import Security

pytestmark = pytest.mark.unit


def sample(service: str, method: str, code: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "cosmos_rpc_requests_total", {"service": service, "method": method, "code": code}
    )
    return value or 0.0


def duration_count(service: str, method: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "cosmos_rpc_duration_seconds_count", {"service": service, "method": method}
    )
    return value or 0.0


class FakeContext:
    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        raise grpc.aio.AbortError()


class FakeDetails:
    def __init__(self, method: str) -> None:
        self.method = method


async def intercepted(method: str, handler: Any) -> Any:
    async def continuation(_: Any) -> Any:
        return handler

    return await metrics.RpcMetricsInterceptor().intercept_service(continuation, FakeDetails(method))  # type: ignore[arg-type]


def test_a_full_method_name_splits_into_service_and_method() -> None:
    assert metrics.split_method("/cosmos.plato.v1.WorkflowService/StartWorkflow") == (
        "cosmos.plato.v1.WorkflowService",
        "StartWorkflow",
    )


async def test_unary_calls_are_counted_by_code_and_timed() -> None:
    async def ok(request: Any, context: Any) -> str:
        return "pong"

    async def refused(request: Any, context: Any) -> str:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
        return "unreachable"

    service = "test.v1.Unary"
    handler = await intercepted(f"/{service}/Ok", grpc.unary_unary_rpc_method_handler(ok))
    assert await handler.unary_unary(None, FakeContext()) == "pong"
    assert await handler.unary_unary(None, FakeContext()) == "pong"
    handler = await intercepted(f"/{service}/Refused", grpc.unary_unary_rpc_method_handler(refused))
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary(None, FakeContext())
    assert sample(service, "Ok", "OK") == 2
    assert sample(service, "Refused", "PERMISSION_DENIED") == 1
    assert duration_count(service, "Ok") == 2 and duration_count(service, "Refused") == 1


async def test_a_stream_is_counted_once_when_it_ends() -> None:
    async def three(request: Any, context: Any) -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async def breaks(request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("boom")

    service = "test.v1.Stream"
    handler = await intercepted(f"/{service}/Three", grpc.unary_stream_rpc_method_handler(three))
    items = handlers.items(handler.unary_stream(None, FakeContext()))
    seen = []
    async for item in items:
        seen.append(item)
        # Nothing is counted while the stream is open.
        assert sample(service, "Three", "OK") == 0
    assert seen == [0, 1, 2] and sample(service, "Three", "OK") == 1
    handler = await intercepted(f"/{service}/Breaks", grpc.unary_stream_rpc_method_handler(breaks))
    with pytest.raises(RuntimeError):
        async for _ in handler.unary_stream(None, FakeContext()):
            pass
    assert sample(service, "Breaks", "UNKNOWN") == 1
    assert duration_count(service, "Three") == 1


async def test_an_unknown_method_is_not_counted() -> None:
    assert await intercepted("/nobody.v1.X/Y", None) is None


async def test_refreshers_run_before_a_scrape_and_a_failing_one_is_skipped() -> None:
    gauge = Gauge("cosmos_test_refreshed", "test gauge", registry=metrics.REGISTRY)
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise ValueError("no state")

    async def sets() -> None:
        calls.append("sets")
        gauge.set(42)

    removers = [metrics.add_refresher(broken), metrics.add_refresher(sets)]
    try:
        body, content_type = await metrics.exposition()
    finally:
        for remove in removers:
            remove()
        metrics.REGISTRY.unregister(gauge)
    assert calls == ["broken", "sets"]
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["cosmos_test_refreshed"].samples[0].value == 42
    # The process collectors are on the registry too.
    assert "process_cpu_seconds" in families or "python_info" in families


async def scrape(port: int, path: str = metrics.PATH) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


@pytest.mark.integration  # out of process (a port, a process or a connection)
async def test_a_server_serves_its_metrics_and_nothing_else_on_the_metrics_port() -> None:
    config = ServerConfig(
        "metrics-test",
        Address("127.0.0.1", 0),
        grace_period=0.5,
        security=Security(insecure=True),
        metrics_listen=Address("127.0.0.1", 0),
    )
    server = Server(config)
    await server.start()
    try:
        assert server.metrics_port > 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(service=""))
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            await asyncio.sleep(0.2)
        status, text = await scrape(server.metrics_port)
        assert status == 200
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        counts = {
            (s.labels["method"], s.labels["code"]): s.value
            for s in samples
            if s.name == "cosmos_rpc_requests_total" and s.labels["service"] == "grpc.health.v1.Health"
        }
        assert counts[("Check", "OK")] >= 1
        assert counts[("Check", "NOT_FOUND")] >= 1
        assert counts[("Watch", "CANCELLED")] >= 1
        assert (await scrape(server.metrics_port, "/"))[0] == 404
        assert (await scrape(server.metrics_port, "/debug"))[0] == 404
    finally:
        await server.stop()


@pytest.mark.integration  # out of process (a port, a process or a connection)
async def test_a_taken_metrics_port_stops_the_start_with_the_flag_named() -> None:
    first = metrics.MetricsServer(Address("127.0.0.1", 0), "first")
    await first.start()
    try:
        second = metrics.MetricsServer(Address("127.0.0.1", first.port), "second")
        with pytest.raises(errors.PortInUseError, match="--metrics-listen"):
            await second.start()
    finally:
        await first.stop()


def test_metrics_listen_is_a_server_flag_off_by_default_with_its_env_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    process.add_server_arguments(parser, "COSMOS_TEST", "127.0.0.1:0", "test")
    assert process.metrics_address(parser.parse_args(["--insecure"])) is None
    assert "COSMOS_TEST_METRICS_LISTEN" in parser.format_help()
    monkeypatch.setenv("COSMOS_TEST_METRICS_LISTEN", "0.0.0.0:9090")
    parser = argparse.ArgumentParser()
    process.add_server_arguments(parser, "COSMOS_TEST", "127.0.0.1:0", "test")
    assert process.metrics_address(parser.parse_args([])) == Address("0.0.0.0", 9090)
