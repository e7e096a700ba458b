"""``cosmos up``: the whole platform as child processes of one command, on loopback ports.

Start order follows the dependencies: the S3 server (SeaweedFS, when ``s3`` is on:
:mod:`cosmos.stack.seaweed`) and NATS (JetStream) first, then Plato, Stratum and Optimus in
parallel (each waits for SERVING), then the local agent (ready once Stratum lists it READY). Stop order
is the reverse, each child getting SIGTERM and its grace period. While it runs, ``cosmos up`` restarts
a child that exits (:mod:`cosmos.stack.supervisor`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cosmos import errors
from cosmos.runtime import channels, config, jetstream
from cosmos.runtime.config import Address
from cosmos.security import storage
from cosmos.security.config import Security
from cosmos.security.context import Context
from cosmos.stack import credentials, natsd, readiness, seaweed
from cosmos.stack.children import Child
from cosmos.stack.credentials import StackCredentials
from cosmos.stratum.v1 import agent_pb2, pool_service_pb2, pool_service_pb2_grpc

log = logging.getLogger(__name__)

OPTIMUS_SERVICES = ("cosmos.optimus.v1.EncodeService",)
PLATO_SERVICES = ("cosmos.plato.v1.WorkflowService", "cosmos.plato.v1.StepService")
STRATUM_SERVICES = (
    "cosmos.stratum.v1.JobService",
    "cosmos.stratum.v1.AgentService",
    "cosmos.stratum.v1.PoolService",
)


DEFAULT_METRICS_PORTS = {"optimus": 9451, "plato": 9452, "stratum": 9453, "agent": 9454}
"""The metrics ports of ``cosmos up`` (``--metrics-port`` moves them; library users of
:class:`StackConfig` opt in): plaintext HTTP on the stack's loopback host, ``/metrics`` only."""
DEFAULT_CONSOLE_PORT = 50444
"""The web console's HTTPS port of ``cosmos up`` (library users of :class:`StackConfig` opt in)."""
DEFAULT_WEBHOOK_PORT = 50443
"""The webhook port of ``cosmos up`` (library users of :class:`StackConfig` opt in)."""
STARTER_WEBHOOK_CONFIG = """\
# Optimus's webhook (docs/webhooks.md). Senders sign with the secret in ./secret; to rotate, add a
# second file here, move the senders to it, then remove the first.
secret_files: [secret]
max_body_bytes: 1048576
tolerance_seconds: 300
rules: []
# rules:
#   - name: new-sources            # new objects under media/incoming/ start an encode
#     bucket: media
#     prefix: incoming/
#     source: "s3://{bucket}/{key}"
#     output: "s3://media/encoded/{stem}/"
#     ladder: default
#     tenant: default
#     identity: media-webhook
"""


@dataclass
class StackConfig:
    """Where the embedded stack listens and keeps its data."""

    host: str = "127.0.0.1"
    """Interface every server binds to."""
    optimus_port: int = 50051
    """Optimus (encode API) gRPC port."""
    webhook_port: int = 0
    """Optimus's HTTPS webhook port (docs/webhooks.md); 0: no webhook (``cosmos up``: 50443)."""
    console_port: int = 0
    """The web console's HTTPS port (docs/console.md); 0: no console (``cosmos up``: 50444). It needs
    credentials and token ports: an ``insecure`` stack or ``token_port_offset=0`` runs none."""
    plato_port: int = 50052
    """Plato (workflow engine) gRPC port."""
    stratum_port: int = 50053
    """Stratum (compute pool) gRPC port."""
    nats_port: int = 4222
    """NATS client port (of the first node in a cluster)."""
    nats_cluster: int = 1
    """NATS servers: 1, or 3 for a JetStream cluster whose streams and buckets are R3 (the other nodes'
    client ports and every route port are picked free at start; docs/architecture.md "NATS cluster")."""
    nats_extra_ports: tuple[int, ...] = ()
    """Client ports of the cluster's other nodes (set at start)."""
    data_dir: Path = Path(".cosmos")
    """Directory for JetStream storage (``nats/``), logs (``logs/``) and job work dirs."""
    agent_gpus: str = ""
    """GPUs the local agent declares instead of probing NVML, e.g. ``2xA100`` (empty: probe)."""
    start_timeout: float = 60.0
    """Seconds each component gets to become ready."""
    log_level: str = "info"
    """Log level of the child processes."""
    insecure: bool = False
    """Plaintext and no authentication (loopback only, development): no PKI is made or used."""
    token_port_offset: int = 10
    """Each service also takes platform tokens on its port plus this (0: no token ports)."""
    storage_root: Path | None = None
    """The storage root of Optimus, Stratum and the agent (tenants' files lie in ``<root>/<tenant>/``);
    None: ``<data-dir>/storage``."""

    service_replicas: int = 1
    """Processes of Plato, Stratum and Optimus each: 2 or more share the load (one Stratum leads, the
    others follow; docs/architecture.md "Replicas"). The first of each listens on its port above, the
    others on ports picked free at start (no token ports); clients get every address."""
    replica_ports: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Ports of each service's other replicas (set at start)."""

    optimus_metrics_port: int = 0
    """Optimus's Prometheus metrics port (``/metrics``, plaintext HTTP); 0: none (``cosmos up``: 9451)."""
    plato_metrics_port: int = 0
    """Plato's metrics port; 0: none (``cosmos up``: 9452)."""
    stratum_metrics_port: int = 0
    """Stratum's metrics port; 0: none (``cosmos up``: 9453)."""
    agent_metrics_port: int = 0
    """The local agent's metrics port; 0: none (``cosmos up``: 9454)."""

    s3: bool = False
    """Run the embedded S3 server (SeaweedFS) and give every service ``s3://<s3_bucket>`` as a storage
    root beside the local one (``cosmos up`` turns it on; tests that need it opt in)."""
    s3_port: int = 8333
    """The S3 gateway's port (its internal master, volume and filer ports are picked free)."""

    @property
    def storage_dir(self) -> Path:
        """The storage root in effect, absolute: ``<root>/<tenant>`` belongs to the tenant's jobs
        (sources, outputs)."""
        return (self.storage_root or self.data_dir / "storage").absolute()

    def address(self, port: int) -> Address:
        """``host`` with ``port``."""
        return Address(self.host, port)

    def token_port(self, port: int) -> int:
        """The token port of the service on ``port`` (0 when token ports are off)."""
        return port + self.token_port_offset if self.token_port_offset else 0

    @property
    def runs_console(self) -> bool:
        """Whether the stack serves the web console (a port, credentials and token ports)."""
        return bool(self.console_port and not self.insecure and self.token_port_offset)

    @property
    def console_url(self) -> str:
        """The console's address (empty when it does not run)."""
        return f"https://{self.address(self.console_port)}/" if self.runs_console else ""

    @property
    def agent_id(self) -> str:
        """Id of the local agent."""
        return f"local-{self.stratum_port}"

    @property
    def nats_urls(self) -> list[str]:
        """Client URL of every NATS node."""
        return [f"nats://{self.address(p)}" for p in (self.nats_port, *self.nats_extra_ports)]

    @property
    def nats_url(self) -> str:
        """What the services' ``--nats`` gets: every node, comma-separated, so that they fail over."""
        return ",".join(self.nats_urls)

    def metrics_port(self, component: str) -> int:
        """The metrics port of ``component`` (optimus, plato, stratum, agent; 0: none)."""
        return {
            "optimus": self.optimus_metrics_port,
            "plato": self.plato_metrics_port,
            "stratum": self.stratum_metrics_port,
            "agent": self.agent_metrics_port,
        }[component]

    def ports(self, service: str) -> list[int]:
        """Every replica's port of ``service`` (plato, stratum, optimus), the first one's first."""
        first = {"plato": self.plato_port, "stratum": self.stratum_port, "optimus": self.optimus_port}[
            service
        ]
        return [first, *self.replica_ports.get(service, ())]

    def target(self, service: str) -> str:
        """What a client of ``service`` dials: every replica's address, comma-separated."""
        return ",".join(str(self.address(port)) for port in self.ports(service))

    @property
    def replicas(self) -> int:
        """Replicas of every stream and bucket: one per NATS node, up to JetStream's maximum of 5."""
        return min(self.nats_cluster, 5)


@dataclass(frozen=True)
class Endpoint:
    """A running component and where to reach it."""

    name: str
    """Component name (nats, plato, stratum, optimus, agent)."""
    address: str
    """How to reach it (``HOST:PORT``, a URL, or what it is connected to)."""
    pid: int
    """Its process id."""
    services: Sequence[str] = ()
    """gRPC services it serves."""


@dataclass
class EmbeddedStack:
    """The running stack; use ``async with`` or call :meth:`start` and :meth:`stop`."""

    config: StackConfig = field(default_factory=StackConfig)
    """Ports and directories."""
    children: list[Child] = field(default_factory=list)
    """Started components, in start order."""
    endpoints: list[Endpoint] = field(default_factory=list)
    """What is reachable where, once started."""
    credentials: StackCredentials | None = None
    """The dev CA and certificates (None with ``insecure``)."""
    s3: seaweed.S3Server | None = None
    """The embedded S3 server, when it runs."""
    _metrics_urls: dict[str, str] = field(default_factory=dict)

    @property
    def admin(self) -> Security:
        """The local admin's credentials (what the CLI and readiness checks call with)."""
        return Security(insecure=True) if self.credentials is None else self.credentials.admin

    async def __aenter__(self) -> EmbeddedStack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _check_ports(self) -> None:
        c = self.config
        for owner, port, setting in (
            ("nats", c.nats_port, "--nats-port / COSMOS_NATS_PORT"),
            ("plato", c.plato_port, "--plato-port / COSMOS_PLATO_PORT"),
            ("stratum", c.stratum_port, "--stratum-port / COSMOS_STRATUM_PORT"),
            ("optimus", c.optimus_port, "--optimus-port / COSMOS_OPTIMUS_PORT"),
        ):
            config.ensure_port_free(c.address(port), owner, setting)
            if owner != "nats" and not c.insecure and c.token_port(port):
                config.ensure_port_free(c.address(c.token_port(port)), owner, "--token-port-offset")
        if c.webhook_port:
            config.ensure_port_free(c.address(c.webhook_port), "optimus webhook", "--webhook-port")
        for owner in ("optimus", "plato", "stratum", "agent"):
            if c.metrics_port(owner):
                config.ensure_port_free(
                    c.address(c.metrics_port(owner)), f"{owner} metrics", "--metrics-port"
                )
        if c.runs_console:
            config.ensure_port_free(c.address(c.console_port), "console", "--console-port")

    def _webhook_args(self) -> list[str]:
        """Optimus's webhook flags; its secret (0600) and a starter config (no rules: every event is
        acknowledged and ignored until rules are added) under ``<data-dir>/webhook/``, kept if there."""
        c = self.config
        if not c.webhook_port:
            return []
        from cosmos.optimus import webhook  # only the stack that serves a webhook needs aiohttp

        directory = (c.data_dir / "webhook").absolute()
        webhook.create_secret(directory / "secret")
        config_file = directory / "webhook.yaml"
        if not config_file.exists():
            config_file.write_text(STARTER_WEBHOOK_CONFIG)
        return ["--webhook-listen", str(c.address(c.webhook_port)), "--webhook-config", str(config_file)]

    def _child(self, name: str, argv: Sequence[str]) -> Child:
        child = Child(name, list(argv), self.config.data_dir / "logs" / f"{name}.log")
        if self.s3 is not None and name != "s3":
            # The standard AWS variables: every S3 client in the services reads them (cosmos.runtime.s3).
            child.env.update(self.s3.env())
        return child

    def _security_args(self, name: str) -> list[str]:
        if self.credentials is None:
            return ["--insecure"]
        return ["--pki-dir", str(self.credentials.directory), "--pki-name", name]

    def _service(self, name: str, port: int, *extra: str, replica: int = 1) -> Child:
        """The child running service ``name`` on ``port``; replicas after the first are named
        ``<name>-<n>`` and take no platform tokens."""
        argv = [sys.executable, "-m", "cosmos.cli", name, "--listen", str(self.config.address(port)), *extra]
        argv += self._security_args(name)
        token_port = self.config.token_port(port)
        if self.credentials is not None and token_port and replica == 1:
            argv += ["--token-listen", str(self.config.address(token_port))]
        argv += self._metrics_args(name, replica)
        child = self._child(name if replica == 1 else f"{name}-{replica}", argv)
        child.role = name
        child.env["COSMOS_LOG_LEVEL"] = self.config.log_level
        return child

    def _metrics_args(self, name: str, replica: int = 1) -> list[str]:
        """``--metrics-listen`` for component ``name`` when its metrics port is set (replicas after the
        first on free ports); its URL is listed among the endpoints once it runs."""
        c = self.config
        port = c.metrics_port(name)
        if not port:
            return []
        if replica > 1:
            port = config.free_port(c.host)
        child_name = name if replica == 1 else f"{name}-{replica}"
        self._metrics_urls[child_name] = f"http://{c.address(port)}/metrics"
        return ["--metrics-listen", str(c.address(port))]

    def metrics_url(self, name: str) -> str | None:
        """Where component ``name`` (``plato``, ``plato-2``, ``agent``...) serves its metrics."""
        return self._metrics_urls.get(name)

    def _metrics_endpoint(self, child: Child) -> None:
        url = self._metrics_urls.get(child.name)
        if url is not None:
            self.endpoints.append(Endpoint(child.name, url, child.pid, ("Prometheus metrics",)))

    async def start(self) -> None:
        """Start every component and wait until each is ready; on failure stop what started."""
        c = self.config
        if c.insecure:
            # Before anything starts: plaintext beyond loopback is refused with the reason.
            Security(insecure=True).check_listen(c.host, "the embedded stack")
        if not 1 <= c.service_replicas <= 5:
            raise errors.ConfigError(f"--service-replicas {c.service_replicas}: expected 1 to 5")
        self._check_ports()
        c.data_dir.mkdir(parents=True, exist_ok=True)
        # The local admin's tenant area, so that `cosmos encode` has somewhere to put files at once.
        storage.tenant_area(c.storage_dir, storage.DEFAULT_TENANT).mkdir(parents=True, exist_ok=True)
        roots = ("--storage-root", self._roots())
        if not c.insecure:
            self.credentials = credentials.prepare(c.data_dir, c.agent_id)
        try:
            if c.s3:
                await self._start_s3()
            await self._start_nats()
            if c.service_replicas > 1:
                c.replica_ports = {
                    name: tuple(config.free_port(c.host) for _ in range(c.service_replicas - 1))
                    for name in ("plato", "stratum", "optimus")
                }
            plato_args = [
                "--nats",
                c.nats_url,
                "--replicas",
                str(c.replicas),
                "--stratum",
                c.target("stratum"),
                # With credentials the key lives in the PKI dir; an insecure stack keeps one too,
                # so tasks outstanding across a restart still complete.
                *(
                    []
                    if self.credentials
                    else ["--task-key", str((c.data_dir / "plato-task.key").absolute())]
                ),
            ]
            stratum_args = [
                "--nats",
                c.nats_url,
                "--replicas",
                str(c.replicas),
                *roots,
                # The dev CA signs the certificates of agents that join with a join token.
                *(["--agent-ca-dir", str(self.credentials.directory)] if self.credentials else []),
            ]
            optimus_args = [
                "--plato",
                c.target("plato"),
                "--work-root",
                str((c.data_dir / "work").absolute()),
                *roots,
            ]
            services = [
                (self._service("plato", c.plato_port, *plato_args), c.plato_port, PLATO_SERVICES),
                (self._service("stratum", c.stratum_port, *stratum_args), c.stratum_port, STRATUM_SERVICES),
                (
                    self._service("optimus", c.optimus_port, *optimus_args, *self._webhook_args()),
                    c.optimus_port,
                    OPTIMUS_SERVICES,
                ),
            ]
            await self._start_all(services)
            # The other replicas once the first ones serve: the first Stratum leads, the others follow
            # (a follower is ready once it knows the leader: its overall health only).
            others = [
                (self._service(name, c.ports(name)[n], *args, replica=n + 1), c.ports(name)[n], names)
                for n in range(1, c.service_replicas)
                for name, args, names in (
                    ("plato", plato_args, PLATO_SERVICES),
                    ("stratum", stratum_args, ()),
                    ("optimus", optimus_args, OPTIMUS_SERVICES),
                )
            ]
            await self._start_all(others)
            if c.webhook_port:
                optimus = services[-1][0]
                scheme = "http" if c.insecure else "https"
                url = f"{scheme}://{c.address(c.webhook_port)}/v1/webhooks/s3"
                self.endpoints.append(Endpoint("optimus", url, optimus.pid, ("webhook (S3 events)",)))
            if c.runs_console:
                await self._start_console()
            await self._start_agent()
        except BaseException:
            await self.stop()
            raise

    def _roots(self) -> str:
        """The storage roots every service gets: the local dir, and the S3 bucket when it runs."""
        local = str(self.config.storage_dir)
        return f"{local},s3://{seaweed.BUCKET}" if self.config.s3 else local

    async def _start_s3(self) -> None:
        c = self.config
        if c.s3_port:
            config.ensure_port_free(c.address(c.s3_port), "s3", "--s3-port / COSMOS_S3_PORT")
        self.s3 = seaweed.prepare(c.data_dir, c.s3_port)
        child = self._child("s3", self.s3.argv())
        await child.start()
        self.children.append(child)
        try:
            await asyncio.to_thread(self.s3.wait_ready, c.start_timeout)
            await asyncio.to_thread(self.s3.create_bucket, c.start_timeout)
        except errors.ProcessStartError as exc:
            raise child.failure(exc.reason) from exc
        self.endpoints.append(
            Endpoint("s3", f"{self.s3.endpoint} (bucket {seaweed.BUCKET})", child.pid, ("S3",))
        )

    async def _start_nats(self) -> None:
        c = self.config
        if c.nats_cluster not in (1, 3, 5):
            # Raft needs a majority: an even count survives no more losses than one node fewer.
            raise errors.ConfigError(f"--nats-cluster {c.nats_cluster}: expected 1, 3 or 5 servers")
        tls = None if self.credentials is None else self.credentials.files("nats")
        users = natsd.default_users([credentials.WORKER_IDENTITY])
        if c.nats_cluster == 1:
            nodes: list[tuple[str, int, natsd.ClusterNode | None]] = [("nats", c.nats_port, None)]
        else:
            if not c.nats_extra_ports:
                c.nats_extra_ports = tuple(config.free_port(c.host) for _ in range(c.nats_cluster - 1))
            ports = (c.nats_port, *c.nats_extra_ports)
            routes = tuple(c.address(config.free_port(c.host)) for _ in ports)
            nodes = [
                ("nats" if i == 0 else f"nats-{i + 1}", port, natsd.ClusterNode(routes[i], routes))
                for i, port in enumerate(ports)
            ]
        started: list[Child] = []
        for name, port, cluster in nodes:
            # Each node its own store dir and server name (the first keeps the single node's "nats/",
            # so a stack that grows into a cluster keeps its data and migrates it to R3).
            argv = natsd.nats_server_argv(
                c.address(port), c.data_dir / name, name, tls=tls, users=users, cluster=cluster
            )
            child = self._child(name, argv)
            await child.start()
            self.children.append(child)
            started.append(child)
        # The readiness check connects as Plato: NATS has no user for the admin or for cosmos up.
        plato = None if self.credentials is None else self.credentials.files("plato")
        for child, url in zip(started, c.nats_urls, strict=True):
            try:
                nc, _ = await jetstream.connect(url, "cosmos-up", tls=plato, timeout=c.start_timeout)
            except errors.UnavailableError as exc:
                raise child.failure(str(exc)) from exc
            await nc.close()
            self.endpoints.append(Endpoint(child.name, url, child.pid, ("JetStream",)))

    async def _start_all(self, services: Sequence[tuple[Child, int, Sequence[str]]]) -> None:
        """Start ``(child, port, services)`` each, then wait until every one serves."""
        for child, _, _ in services:
            await child.start()
            self.children.append(child)
        await asyncio.gather(*(self._await_serving(child, port, names) for child, port, names in services))

    async def _await_serving(self, child: Child, port: int, names: Sequence[str]) -> None:
        target = str(self.config.address(port))

        def gave_up() -> str | None:
            code = child.exited()
            return None if code is None else f"exited with code {code}"

        try:
            await readiness.wait_serving(
                child.role or child.name,
                target,
                names,
                timeout=self.config.start_timeout,
                gave_up=gave_up,
                security=self.admin,
            )
        except errors.ProcessStartError as exc:
            raise child.failure(exc.reason) from exc
        self.endpoints.append(Endpoint(child.name, target, child.pid, names))
        self._metrics_endpoint(child)

    async def _start_console(self) -> None:
        """The web console, calling the first replica's token port of each service as the signed-in
        user; ready once its HTTPS health path answers (checked against the dev CA)."""
        c = self.config
        assert self.credentials is not None
        argv = [
            sys.executable,
            "-m",
            "cosmos.cli",
            "console",
            "--listen",
            str(c.address(c.console_port)),
            *self._security_args("console"),
            "--storage-root",
            self._roots(),  # the player streams what an encode published, locally or from S3
        ]
        for name in ("optimus", "plato", "stratum"):
            argv += [f"--{name}", str(c.address(c.token_port(c.ports(name)[0])))]
        child = self._child("console", argv)
        child.env["COSMOS_LOG_LEVEL"] = c.log_level
        await child.start()
        self.children.append(child)
        ca = self.credentials.files("console").ca
        try:
            await readiness.wait_https(f"{c.console_url}healthz", ca, c.start_timeout, gave_up=child.exited)
        except errors.ProcessStartError as exc:
            raise child.failure(exc.reason) from exc
        self.endpoints.append(Endpoint("console", c.console_url, child.pid, ("web console (HTTPS)",)))

    async def _start_agent(self) -> None:
        c = self.config
        stratum = c.target("stratum")
        agent_id = c.agent_id
        argv = [
            sys.executable,
            "-m",
            "cosmos.cli",
            "agent",
            "--stratum",
            stratum,
            "--agent-id",
            agent_id,
            "--work-dir",
            str(c.data_dir / "agents" / agent_id),
            "--storage-root",
            self._roots(),
            *self._security_args("agent"),
            # Each tenant's jobs (their own uid when the agent is root) own <dir>/<tenant> here:
            # Optimus's scratch, and the tenant's files (sources, outputs) under storage/.
            "--job-tenant-roots",
            f"{(c.data_dir / 'work').absolute()},{c.storage_dir.absolute()}",
        ]
        if c.agent_gpus:
            argv += ["--gpus", c.agent_gpus]
        argv += self._metrics_args("agent")
        child = self._child("agent", argv)
        child.env["COSMOS_LOG_LEVEL"] = c.log_level
        await child.start()
        self.children.append(child)
        await self._await_agent_ready(child, stratum, agent_id)
        self.endpoints.append(Endpoint("agent", f"{agent_id} -> {stratum}", child.pid))
        self._metrics_endpoint(child)

    async def _await_agent_ready(self, child: Child, stratum: str, agent_id: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.start_timeout
        async with channels.connect(stratum, "stratum", self.admin) as channel:
            pool = pool_service_pb2_grpc.PoolServiceStub(channel)
            while loop.time() < deadline:
                if child.exited() is not None:
                    raise child.failure(f"exited with code {child.exited()}")
                try:
                    reply = await pool.GetAgent(
                        pool_service_pb2.GetAgentRequest(agent_id=agent_id), timeout=2
                    )
                    if reply.agent.state == agent_pb2.AGENT_STATE_READY:
                        return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                await asyncio.sleep(0.1)
        raise child.failure(f"not registered READY with Stratum after {self.config.start_timeout:.0f}s")

    async def stop(self) -> dict[str, int | None]:
        """Stop every started component in reverse order; return each one's exit code."""
        codes: dict[str, int | None] = {}
        while self.children:
            child = self.children.pop()
            # weed's filer waits a fixed 15 s for its own metadata streams before it stops (then
            # exits 0, data flushed); only after that is it killed.
            codes[child.name] = await child.stop(25.0 if child.name == "s3" else 15.0)
        self.endpoints.clear()
        return codes

    def renew_credentials(self) -> None:
        """Re-issue the stack's certificates that are near their end (running processes reload them)."""
        if self.credentials is not None:
            credentials.prepare(self.config.data_dir, self.config.agent_id)

    def context(self) -> Context:
        """The client context of this stack: its endpoints and the local admin's credentials."""
        c = self.config
        endpoints = {
            "optimus": c.target("optimus"),
            "plato": c.target("plato"),
            "stratum": c.target("stratum"),
            "nats": c.nats_url,
        }
        root = str(c.storage_dir)
        s3_endpoint = "" if self.s3 is None else self.s3.endpoint
        s3_identity = "" if self.s3 is None else str(self.s3.s3_dir / seaweed.IDENTITY_FILE)
        if self.credentials is None:
            return Context(
                name="local",
                endpoints=endpoints,
                insecure=True,
                storage_root=root,
                s3_endpoint=s3_endpoint,
                s3_identity=s3_identity,
            )
        files = self.credentials.files(credentials.ADMIN)
        return Context(
            name="local",
            endpoints=endpoints,
            ca=str(files.ca),
            cert=str(files.cert),
            key=str(files.key),
            storage_root=root,
            s3_endpoint=s3_endpoint,
            s3_identity=s3_identity,
        )

    def first_exited(self) -> Child | None:
        """A component that ended on its own while the stack was up, if any."""
        return next((child for child in self.children if child.exited() is not None), None)

    def restarted(self, child: Child) -> None:
        """``child`` was started again (:mod:`cosmos.stack.supervisor`): its endpoint shows the new pid."""
        self.endpoints = [
            dataclasses.replace(ep, pid=child.pid) if ep.name == child.name else ep for ep in self.endpoints
        ]
