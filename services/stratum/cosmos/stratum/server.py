"""The Stratum server process: job API, agent streams, pool administration and the dispatcher."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from cosmos.runtime import config, dependency, jetstream, metrics, process
from cosmos.runtime.server import Server, ServiceBinding
from cosmos.security import pki, secrets, storage
from cosmos.security.job_policy import JobPolicy
from cosmos.stratum import enrollment, leader
from cosmos.stratum import metrics as stratum_metrics
from cosmos.stratum.agent_stream import AgentServicer
from cosmos.stratum.dispatcher import Dispatcher, DispatcherConfig
from cosmos.stratum.job_api import JobApi
from cosmos.stratum.placement import SchedulerAllocator
from cosmos.stratum.pool import PoolServicer
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.store import JobStore
from cosmos.stratum.v1 import agent_service_pb2_grpc, job_service_pb2_grpc, pool_service_pb2_grpc

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
        p,
        PREFIX,
        "--advertise",
        default="",
        help="HOST:PORT other replicas' clients are told to reach this one at while it leads "
        "(default: the --listen address)",
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--lease-ttl",
        default=leader.LeaseConfig.ttl,
        type=float,
        help="seconds the leader lease lasts unrenewed: a follower takes over after this long "
        "(renewed every ttl/6)",
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


def lease_config(ttl: float) -> leader.LeaseConfig:
    """The lease timing for ``--lease-ttl``: renewals six times per ttl, a third of it as safety."""
    return leader.LeaseConfig(ttl=ttl, renew_interval=ttl / 6, safety=ttl / 3)


async def serve(args: argparse.Namespace) -> None:
    """Connect to NATS and campaign for the leader lease; once elected recover the jobs and serve them
    until SIGTERM/SIGINT (a follower serves health only, answering the rest with the leader's
    address), then close everything. Losing the lease ends the process (its memory is stale)."""
    server_config = process.server_config("stratum", args)
    keys = keyring(args)  # a bad key file stops the start, before anything connects
    authority = enrollment.load_authority(Path(args.agent_ca_dir)) if args.agent_ca_dir else None
    cert_ttl = pki.parse_ttl(args.agent_cert_ttl)
    roots = storage.roots_from_args(args)
    timing = lease_config(args.lease_ttl)
    # Stratum presents its own service certificate to NATS, which maps it to the stratum user.
    nc, js = await jetstream.connect(args.nats, "cosmos-stratum", tls=server_config.security.tls)
    store = JobStore(nc, js, replicas=args.replicas)
    await store.ensure()
    advertised = args.advertise or args.listen
    me = leader.Holder(replica=leader.replica_id(advertised), address=advertised)
    lease = leader.Lease(store.leader, me, timing)
    store.fence = lease.ensure_held
    registry = AgentRegistry(lease_seconds=args.lease_seconds, revoked=await store.revoked())
    policy = JobPolicy.load(Path(args.job_policy)) if args.job_policy else None
    dispatching_config = DispatcherConfig(
        unplaceable_timeout=args.unplaceable_timeout, reconnect_grace=args.reconnect_grace
    )
    dispatcher = Dispatcher(
        store,
        registry,
        SchedulerAllocator(policy=args.policy),
        dispatching_config,
        keyring=keys,
        policy=policy,
    )
    enroll = enrollment.Enrollment(store, registry.revoked, authority, cert_ttl)
    # The pool's state, read right before each scrape (a follower's is empty).
    unsample = metrics.add_refresher(
        stratum_metrics.refresher(
            lambda: list(dispatcher.jobs.values()),
            lambda: list(registry.sorted()),
            lambda: getattr(dispatcher.allocator, "scheduler", None),
        )
    )
    recovered = asyncio.Event()
    # Every RPC needs the lease (and the job API, revoking and joins need JetStream too); agent streams
    # and pool reads of the leader go on without NATS for a while.
    gate = LeaderGate(lease, recovered, lambda: nc.is_connected)

    # Health says SERVING once this replica knows its part: leader with its jobs recovered, or follower.
    async def closing() -> None:
        unsample()
        if nc.is_connected:  # NATS away: nothing to release the lease with; it lapses after its ttl
            await lease.release()  # a follower takes over at once, not after the ttl
        await jetstream.close(nc)

    server = Server(server_config, on_stop=closing, interceptors=[gate], serving_at_start=False)
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

    async def elected() -> None:
        # Agents revoked by the previous leader since this replica started are refused here too.
        registry.revoked.update(await store.revoked())
        await dispatcher.recover()
        recovered.set()
        await dispatcher.run(server.stopping)

    services = [b.name for b in server.services]
    server.alongside(gate.watch(server.health, services, server.stopping, server.started))
    server.alongside(leader.lead(lease, server.stopping, elected))  # lost: the server stops, raising it
    try:
        await server.serve_until_signalled()
    finally:
        await lease.release()  # if the stop did not (a failed start)


class LeaderGate(dependency.Gate):
    """Refuses every Stratum RPC unless this replica leads (and has recovered its jobs), and the ones
    that need JetStream while NATS is away; health follows both."""

    def __init__(self, lease: leader.Lease, recovered: asyncio.Event, nats_up: Callable[[], bool]) -> None:
        super().__init__("NATS", self._up)
        self.lease = lease
        self.recovered = recovered
        self.nats_up = nats_up

    def _up(self) -> bool:
        return self.leads() and self.nats_up()

    def leads(self) -> bool:
        """Whether this replica serves jobs now: it holds the lease and has recovered the jobs."""
        return self.lease.is_leader and self.recovered.is_set()

    def admission(self, method: str) -> Callable[[Any], None]:
        def admit(request: Any) -> None:
            if not self.leads():
                raise self.lease.refusal()
            if _needs_nats(method) and not self.nats_up():
                raise self.unavailable()

        return admit

    async def watch(
        self,
        health: Any,
        services: Sequence[str],
        stopping: asyncio.Event,
        started: asyncio.Event | None = None,
    ) -> None:
        """Each Stratum service SERVING only on the leader with NATS up; ``""`` (the process) once it
        knows its part (leader with its jobs recovered, or follower) and while NATS is up, so a
        follower is a healthy process that serves nothing yet. Begins once the server has
        ``started`` (which marks everything NOT_SERVING)."""
        if started is not None:
            await _first(started, stopping)
        shown = dict.fromkeys(["", *services], False)
        while not stopping.is_set():
            settled = self.lease.tried and (not self.lease.elected or self.recovered.is_set())
            up = {"": self.nats_up() and settled, **{service: self._up() for service in services}}
            for service, serving in up.items():
                if shown.get(service) != serving and not stopping.is_set():
                    status = health_pb2.HealthCheckResponse
                    await health.set(service, status.SERVING if serving else status.NOT_SERVING)
                    shown[service] = serving
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), dependency.POLL_INTERVAL)


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


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
