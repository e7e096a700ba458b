"""The Stratum server process: job API, agent streams, pool administration and the dispatcher."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from cosmos.runtime import config, dependency, jetstream, process
from cosmos.runtime.server import Server, ServiceBinding
from cosmos.security import pki, secrets, storage
from cosmos.stratum import enrollment
from cosmos.stratum.agent_stream import AgentServicer
from cosmos.stratum.dispatcher import Dispatcher, DispatcherConfig
from cosmos.stratum.job_api import JobApi
from cosmos.stratum.placement import SchedulerPlacer
from cosmos.stratum.pool import PoolServicer
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.store import JobStore
from cosmos.stratum.v1 import agent_service_pb2_grpc, job_service_pb2_grpc, pool_service_pb2_grpc
from cosmos.stratum.validation import JobPolicy

log = logging.getLogger(__name__)

PREFIX = "COSMOS_STRATUM"
DEFAULT_LISTEN = "127.0.0.1:50053"


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos stratum``."""
    p = argparse.ArgumentParser(prog="cosmos stratum", description="Run the Stratum compute-pool server.")
    process.add_server_arguments(p, PREFIX, DEFAULT_LISTEN, "stratum")
    config.add_env_argument(p, PREFIX, "--nats", default=jetstream.DEFAULT_URL, help="NATS URL (JetStream)")
    config.add_env_argument(
        p, PREFIX, "--lease-seconds", default=10.0, type=float, help="agent lease without heartbeats"
    )
    config.add_env_argument(
        p, PREFIX, "--heartbeat-interval", default=2.0, type=float, help="seconds between agent heartbeats"
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--unplaceable-timeout",
        default=DispatcherConfig.unplaceable_timeout,
        type=float,
        help="seconds a queued job waits for an agent that could run it (e.g. while agents reconnect "
        "after a restart) before it fails",
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--reconnect-grace",
        default=DispatcherConfig.reconnect_grace,
        type=float,
        help="seconds an agent whose stream broke has to reconnect before its jobs are requeued",
    )
    config.add_env_argument(
        p, PREFIX, "--policy", default="fgd", help="placement policy: fgd, best-fit, first-fit"
    )
    config.add_env_argument(
        p, PREFIX, "--replicas", default=1, type=int, help="stream replicas (3 in a cluster)"
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--secrets-key-file",
        default="",
        help="key file that encrypts job secrets at rest (default: <--pki-dir>/secrets.key if it exists; "
        "without one, jobs with secrets are refused)",
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--job-policy",
        default="",
        help="YAML file of the executables and images each tenant's jobs may use (none: no restriction)",
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--agent-ca-dir",
        default="",
        help="directory with ca.pem and ca-key.pem (0600) to sign agent certificates with, for agents "
        "joining with a join token and renewing (an intermediate CA for agents is best); "
        "empty: agents get their certificates elsewhere",
    )
    config.add_env_argument(
        p, PREFIX, "--agent-cert-ttl", default="24h", help="lifetime of the agent certificates it signs"
    )
    storage.add_argument(p, PREFIX)
    return p


def keyring(args: argparse.Namespace) -> secrets.Keyring | None:
    """The secrets keyring of ``--secrets-key-file``, else of ``<--pki-dir>/secrets.key`` if present."""
    if args.secrets_key_file:
        return secrets.Keyring.load(Path(args.secrets_key_file))
    if args.pki_dir and (Path(args.pki_dir) / secrets.KEY_FILE).exists():
        return secrets.Keyring.load(Path(args.pki_dir) / secrets.KEY_FILE)
    log.warning("no secrets key (--secrets-key-file): jobs with secrets will be refused")
    return None


async def serve(args: argparse.Namespace) -> None:
    """Connect to NATS, recover jobs, serve until SIGTERM/SIGINT, then close everything."""
    server_config = process.server_config("stratum", args)
    keys = keyring(args)  # a bad key file stops the start, before anything connects
    authority = enrollment.load_authority(Path(args.agent_ca_dir)) if args.agent_ca_dir else None
    cert_ttl = pki.parse_ttl(args.agent_cert_ttl)
    roots = storage.roots_from_args(args)
    # Stratum presents its own service certificate to NATS, which maps it to the stratum user.
    nc, js = await jetstream.connect(args.nats, "cosmos-stratum", tls=server_config.security.tls)
    store = JobStore(nc, js, replicas=args.replicas)
    await store.ensure()
    registry = AgentRegistry(lease_seconds=args.lease_seconds, revoked=await store.revoked())
    policy = JobPolicy.load(Path(args.job_policy)) if args.job_policy else None
    timing = DispatcherConfig(
        unplaceable_timeout=args.unplaceable_timeout, reconnect_grace=args.reconnect_grace
    )
    dispatcher = Dispatcher(
        store, registry, SchedulerPlacer(policy=args.policy), timing, keyring=keys, policy=policy
    )
    enroll = enrollment.Enrollment(store, registry.revoked, authority, cert_ttl)
    await dispatcher.recover()
    # The job API and revoking need JetStream; agent streams and pool reads go on without it.
    gate = dependency.Gate("NATS", lambda: nc.is_connected, needs=_needs_nats)
    server = Server(server_config, on_stop=nc.close, interceptors=[gate])
    server.add(
        ServiceBinding(
            "cosmos.stratum.v1.JobService",
            JobApi(dispatcher, server.stopping, roots),
            job_service_pb2_grpc.add_JobServiceServicer_to_server,
        )
    )
    # Agent streams end as soon as a stop begins, so they do not hold the grace period.
    server.add(
        ServiceBinding(
            "cosmos.stratum.v1.AgentService",
            AgentServicer(registry, dispatcher, server.stopping, args.heartbeat_interval, enroll),
            agent_service_pb2_grpc.add_AgentServiceServicer_to_server,
        )
    )
    server.add(
        ServiceBinding(
            "cosmos.stratum.v1.PoolService",
            PoolServicer(registry, dispatcher, enroll),
            pool_service_pb2_grpc.add_PoolServiceServicer_to_server,
        )
    )
    dispatching = asyncio.create_task(dispatcher.run(server.stopping))
    services = [b.name for b in server.services]
    watching = asyncio.create_task(gate.watch(server.health, services, server.stopping))
    try:
        await server.serve_until_signalled()
    finally:
        for task in (dispatching, watching):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _needs_nats(method: str) -> bool:
    # Join tokens live in a KV bucket: issuing, listing, deleting and redeeming them need it too.
    return method.startswith("/cosmos.stratum.v1.JobService/") or method.rsplit("/", 1)[-1] in {
        "RevokeAgent",
        "CreateJoinToken",
        "ListJoinTokens",
        "DeleteJoinToken",
        "JoinAgent",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos stratum``."""
    args = parser().parse_args(argv)
    return process.run("stratum", args, lambda: serve(args))
