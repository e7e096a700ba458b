"""Waiting until a component is ready: a server reports SERVING through the standard health service,
the console answers its HTTPS health path, Stratum lists an agent READY."""

from __future__ import annotations

import asyncio
import http.client
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cosmos import errors
from cosmos.runtime import channels
from cosmos.security.config import Security
from cosmos.stratum.v1 import agent_pb2, pool_service_pb2, pool_service_pb2_grpc


async def health_status(
    target: str, service: str = "", timeout: float = 2.0, *, role: str = "", security: Security | None = None
) -> str:
    """The health status name of ``service`` at ``target`` (``SERVING``, ``NOT_SERVING``, ...)."""
    async with channels.connect(target, role or "plato", security or Security(insecure=True)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def wait_serving(
    name: str,
    target: str,
    services: Sequence[str],
    *,
    timeout: float,
    gave_up: Callable[[], str | None] = lambda: None,
    security: Security | None = None,
) -> None:
    """Poll until every service in ``services`` (and ``""``) is SERVING at ``target``.

    ``gave_up`` is asked between polls; a non-None answer (e.g. "exited with code 3") stops the wait.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = [*services, ""]
    last = "no answer yet"
    while pending:
        reason = gave_up()
        if reason is not None:
            raise errors.ProcessStartError(name, reason)
        if loop.time() > deadline:
            raise errors.ProcessStartError(name, f"not SERVING at {target} after {timeout:.0f}s ({last})")
        try:
            status = await health_status(target, pending[0], role=name, security=security)
        except grpc.aio.AioRpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(0.1)
            continue
        if status == "SERVING":
            pending.pop(0)
        else:
            last = f"{pending[0] or 'overall'} is {status}"
            await asyncio.sleep(0.1)


def _https_status(url: str, ca: Path) -> int:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443, context=context, timeout=2)
    try:
        conn.request("GET", parts.path or "/")
        return conn.getresponse().status
    finally:
        conn.close()


async def wait_https(
    url: str, ca: Path, timeout: float, *, gave_up: Callable[[], int | None] = lambda: None
) -> None:
    """Poll ``url`` (HTTPS, the server's certificate checked against ``ca``) until it answers 200;
    ``gave_up`` returning an exit code stops the wait."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no answer yet"
    while True:
        code = gave_up()
        if code is not None:
            raise errors.ProcessStartError(url, f"exited with code {code}")
        if loop.time() > deadline:
            raise errors.ProcessStartError(url, f"not answering after {timeout:.0f}s ({last})")
        try:
            status = await asyncio.to_thread(_https_status, url, ca)
            if status == 200:
                return
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc) or type(exc).__name__
        await asyncio.sleep(0.1)


async def wait_agent_ready(
    stratum: str,
    agent_id: str,
    *,
    timeout: float,
    security: Security,
    gave_up: Callable[[], int | None] = lambda: None,
) -> None:
    """Poll Stratum at ``stratum`` until it lists agent ``agent_id`` READY; ``gave_up`` returning an
    exit code stops the wait."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with channels.connect(stratum, "stratum", security) as channel:
        pool = pool_service_pb2_grpc.PoolServiceStub(channel)
        while loop.time() < deadline:
            code = gave_up()
            if code is not None:
                raise errors.ProcessStartError(agent_id, f"exited with code {code}")
            try:
                reply = await pool.GetAgent(pool_service_pb2.GetAgentRequest(agent_id=agent_id), timeout=2)
                if reply.agent.state == agent_pb2.AGENT_STATE_READY:
                    return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.1)
    raise errors.ProcessStartError(agent_id, f"not registered READY with Stratum after {timeout:.0f}s")
