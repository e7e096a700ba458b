"""The Optimus server process: the stateless encode API in front of Plato and Stratum."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc

from cosmos import errors
from cosmos.optimus.api import EncodeApi
from cosmos.optimus.v1 import encode_service_pb2_grpc
from cosmos.runtime import channels, config, process
from cosmos.runtime.server import Server, ServerConfig, ServiceBinding

PREFIX = "COSMOS_OPTIMUS"
DEFAULT_LISTEN = "127.0.0.1:50051"
log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos optimus``."""
    p = argparse.ArgumentParser(prog="cosmos optimus", description="Run the Optimus encode API server.")
    process.add_server_arguments(p, PREFIX, DEFAULT_LISTEN)
    config.add_env_argument(p, PREFIX, "--plato", default="127.0.0.1:50052", help="Plato gRPC address")
    config.add_env_argument(p, PREFIX, "--stratum", default="127.0.0.1:50053", help="Stratum gRPC address")
    config.add_env_argument(
        p,
        PREFIX,
        "--work-root",
        default=".cosmos/work",
        help="scratch space of encodes (shared with the agents)",
    )
    return p


async def register_definition(api: EncodeApi, timeout: float = 60.0) -> None:
    """Register the encode workflow with Plato, waiting for Plato to come up."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            version = await api.register()
            log.info("encode workflow registered", extra={"fields": {"version": version}})
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or asyncio.get_running_loop().time() > deadline:
                raise errors.UnavailableError(
                    f"cannot register the encode workflow with Plato: {exc.details()}"
                ) from exc
            await asyncio.sleep(0.5)


async def serve(args: argparse.Namespace) -> None:
    """Register the encode workflow, then serve until SIGTERM/SIGINT."""
    plato = channels.insecure_channel(str(config.Address.parse(args.plato, setting="--plato")))
    stratum = channels.insecure_channel(str(config.Address.parse(args.stratum, setting="--stratum")))

    async def close_channels() -> None:
        await plato.close(None)
        await stratum.close(None)

    server = Server(
        ServerConfig("optimus", config.Address.parse(args.listen, setting="--listen"), args.grace_period),
        on_stop=close_channels,
    )
    api = EncodeApi(plato, Path(args.work_root), server.stopping)
    await register_definition(api)
    server.add(
        ServiceBinding(
            "cosmos.optimus.v1.EncodeService",
            api,
            encode_service_pb2_grpc.add_EncodeServiceServicer_to_server,
        )
    )
    await server.serve_until_signalled()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos optimus``."""
    args = parser().parse_args(argv)
    return process.run("optimus", args, lambda: serve(args))
