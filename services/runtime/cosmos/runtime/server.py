"""The one way every Cosmos gRPC server starts, serves and stops.

A :class:`Server` mounts the service implementations next to the standard health service (a status
per service name and the overall ``""``) and server reflection, with tracing and rich-error
interceptors. On SIGTERM/SIGINT it turns health NOT_SERVING, lets in-flight calls finish within the
grace period, signals long-lived streams through :attr:`Server.stopping`, and returns so the process
exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cosmos import errors
from cosmos.runtime import rpc_errors, telemetry
from cosmos.runtime.config import Address

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


class Server:
    """A grpc.aio server with health, reflection, tracing and graceful shutdown."""

    def __init__(
        self,
        config: ServerConfig,
        services: Sequence[ServiceBinding] = (),
        *,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.services = list(services)
        self._on_stop = on_stop
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lags
        self.stopping = asyncio.Event()
        """Set when a stop begins; long-lived streaming handlers should end when they see it."""
        self.port = 0
        self._server: grpc.aio.Server | None = None

    def add(self, binding: ServiceBinding) -> None:
        """Mount one more service; only before :meth:`start`."""
        assert self._server is None, "services are mounted before the server starts"
        self.services.append(binding)

    async def start(self) -> None:
        """Bind, start serving and mark every service SERVING."""
        telemetry.configure_tracing(f"cosmos-{self.config.name}")
        server = grpc.aio.server(
            interceptors=[*telemetry.server_interceptors(), rpc_errors.ErrorInterceptor()],
            options=SERVER_OPTIONS + self.config.extra_options,
        )
        for binding in self.services:
            binding.add_to_server(binding.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [b.name for b in self.services] + [health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        listen = self.config.listen
        try:
            self.port = server.add_insecure_port(str(listen))
        except RuntimeError as exc:
            raise errors.PortInUseError(listen.host, listen.port, self.config.name, "--listen") from exc
        if self.port == 0:
            raise errors.PortInUseError(listen.host, listen.port, self.config.name, "--listen")
        await server.start()
        self._server = server
        for name in [b.name for b in self.services] + [""]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={
                "fields": {
                    "address": f"{listen.host}:{self.port}",
                    "services": [b.name for b in self.services],
                }
            },
        )

    async def stop(self) -> None:
        """Go NOT_SERVING, let in-flight calls finish within the grace period, then close."""
        if self._server is None or self.stopping.is_set():
            return
        self.stopping.set()
        await self.health.enter_graceful_shutdown()
        log.info("stopping", extra={"fields": {"grace_period_s": self.config.grace_period}})
        await self._server.stop(self.config.grace_period)
        if self._on_stop is not None:
            await self._on_stop()
        log.info("stopped")

    async def serve_until_signalled(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop gracefully."""
        stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await self.start()
        await stop_requested.wait()
        await self.stop()
