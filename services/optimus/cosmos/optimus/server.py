"""The Optimus server process: the stateless encode API in front of Plato and Stratum."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cosmos.optimus.v1 import encode_service_pb2_grpc
from cosmos.runtime import channels, config, process
from cosmos.runtime.server import Server, ServerConfig, ServiceBinding

PREFIX = "COSMOS_OPTIMUS"
DEFAULT_LISTEN = "127.0.0.1:50051"


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos optimus``."""
    p = argparse.ArgumentParser(prog="cosmos optimus", description="Run the Optimus encode API server.")
    process.add_server_arguments(p, PREFIX, DEFAULT_LISTEN)
    config.add_env_argument(p, PREFIX, "--plato", default="127.0.0.1:50052", help="Plato gRPC address")
    config.add_env_argument(p, PREFIX, "--stratum", default="127.0.0.1:50053", help="Stratum gRPC address")
    return p


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT; Optimus keeps no state, only channels to Plato and Stratum."""
    plato = channels.insecure_channel(str(config.Address.parse(args.plato, setting="--plato")))
    stratum = channels.insecure_channel(str(config.Address.parse(args.stratum, setting="--stratum")))

    async def close_channels() -> None:
        await plato.close(None)
        await stratum.close(None)

    server = Server(
        ServerConfig("optimus", config.Address.parse(args.listen, setting="--listen"), args.grace_period),
        [
            ServiceBinding(
                "cosmos.optimus.v1.EncodeService",
                # The encode API is not built yet: the generated base answers UNIMPLEMENTED.
                encode_service_pb2_grpc.EncodeServiceServicer(),  # type: ignore[abstract]
                encode_service_pb2_grpc.add_EncodeServiceServicer_to_server,
            )
        ],
        on_stop=close_channels,
    )
    await server.serve_until_signalled()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos optimus``."""
    args = parser().parse_args(argv)
    return process.run("optimus", args, lambda: serve(args))
