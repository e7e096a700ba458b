"""``cosmos agent``: connect to Stratum, register this host, keep the lease, reconnect when cut off."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cosmos import errors
from cosmos.runtime import channels, config, metrics, process, telemetry
from cosmos.security import config as security_config
from cosmos.security import pki, storage
from cosmos.security.config import Security
from cosmos.stratum.agent import enroll, inventory, orphans, sandbox, staging
from cosmos.stratum.agent import metrics as agent_metrics
from cosmos.stratum.agent.runner import RunLimits
from cosmos.stratum.agent.supervisor import JobSupervisor
from cosmos.stratum.v1 import agent_service_pb2, agent_service_pb2_grpc

log = logging.getLogger(__name__)

PREFIX = "COSMOS_AGENT"
VERSION = "0.1.0"
FIRST_RETRY = 0.2
"""Seconds before the first reconnect attempt (then doubling, up to the heartbeat interval)."""


@dataclass(frozen=True)
class AgentConfig:
    """Who the agent is and where it connects."""

    stratum: str
    """Stratum gRPC address (``HOST:PORT``)."""
    agent_id: str
    """Stable identity of this host in the pool."""
    work_dir: Path
    """Directory for per-job work dirs."""
    gpus: str = ""
    """Declared GPUs (``2xA100``) instead of probing NVML."""
    labels: tuple[tuple[str, str], ...] = ()
    """Free-form labels the scheduler can match on."""
    runtimes: str = "auto"
    """Job runtimes to offer (``--runtimes``): ``auto`` (every container engine that answers) or a
    comma-separated list."""
    reconnect_max: float = 5.0
    """Longest wait between reconnect attempts, in seconds."""
    stop_grace: float = 5.0
    """On SIGTERM, seconds running jobs get between SIGTERM and SIGKILL."""
    security: Security = field(default_factory=Security)
    """The agent's certificate (its identity: ``spiffe://cosmos/agent/<agent_id>``) and CA."""
    jail: sandbox.Sandbox | None = None
    """How jobs are confined (default: one uid per tenant from the default range when root)."""
    storage_roots: tuple[storage.Root, ...] = ()
    """Where jobs' ``file://`` artifacts may lie (``<root>/<tenant>/...``); none: refused."""
    min_free_bytes: int = RunLimits.min_free_bytes
    """Disk space every job must leave free on the work dir's disk (checked before staging)."""


class Agent:
    """One connection at a time to Stratum; reconnects with backoff until stopped."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.inventory = inventory.collect(cfg.agent_id, cfg.gpus, cfg.runtimes)
        self.stopping = asyncio.Event()
        self.connected = asyncio.Event()
        self._outbox: asyncio.Queue[agent_service_pb2.ConnectRequest | None] | None = None
        self.jobs = JobSupervisor(
            cfg.work_dir,
            self._send,
            cfg.jail,
            # Inputs from S3 are cached per host beside the work dirs (one file system: hard links).
            staging.default_registry(cfg.storage_roots, s3_cache=cfg.work_dir.absolute() / ".s3-cache"),
            RunLimits(min_free_bytes=cfg.min_free_bytes),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_interval = cfg.reconnect_max
        """Stratum's last heartbeat interval: reconnects are tried at least that often, so the agent is
        back inside its lease (several heartbeats) after any Stratum outage and keeps its jobs."""

    def hello(self) -> agent_service_pb2.ConnectRequest:
        """The registration message opening every stream (running attempts are added per session)."""
        return agent_service_pb2.ConnectRequest(
            hello=agent_service_pb2.AgentHello(
                agent_id=self.cfg.agent_id,
                hostname=socket.gethostname(),
                inventory=self.inventory,
                labels=dict(self.cfg.labels),
                version=VERSION,
            )
        )

    async def run(self) -> None:
        """Stay connected until :attr:`stopping` is set."""
        self.cfg.work_dir.mkdir(parents=True, exist_ok=True)
        # Before taking work: stop what a previous agent on this work root left running.
        await asyncio.to_thread(orphans.reap, self.cfg.work_dir)
        delay = FIRST_RETRY
        while not self.stopping.is_set():
            try:
                await self._session()
                delay = FIRST_RETRY
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "stream to Stratum ended",
                    extra={
                        "fields": {"code": exc.code().name, "details": exc.details(), "retry_in_s": delay}
                    },
                )
            self.connected.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            delay = max(FIRST_RETRY, min(delay * 2, self.cfg.reconnect_max, self._heartbeat_interval))

    def _send(self, message: agent_service_pb2.ConnectRequest) -> None:
        """Queue a message on the current connection (dropped while disconnected)."""
        if self._outbox is not None:
            if not message.request_id:
                # Each message carries its own id so Stratum can drop one re-sent on the same stream.
                message.request_id = uuid.uuid4().hex
            self._outbox.put_nowait(message)

    async def _session(self) -> None:
        outbox: asyncio.Queue[agent_service_pb2.ConnectRequest | None] = asyncio.Queue()
        self._outbox = outbox
        hello = self.hello()
        hello.hello.running.extend(self.jobs.running())
        self._send(hello)

        async def requests() -> AsyncIterator[agent_service_pb2.ConnectRequest]:
            while (message := await outbox.get()) is not None:
                yield message

        async with channels.connect(self.cfg.stratum, "stratum", self.cfg.security) as channel:
            call = agent_service_pb2_grpc.AgentServiceStub(channel).Connect(requests())
            heartbeats: asyncio.Task[None] | None = None
            stop_wait = asyncio.ensure_future(self.stopping.wait())
            try:
                responses = aiter(call)
                while True:
                    nxt = asyncio.ensure_future(anext(responses))
                    done, _ = await asyncio.wait([nxt, stop_wait], return_when=asyncio.FIRST_COMPLETED)
                    if nxt not in done:
                        nxt.cancel()
                        await self.jobs.shutdown(self.cfg.stop_grace)
                        await asyncio.sleep(0.2)  # let the last results go out
                        await outbox.put(None)
                        call.cancel()
                        return
                    try:
                        message = nxt.result()
                    except StopAsyncIteration:
                        return
                    if message.WhichOneof("message") == "welcome":
                        interval = message.welcome.heartbeat_interval.ToTimedelta().total_seconds() or 2.0
                        self._heartbeat_interval = interval
                        heartbeats = asyncio.create_task(self._heartbeats(interval))
                        self.jobs.resend_unacked()
                        self.connected.set()
                        log.info("registered with Stratum", extra={"fields": {"stratum": self.cfg.stratum}})
                    else:
                        await self._handle(message)
            finally:
                self._outbox = None
                stop_wait.cancel()
                if heartbeats is not None:
                    heartbeats.cancel()

    async def _handle(self, message: agent_service_pb2.ConnectResponse) -> None:
        kind = message.WhichOneof("message")
        if kind == "assign":
            log.info(
                "job assigned",
                extra={"fields": {"job_id": message.assign.job_id, "attempt": message.assign.attempt}},
            )
            self.jobs.assign(message.assign)
        elif kind == "cancel":
            grace = message.cancel.grace_period.ToTimedelta().total_seconds()
            self._background(self.jobs.cancel(message.cancel.job_id, message.cancel.attempt, grace))
        elif kind == "kill_stale":
            log.warning(
                "killing stale attempt",
                extra={
                    "fields": {"job_id": message.kill_stale.job_id, "attempt": message.kill_stale.attempt}
                },
            )
            self._background(self.jobs.kill_stale(message.kill_stale.job_id, message.kill_stale.attempt))
        elif kind == "ack":
            self.jobs.acked(message.ack.job_id, message.ack.attempt)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        # Cancels take their grace period; the stream keeps flowing meanwhile.
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _heartbeats(self, interval: float) -> None:
        while True:
            heartbeat = agent_service_pb2.AgentHeartbeat()
            heartbeat.send_time.GetCurrentTime()
            heartbeat.running.extend(self.jobs.running())
            self._send(agent_service_pb2.ConnectRequest(heartbeat=heartbeat))
            await asyncio.sleep(interval)


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos agent``."""
    p = argparse.ArgumentParser(prog="cosmos agent", description="Run a Stratum agent on this host.")
    config.add_env_argument(p, PREFIX, "--stratum", default="127.0.0.1:50053", help="Stratum gRPC address")
    config.add_env_argument(
        p,
        PREFIX,
        "--agent-id",
        default="",
        help="identity of this host (default: the name in its certificate, else the host name)",
    )
    config.add_env_argument(
        p, PREFIX, "--work-dir", default=".cosmos/agent", help="per-job work dirs go here"
    )
    config.add_env_argument(
        p, PREFIX, "--gpus", default="", help="declared GPUs, e.g. 2xA100:80G,T4 (else NVML)"
    )
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="label for placement")
    config.add_env_argument(
        p,
        PREFIX,
        "--runtimes",
        default="auto",
        help="job runtimes to offer: auto (process, and podman/docker where the engine answers) or a list, "
        "e.g. process (no container jobs here) or process,podman",
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--min-free-space",
        default=str(RunLimits.min_free_bytes),
        type=sandbox.ByteSize,
        help="disk space (e.g. 512M, 2G) a job must leave free on the work dir's disk: checked with its "
        "inputs' size before staging, else the job fails NO_SPACE",
    )
    add_sandbox_arguments(p)
    storage.add_argument(p, PREFIX)
    security_config.add_arguments(p, PREFIX, "agent")
    process.add_metrics_argument(p, PREFIX)
    enroll.add_arguments(p, PREFIX)
    process.add_logging_arguments(p, PREFIX)
    return p


def add_sandbox_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the job sandbox (see docs/stratum-jobs.md, "What a job can reach")."""
    d = sandbox.Limits()
    first, last = sandbox.DEFAULT_UID_RANGE
    config.add_env_argument(
        p,
        PREFIX,
        "--job-uid-range",
        default=f"{first}-{last}",
        help="when root, each tenant's jobs run as their own uid (and gid) from this range, remembered in "
        "the work dir",
    )
    config.add_env_argument(
        p, PREFIX, "--job-user", default="", help="run every job as this user (NAME or UID) instead"
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--job-tenant-roots",
        default="",
        help="comma-separated directories under which each tenant gets <dir>/<tenant>, owned by its job "
        "uid (shared scratch such as Optimus --work-root, output roots)",
    )
    limits = (
        ("--job-memory-floor", d.memory_floor_bytes, "smallest memory (RLIMIT_DATA) limit of a job"),
        ("--job-default-memory", d.default_memory_bytes, "memory limit of jobs declaring none (0: none)"),
        ("--job-max-file-size", d.file_size_bytes, "RLIMIT_FSIZE of jobs (0: none)"),
    )
    for flag, default, text in limits:
        config.add_env_argument(p, PREFIX, flag, default=str(default), type=sandbox.ByteSize, help=text)
    config.add_env_argument(
        p,
        PREFIX,
        "--job-memory-headroom",
        default=d.memory_headroom,
        type=float,
        help="a job's memory limit is its resources.memory_bytes times this",
    )
    config.add_env_argument(
        p, PREFIX, "--job-max-processes", default=d.processes, type=int, help="RLIMIT_NPROC per tenant uid"
    )
    config.add_env_argument(
        p, PREFIX, "--job-max-open-files", default=d.open_files, type=int, help="RLIMIT_NOFILE of jobs"
    )


def job_sandbox(args: argparse.Namespace, work_dir: Path, security: Security) -> sandbox.Sandbox:
    """The sandbox the flags describe; the agent's own key directory is hidden from jobs."""
    tls = security.tls
    hidden = sorted({f.parent.absolute() for f in (tls.key, tls.cert)}) if tls else []
    return sandbox.Sandbox(
        work_root=work_dir.absolute(),
        limits=sandbox.Limits(
            memory_floor_bytes=args.job_memory_floor,
            memory_headroom=args.job_memory_headroom,
            default_memory_bytes=args.job_default_memory,
            processes=args.job_max_processes,
            file_size_bytes=args.job_max_file_size,
            open_files=args.job_max_open_files,
        ),
        uid_range=sandbox.parse_uid_range(args.job_uid_range),
        job_user=sandbox.resolve_user(args.job_user) if args.job_user else None,
        tenant_roots=[Path(p.strip()).absolute() for p in args.job_tenant_roots.split(",") if p.strip()],
        hidden=hidden,
    )


def agent_identity(requested: str, security: Security) -> str:
    """The agent id: the one its certificate names (a different ``--agent-id`` is refused)."""
    if security.tls is None:
        return requested or socket.gethostname()
    subject = pki.subject_of(pki.load_cert(security.tls.cert))
    if subject.role != "agent":
        raise errors.ConfigError(
            f"{security.tls.cert} is a {subject.role} certificate; an agent needs an agent certificate "
            "(cosmos pki issue --role agent --name ID)"
        )
    if requested and requested != subject.name:
        raise errors.ConfigError(
            f"--agent-id {requested!r} differs from the certificate's agent id {subject.name!r}"
        )
    return subject.name


async def serve(args: argparse.Namespace) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    telemetry.configure_tracing(telemetry.service_name("agent"))
    labels = []
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.ConfigError(f"--label {item!r}: expected KEY=VALUE")
        labels.append((key, value))
    security = security_config.from_args(args)
    if not security.insecure and security.tls is None:
        raise errors.ConfigError(
            "no agent certificate: give --pki-dir/--pki-name or --tls-cert/--tls-key/--tls-ca "
            "(cosmos pki issue --role agent, or with --join-token), or --insecure for a loopback "
            "development Stratum"
        )
    if args.cert_renewal not in ("auto", "off"):
        raise errors.ConfigError(f"--cert-renewal {args.cert_renewal!r}: expected auto or off")
    await enroll.ensure_joined(args, security)
    agent = Agent(
        AgentConfig(
            stratum=config.parse_target(args.stratum, setting="--stratum"),
            agent_id=agent_identity(args.agent_id, security),
            security=security,
            work_dir=Path(args.work_dir),
            jail=job_sandbox(args, Path(args.work_dir), security),
            gpus=args.gpus,
            labels=tuple(labels),
            runtimes=args.runtimes,
            storage_roots=storage.roots_from_args(args),
            min_free_bytes=args.min_free_space,
        )
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stopping.set)
    metrics_server = await metrics.serve(process.metrics_address(args), "agent")
    unsample = metrics.add_refresher(
        agent_metrics.refresher(agent.connected.is_set, lambda: len(agent.jobs.attempts))
    )
    renewing = None
    if security.tls is not None and args.cert_renewal == "auto":
        renewing = asyncio.create_task(enroll.keep_renewed(agent.cfg.stratum, security, agent.stopping))
    try:
        await agent.run()
    finally:
        unsample()
        if metrics_server is not None:
            await metrics_server.stop()
        if renewing is not None:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
    log.info("agent stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos agent``."""
    args = parser().parse_args(argv)
    return process.run("agent", args, lambda: serve(args))
