"""The Stratum server process: job API, agent streams and pool administration."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence

from cosmos.runtime import config, jetstream, process
from cosmos.runtime.server import Server, ServerConfig, ServiceBinding
from cosmos.stratum.agent_stream import AgentServicer
from cosmos.stratum.pool import PoolServicer
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.v1 import agent_service_pb2_grpc, job_service_pb2_grpc, pool_service_pb2_grpc

PREFIX = "COSMOS_STRATUM"
DEFAULT_LISTEN = "127.0.0.1:50053"


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos stratum``."""
    p = argparse.ArgumentParser(prog="cosmos stratum", description="Run the Stratum compute-pool server.")
    process.add_server_arguments(p, PREFIX, DEFAULT_LISTEN)
    config.add_env_argument(p, PREFIX, "--nats", default=jetstream.DEFAULT_URL, help="NATS URL (JetStream)")
    config.add_env_argument(
        p, PREFIX, "--lease-seconds", default=10.0, type=float, help="agent lease without heartbeats"
    )
    config.add_env_argument(
        p, PREFIX, "--heartbeat-interval", default=2.0, type=float, help="seconds between agent heartbeats"
    )
    return p


async def serve(args: argparse.Namespace) -> None:
    """Connect to NATS, serve until SIGTERM/SIGINT, then close everything."""
    nc, _ = await jetstream.connect(args.nats, "cosmos-stratum")
    registry = AgentRegistry(lease_seconds=args.lease_seconds)
    server = Server(
        ServerConfig("stratum", config.Address.parse(args.listen, setting="--listen"), args.grace_period),
        on_stop=nc.close,
    )
    server.add(
        ServiceBinding(
            "cosmos.stratum.v1.JobService",
            # The scheduler is not built yet: the generated base answers UNIMPLEMENTED.
            job_service_pb2_grpc.JobServiceServicer(),  # type: ignore[abstract]
            job_service_pb2_grpc.add_JobServiceServicer_to_server,
        )
    )
    # Agent streams end as soon as a stop begins, so they do not hold the grace period.
    server.add(
        ServiceBinding(
            "cosmos.stratum.v1.AgentService",
            AgentServicer(registry, server.stopping, args.heartbeat_interval),
            agent_service_pb2_grpc.add_AgentServiceServicer_to_server,
        )
    )
    server.add(
        ServiceBinding(
            "cosmos.stratum.v1.PoolService",
            PoolServicer(registry),
            pool_service_pb2_grpc.add_PoolServiceServicer_to_server,
        )
    )

    async def expire_leases() -> None:
        while True:
            await asyncio.sleep(min(1.0, args.lease_seconds / 4))
            registry.expire()

    expiry = asyncio.create_task(expire_leases())
    try:
        await server.serve_until_signalled()
    finally:
        expiry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos stratum``."""
    args = parser().parse_args(argv)
    return process.run("stratum", args, lambda: serve(args))
