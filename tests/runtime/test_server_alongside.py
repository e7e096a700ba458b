"""Work run beside a server (:meth:`Server.alongside`): a failure stops the server and is raised, work
that ends well leaves it serving, and what still runs when it stops is cancelled."""

from __future__ import annotations

import asyncio

import pytest
import security_harness

from cosmos import errors
from cosmos.runtime.config import Address
from cosmos.runtime.server import Server, ServerConfig
from cosmos.security.config import Security
from cosmos.security.tls import TlsFiles


def _server() -> Server:
    security = Security(tls=TlsFiles.in_dir(security_harness.pki_dir(), "plato"))
    return Server(ServerConfig("beside", Address("127.0.0.1", 0), grace_period=0.5, security=security))


class Lost(errors.CosmosError):
    pass


async def test_a_failure_alongside_stops_the_server_and_is_raised_the_rest_cancelled() -> None:
    server = _server()
    cancelled = asyncio.Event()
    done_well = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def ends_well() -> None:
        await server.started.wait()
        done_well.set()

    async def fails_later() -> None:
        await done_well.wait()
        await asyncio.sleep(0.2)
        assert not server.stopping.is_set()  # the work that ended well left it serving
        raise Lost("the lease is gone")

    server.alongside(forever())
    server.alongside(ends_well())
    server.alongside(fails_later())
    with pytest.raises(Lost, match="the lease is gone"):
        await asyncio.wait_for(server.serve_until_signalled(), 20)
    assert server.port > 0 and server.stopping.is_set() and cancelled.is_set()


async def test_a_failed_start_cancels_the_work_alongside() -> None:
    first = _server()
    await first.start()
    try:
        taken = Server(
            ServerConfig("beside", Address("127.0.0.1", first.port), security=first.config.security)
        )
        beside = taken.alongside(asyncio.Event().wait())
        with pytest.raises(errors.PortInUseError):
            await taken.serve_until_signalled()
        assert beside.cancelled()
    finally:
        await first.stop()
