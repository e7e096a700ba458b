"""The Plato server process: workflow API and step API over JetStream."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cosmos.plato.v1 import step_service_pb2_grpc, workflow_service_pb2_grpc
from cosmos.runtime import config, jetstream, process
from cosmos.runtime.server import Server, ServerConfig, ServiceBinding

PREFIX = "COSMOS_PLATO"
DEFAULT_LISTEN = "127.0.0.1:50052"


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos plato``."""
    p = argparse.ArgumentParser(prog="cosmos plato", description="Run the Plato workflow engine server.")
    process.add_server_arguments(p, PREFIX, DEFAULT_LISTEN)
    config.add_env_argument(p, PREFIX, "--nats", default=jetstream.DEFAULT_URL, help="NATS URL (JetStream)")
    return p


async def serve(args: argparse.Namespace) -> None:
    """Connect to NATS, serve until SIGTERM/SIGINT, then close everything."""
    nc, _ = await jetstream.connect(args.nats, "cosmos-plato")
    server = Server(
        ServerConfig("plato", config.Address.parse(args.listen, setting="--listen"), args.grace_period),
        [
            ServiceBinding(
                "cosmos.plato.v1.WorkflowService",
                # The engine is not built yet: the generated base answers UNIMPLEMENTED.
                workflow_service_pb2_grpc.WorkflowServiceServicer(),  # type: ignore[abstract]
                workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server,
            ),
            ServiceBinding(
                "cosmos.plato.v1.StepService",
                step_service_pb2_grpc.StepServiceServicer(),  # type: ignore[abstract]
                step_service_pb2_grpc.add_StepServiceServicer_to_server,
            ),
        ],
        on_stop=nc.close,
    )
    await server.serve_until_signalled()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos plato``."""
    args = parser().parse_args(argv)
    return process.run("plato", args, lambda: serve(args))
