"""The one way every Cosmos gRPC server starts, serves and stops.

A :class:`Server` mounts the service implementations next to the standard health service (a status
per service name and the overall ``""``) and server reflection, with tracing, authentication and
rich-error interceptors. Its main port is mutual TLS (a client certificate from the platform CA is
required); optionally a token port (TLS, callers present a platform token) and a health-only plaintext
port for probes (nothing but ``grpc.health.v1.Health`` is served there) and a plaintext HTTP port
serving only Prometheus metrics (:mod:`cosmos.runtime.metrics`; every call is counted and timed).
Plaintext on the main port exists only with ``--insecure``, on loopback. On SIGTERM/SIGINT it turns
health NOT_SERVING, lets in-flight calls finish within the grace period, signals long-lived streams
through :attr:`Server.stopping`, and returns so the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cosmos import errors
from cosmos.runtime import metrics, reflection_docs, rpc_errors, telemetry, validation
from cosmos.runtime.config import Address
from cosmos.security import auth, tls
from cosmos.security.config import Security

log = logging.getLogger(__name__)

# Long streams (agents, watches) must survive idle periods behind NATs and proxies.
KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
]
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *KEEPALIVE_OPTIONS,
    # Without this a second server silently shares the port instead of failing to bind.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service implementation to mount."""

    name: str
    """Full service name, e.g. ``cosmos.plato.v1.WorkflowService``; also its health service name."""
    servicer: object
    """The implementation (a subclass of the generated ``...Servicer``)."""
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    """The generated ``add_XServicer_to_server`` function."""


@dataclass
class ServerConfig:
    """How a server listens and stops."""

    name: str
    """Short process name for logs and traces, e.g. ``plato``."""
    listen: Address
    """Address to listen on; port 0 picks a free port (read it back from :attr:`Server.port`)."""
    grace_period: float = 10.0
    """Seconds in-flight calls get to finish after a stop is requested."""
    extra_options: list[tuple[str, Any]] = field(default_factory=list)
    """Additional grpc channel arguments for the server."""
    security: Security = field(default_factory=Security)
    """Credentials of the main port (mutual TLS) or ``insecure`` (loopback development only)."""
    token_listen: Address | None = None
    """Optional second port: TLS without client certificates, every caller presents a platform token
    (or calls an RPC marked anonymous, such as an agent's join)."""
    health_listen: Address | None = None
    """Optional plaintext port serving only the health service, for probes."""
    metrics_listen: Address | None = None
    """Optional plaintext HTTP port serving only ``GET /metrics`` (Prometheus)."""


class Server:
    """A grpc.aio server with health, reflection, tracing and graceful shutdown."""

    def __init__(
        self,
        config: ServerConfig,
        services: Sequence[ServiceBinding] = (),
        *,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),  # type: ignore[type-arg]
        serving_at_start: bool = True,
    ) -> None:
        self.config = config
        self.serving_at_start = serving_at_start
        """Whether :meth:`start` marks every service SERVING; False: NOT_SERVING, and the caller
        sets health when it is ready (a Stratum replica once it knows whether it leads)."""
        self.services = list(services)
        self.interceptors = list(interceptors)
        """Run innermost, after authentication and request checks (a dependency gate)."""
        self._on_stop = on_stop
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lags
        self.stopping = asyncio.Event()
        """Set when a stop begins; long-lived streaming handlers should end when they see it."""
        self.started = asyncio.Event()
        """Set once the server serves and has marked every service SERVING."""
        self.port = 0
        self.token_port = 0
        self.health_port = 0
        self.metrics_port = 0
        self._metrics: metrics.MetricsServer | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._alongside: list[asyncio.Task[object]] = []

    def add(self, binding: ServiceBinding) -> None:
        """Mount one more service; only before :meth:`start`."""
        assert self._server is None, "services are mounted before the server starts"
        self.services.append(binding)

    async def start(self) -> None:
        """Bind, start serving and mark every service SERVING (see :attr:`serving_at_start`)."""
        security = self.config.security
        listen = self.config.listen
        security.check_listen(listen.host, self.config.name)
        telemetry.configure_tracing(telemetry.service_name(self.config.name))
        names = [b.name for b in self.services]
        authenticator = auth.Authenticator(insecure=security.insecure, verifier=security.verifier())
        server = grpc.aio.server(
            interceptors=[
                # Outermost: calls refused by authentication or a dependency gate are counted too.
                metrics.RpcMetricsInterceptor(),
                *telemetry.server_interceptors(),
                auth.AuthInterceptor(auth.access_rules(names), authenticator),
                rpc_errors.ErrorInterceptor(),
                validation.RequestInterceptor(),
                *self.interceptors,
            ],
            options=SERVER_OPTIONS + self.config.extra_options,
        )
        for binding in self.services:
            binding.add_to_server(binding.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        # With the protos' comments (descriptor set with source info), so `grpcurl describe` documents.
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME],
            server,
            pool=reflection_docs.documented_pool(),  # type: ignore[arg-type]  # a duck-typed pool
        )
        if security.tls is None:
            self.port = _bind(lambda a: server.add_insecure_port(a), listen, self.config.name, "--listen")
        else:
            creds = tls.server_credentials(security.tls, require_client_cert=True)
            self.port = _bind(
                lambda a: server.add_secure_port(a, creds), listen, self.config.name, "--listen"
            )
            if self.config.token_listen is not None:
                if security.token_public_key is None:
                    # Still useful: RPCs that authenticate their own request (an agent joining with a
                    # join token) are served there; every other call answers UNAUTHENTICATED.
                    log.warning(
                        "no --token-public-key: the token port accepts no platform tokens, only "
                        "anonymous RPCs (agent joins)"
                    )
                token_creds = tls.server_credentials(security.tls, require_client_cert=False)
                self.token_port = _bind(
                    lambda a: server.add_secure_port(a, token_creds),
                    self.config.token_listen,
                    self.config.name,
                    "--token-listen",
                )
        if self.config.metrics_listen is not None:
            # Before the gRPC server starts: a taken metrics port stops the start with nothing bound.
            self._metrics = metrics.MetricsServer(self.config.metrics_listen, self.config.name)
            await self._metrics.start()
            self.metrics_port = self._metrics.port
        try:
            await server.start()
        except BaseException:
            if self._metrics is not None:
                await self._metrics.stop()
            raise
        self._server = server
        if self.config.health_listen is not None:
            await self._start_health(self.config.health_listen)
        status = health_pb2.HealthCheckResponse
        for name in [*names, ""]:
            await self.health.set(name, status.SERVING if self.serving_at_start else status.NOT_SERVING)
        self.started.set()
        log.info(
            "serving",
            extra={
                "fields": {
                    "address": f"{listen.host}:{self.port}",
                    "tls": security.tls is not None,
                    "token_port": self.token_port,
                    "health_port": self.health_port,
                    "metrics_port": self.metrics_port,
                    "services": names,
                }
            },
        )

    async def _start_health(self, address: Address) -> None:
        # A server of its own: this plaintext port answers health checks and nothing else.
        server = grpc.aio.server(options=SERVER_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.health_port = _bind(
            lambda a: server.add_insecure_port(a), address, self.config.name, "--health-listen"
        )
        await server.start()
        self._health_server = server

    async def stop(self) -> None:
        """Go NOT_SERVING, let in-flight calls finish within the grace period, then close."""
        if self._server is None or self.stopping.is_set():
            return
        self.stopping.set()
        await self.health.enter_graceful_shutdown()
        log.info("stopping", extra={"fields": {"grace_period_s": self.config.grace_period}})
        await self._server.stop(self.config.grace_period)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._metrics is not None:
            await self._metrics.stop()
        if self._on_stop is not None:
            await self._on_stop()
        log.info("stopped")

    def alongside(self, work: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        """Run ``work`` beside the server (a watcher, a companion, the service's main loop).

        It starts at once; if it fails, :meth:`serve_until_signalled` stops the server and raises its
        error; once the server has stopped, it is cancelled if still running."""
        task = asyncio.create_task(work)
        self._alongside.append(task)
        return task

    async def serve_until_signalled(self) -> None:
        """Start, serve until SIGTERM or SIGINT (or until work run :meth:`alongside` fails), then stop
        gracefully and cancel what still runs alongside."""
        failed: asyncio.Task[object] | None = None
        try:
            await self.start()
            signalled: asyncio.Task[object] = asyncio.create_task(until_signalled())
            waiting = {signalled, *self._alongside}
            while failed is None and not signalled.done():  # work that ends well leaves it serving
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                failed = next((t for t in done if not t.cancelled() and t.exception() is not None), None)
            signalled.cancel()
            if failed is not None:
                log.error("stopping: %s", failed.exception())
            await self.stop()
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
        finally:
            await _cancel([t for t in self._alongside if t is not failed])


async def until_signalled() -> None:
    """Return once the process gets SIGTERM or SIGINT (how every Cosmos server is told to stop)."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    try:
        await stop_requested.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _cancel(tasks: Sequence[asyncio.Task[object]]) -> None:
    for task in tasks:
        task.cancel()
    for task, outcome in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
        if isinstance(outcome, Exception):  # a cancelled task's CancelledError is no Exception
            log.warning("%s ended with an error while stopping: %r", task.get_coro(), outcome)


def _bind(add: Callable[[str], int], address: Address, owner: str, setting: str) -> int:
    try:
        port = add(str(address))
    except RuntimeError as exc:
        raise errors.PortInUseError(address.host, address.port, owner, setting) from exc
    if port == 0:
        raise errors.PortInUseError(address.host, address.port, owner, setting)
    return port
