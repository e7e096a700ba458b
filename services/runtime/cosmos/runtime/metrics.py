"""Prometheus metrics of a Cosmos process: one registry, the RPC interceptor, the ``/metrics`` server.

Every process has one :data:`REGISTRY` (its process and Python collectors included); each service
declares its own metrics on it at import (``cosmos.<service>.metrics``), so a metric exists once per
process whatever runs in it. Values that are state rather than events (queue depth, GPUs allocated,
consumer lag) are set by *refreshers*: callbacks registered with :func:`add_refresher` that run on the
event loop right before each scrape, so a scrape always shows the state of that moment, read without
locks. A refresher that fails or takes longer than :data:`REFRESH_TIMEOUT` leaves the previous values.

:class:`MetricsServer` serves ``GET /metrics`` (the Prometheus text format, or OpenMetrics when the
scraper asks for it) and nothing else, plaintext, on ``--metrics-listen`` (off unless given). The
metrics carry no tenant, user or request data: method names, states, agent and job ids.

docs/metrics.md lists every metric with its labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from cosmos import errors
from cosmos.runtime import handlers
from cosmos.runtime.config import Address

if TYPE_CHECKING:  # imported where the endpoint starts: aiohttp is a fifth of a server's start-up
    from aiohttp import web

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
"""The registry of this process: everything :class:`MetricsServer` exposes."""
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

PATH = "/metrics"
"""The one path the metrics server answers."""
REFRESH_TIMEOUT = 2.0
"""Seconds a refresher may take before a scrape goes on without it."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram buckets (seconds) of RPC latencies."""
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Histogram buckets (seconds) of work that takes seconds to hours (steps, jobs)."""

RPC_REQUESTS = Counter(
    "cosmos_rpc_requests",
    "gRPC calls served, by service, method and status code (streams counted when they end).",
    ["service", "method", "code"],
    registry=REGISTRY,
)
RPC_DURATION = Histogram(
    "cosmos_rpc_duration_seconds",
    "Seconds from a call's start to its end (a stream's whole life), by service and method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)

Refresher = Callable[[], Awaitable[None] | None]
"""Sets gauges from live state before a scrape; sync or async."""
_refreshers: list[Refresher] = []


def add_refresher(refresh: Refresher) -> Callable[[], None]:
    """Run ``refresh`` before every scrape; returns the function that removes it again."""
    _refreshers.append(refresh)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            _refreshers.remove(refresh)

    return remove


async def refresh() -> None:
    """Run every refresher (each within :data:`REFRESH_TIMEOUT`; a failing one is logged and skipped)."""
    for refresher in list(_refreshers):
        try:
            result = refresher()
            if isinstance(result, Awaitable):
                await asyncio.wait_for(result, REFRESH_TIMEOUT)
        except Exception as exc:
            log.warning("a metrics refresher failed", extra={"fields": {"error": repr(exc)}})


async def exposition(accept: str = "") -> tuple[bytes, str]:
    """The registry's current text exposition (refreshed first) and its content type."""
    await refresh()
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as ``(pkg.Service, Method)``."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


def _code_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode.OK.name if code is None else str(code)


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # grpc-stubs lags grpcio
    """Counts every call of a server by status code and times it (a stream when it ends).

    Outermost of a server's interceptors: refusals by authentication and the dependency gate are
    counted too. Only methods the server has are counted (unknown names would grow without bound).
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        service, method = split_method(handler_call_details.method)
        return handlers.wrap(
            await continuation(handler_call_details),
            lambda fn: _unary(fn, service, method),
            lambda fn: _stream(fn, service, method),
        )


_counted: dict[tuple[str, str, str], Any] = {}
_timed: dict[tuple[str, str], Any] = {}


def _observe(service: str, method: str, code: str, started: float) -> None:
    # The labelled children cached: labels() validates and locks on every call (a few microseconds).
    counter = _counted.get((service, method, code))
    if counter is None:
        counter = _counted[(service, method, code)] = RPC_REQUESTS.labels(service, method, code)
    timer = _timed.get((service, method))
    if timer is None:
        timer = _timed[(service, method)] = RPC_DURATION.labels(service, method)
    counter.inc()
    timer.observe(time.monotonic() - started)


def _failed(context: Any, exc: BaseException) -> str:
    """The status code a call ends with that raised ``exc``."""
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if code is not None and code != grpc.StatusCode.OK:
        return _code_name(code)
    return grpc.StatusCode.UNKNOWN.name


def _unary(fn: handlers.Behaviour, service: str, method: str) -> handlers.Behaviour:
    async def call(request: Any, context: Any) -> Any:
        started = time.monotonic()
        try:
            result = fn(request, context)
            answer = await result if isinstance(result, Awaitable) else result
        except BaseException as exc:
            _observe(service, method, _failed(context, exc), started)
            raise
        _observe(service, method, _code_name(context.code()), started)
        return answer

    return call


def _stream(fn: handlers.Behaviour, service: str, method: str) -> handlers.Behaviour:
    async def call(request: Any, context: Any) -> AsyncIterator[Any]:
        started = time.monotonic()
        try:
            async for item in handlers.items(fn(request, context)):
                yield item
        except BaseException as exc:
            # GeneratorExit: the caller went away mid-stream.
            code = grpc.StatusCode.CANCELLED.name if isinstance(exc, GeneratorExit) else _failed(context, exc)
            _observe(service, method, code, started)
            raise
        _observe(service, method, _code_name(context.code()), started)

    return call


class MetricsServer:
    """``GET /metrics`` over plaintext HTTP on ``address``; every other path answers 404."""

    def __init__(self, address: Address, owner: str, setting: str = "--metrics-listen") -> None:
        self.address = address
        self.owner = owner
        self.setting = setting
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve; a taken port is a :class:`cosmos.errors.PortInUseError`."""
        from aiohttp import web

        app = web.Application()
        app.router.add_get(PATH, _handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.address.host, self.address.port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            address = self.address
            raise errors.PortInUseError(address.host, address.port, self.owner, self.setting) from exc
        self._runner = runner
        bound = [a for a in runner.addresses if isinstance(a, tuple)]
        self.port = int(bound[0][1]) if bound else self.address.port
        log.info("metrics listening", extra={"fields": {"address": f"{self.address.host}:{self.port}"}})

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


async def _handle(request: web.Request) -> web.Response:
    from aiohttp import web

    body, content_type = await exposition(request.headers.get("Accept", ""))
    mime, _, params = content_type.partition(";")
    charset = "utf-8"
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key == "charset":
            charset = value
    response = web.Response(body=body, content_type=mime.strip(), charset=charset)
    # The version parameter tells Prometheus which format it got.
    response.headers["Content-Type"] = content_type
    return response


async def serve(address: Address | None, owner: str) -> MetricsServer | None:
    """Start a :class:`MetricsServer` on ``address`` (None: no metrics, returns None)."""
    if address is None:
        return None
    server = MetricsServer(address, owner)
    await server.start()
    return server
