"""A server's health follows the dependency it cannot work without (NATS, or Plato for Optimus).

While the dependency is away, the RPCs that need it are answered UNAVAILABLE at once, with a
``google.rpc.RetryInfo`` (rather than after a client timeout, or as UNKNOWN), and the server's health
says NOT_SERVING for each of its services and ``""``; when the dependency is back, health returns to
SERVING on its own. :class:`Gate` is both the interceptor and the watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cosmos import errors
from cosmos.runtime import handlers

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25
"""Seconds between looks at the dependency."""


class Gate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # grpc-stubs lags grpcio
    """Refuses the calls that need ``name`` while ``is_up()`` is false, and keeps health in step."""

    def __init__(
        self,
        name: str,
        is_up: Callable[[], bool],
        needs: Callable[[str], bool] = lambda method: True,
        retry_delay: float = 2.0,
    ) -> None:
        self.name = name
        """What the dependency is called in errors and logs (``NATS``, ``Plato``)."""
        self.is_up = is_up
        """Whether the dependency can be used right now (cheap: called on every gated call)."""
        self.needs = needs
        """Whether a method (``/package.Service/Method``) needs the dependency."""
        self.retry_delay = retry_delay
        """Seconds callers are asked to wait before retrying."""
        self.up = True
        """What the watcher saw last."""

    def unavailable(self) -> errors.UnavailableError:
        """The answer while the dependency is away."""
        error = errors.UnavailableError(
            f"{self.name} is not reachable right now; retry with the same request_id",
            metadata={"dependency": self.name.lower()},
        )
        error.retry_delay = self.retry_delay
        return error

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        admit = None if method.startswith("/grpc.") else self.admission(method)
        # Health and reflection answer whatever the dependency does.
        return handler if admit is None else handlers.guarded(handler, admit)

    def admission(self, method: str) -> Callable[[Any], None] | None:
        """What a call of ``method`` must pass before its handler runs (None: nothing)."""
        return self._admit if self.needs(method) else None

    def _admit(self, request: Any) -> None:
        if not self.is_up():
            raise self.unavailable()

    async def watch(self, health: Any, services: Sequence[str], stopping: asyncio.Event) -> None:
        """Set ``services`` and ``""`` NOT_SERVING / SERVING in ``health`` as the dependency goes and
        comes, until ``stopping`` (then the server's own shutdown owns health)."""
        while not stopping.is_set():
            up = self.is_up()
            if up != self.up and not stopping.is_set():
                self.up = up
                serving = health_pb2.HealthCheckResponse
                status = serving.SERVING if up else serving.NOT_SERVING
                log.warning(
                    "dependency " + ("back" if up else "lost"), extra={"fields": {"dependency": self.name}}
                )
                for service in [*services, ""]:
                    await health.set(service, status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLL_INTERVAL)


class PeerHealth:
    """Whether a peer server answers SERVING, looked at every ``interval`` seconds (for :class:`Gate`)."""

    def __init__(self, channel: grpc.aio.Channel, interval: float = 1.0, timeout: float = 2.0) -> None:
        self.stub = health_pb2_grpc.HealthStub(channel)
        self.interval = interval
        self.timeout = timeout
        self.up = True
        """Optimistic until the peer was once seen SERVING: a server started before its peer (or with
        none yet) serves what it can, and starts following the peer once it has met it."""
        self._met = False

    def is_up(self) -> bool:
        """The last look's answer."""
        return self.up

    async def run(self, stopping: asyncio.Event) -> None:
        """Look until ``stopping``."""
        while not stopping.is_set():
            try:
                reply = await self.stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout)
                up = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError as exc:
                # Refused for credentials is not an outage; anything else is.
                up = exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED)
            self._met = self._met or up
            self.up = up or not self._met
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)
