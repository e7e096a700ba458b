"""``cosmos up``: the whole platform as child processes of one command, on loopback ports.

Start order follows the dependencies: the S3 server (SeaweedFS, when ``s3`` is on:
:mod:`cosmos.stack.seaweed`) and NATS (JetStream) first, then Plato, Stratum and Optimus in
parallel (each waits for SERVING), then the local agent (ready once Stratum lists it READY). Stop order
is the reverse, each child getting SIGTERM and its grace period. While it runs, ``cosmos up`` restarts
a child that exits (:mod:`cosmos.stack.supervisor`).

The configuration and the endpoints are :mod:`cosmos.stack.stack_config`'s, what each component runs
is :mod:`cosmos.stack.components`'s, the readiness checks :mod:`cosmos.stack.readiness`'s; this module
starts and stops them in order, and re-exports the names the CLI and the tests know as its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from cosmos import errors
from cosmos.runtime import config, jetstream
from cosmos.security import storage
from cosmos.security.config import Security
from cosmos.security.context import Context
from cosmos.stack import credentials, readiness, seaweed
from cosmos.stack.children import Child
from cosmos.stack.components import (
    OPTIMUS_SERVICES,
    PLATO_SERVICES,
    STARTER_WEBHOOK_CONFIG,
    STRATUM_SERVICES,
    Components,
)
from cosmos.stack.credentials import StackCredentials
from cosmos.stack.stack_config import (
    DEFAULT_CONSOLE_PORT,
    DEFAULT_METRICS_PORTS,
    DEFAULT_WEBHOOK_PORT,
    Endpoint,
    StackConfig,
)

__all__ = [
    "DEFAULT_CONSOLE_PORT",
    "DEFAULT_METRICS_PORTS",
    "DEFAULT_WEBHOOK_PORT",
    "OPTIMUS_SERVICES",
    "PLATO_SERVICES",
    "STARTER_WEBHOOK_CONFIG",
    "STRATUM_SERVICES",
    "EmbeddedStack",
    "Endpoint",
    "StackConfig",
]

log = logging.getLogger(__name__)


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

    @property
    def _components(self) -> Components:
        """What each component runs, as the stack stands now (credentials made, S3 server prepared)."""
        return Components(self.config, self.credentials, self.s3, self._metrics_urls)

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
        c.check_ports()
        c.data_dir.mkdir(parents=True, exist_ok=True)
        # The local admin's tenant area, so that `cosmos encode` has somewhere to put files at once.
        storage.tenant_area(c.storage_dir, storage.DEFAULT_TENANT).mkdir(parents=True, exist_ok=True)
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
            components = self._components
            plato_args = components.plato_args()
            stratum_args = components.stratum_args()
            optimus_args = components.optimus_args()
            services = [
                (components.service("plato", c.plato_port, *plato_args), c.plato_port, PLATO_SERVICES),
                (
                    components.service("stratum", c.stratum_port, *stratum_args),
                    c.stratum_port,
                    STRATUM_SERVICES,
                ),
                (
                    components.service("optimus", c.optimus_port, *optimus_args, *components.webhook_args()),
                    c.optimus_port,
                    OPTIMUS_SERVICES,
                ),
            ]
            await self._start_all(services)
            # The other replicas once the first ones serve: the first Stratum leads, the others follow
            # (a follower is ready once it knows the leader: its overall health only).
            others = [
                (components.service(name, c.ports(name)[n], *args, replica=n + 1), c.ports(name)[n], names)
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

    async def _start_s3(self) -> None:
        c = self.config
        if c.s3_port:
            config.ensure_port_free(c.address(c.s3_port), "s3", "--s3-port / COSMOS_S3_PORT")
        self.s3 = seaweed.prepare(c.data_dir, c.s3_port)
        child = self._components.s3_server()
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
        started = self._components.nats_nodes()
        for child in started:
            await child.start()
            self.children.append(child)
        # The readiness check connects as Plato: NATS has no user for the admin or for cosmos up.
        plato = None if self.credentials is None else self.credentials.files("plato")
        for child, url in zip(started, c.nats_urls, strict=True):
            try:
                nc, _ = await jetstream.connect(url, "cosmos-up", tls=plato, timeout=c.start_timeout)
            except errors.UnavailableError as exc:
                raise child.failure(str(exc)) from exc
            await jetstream.close(nc)
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
        """The web console; ready once its HTTPS health path answers (checked against the dev CA)."""
        c = self.config
        assert self.credentials is not None
        child = self._components.console()
        await child.start()
        self.children.append(child)
        ca = self.credentials.files("console").ca
        try:
            await readiness.wait_https(f"{c.console_url}healthz", ca, c.start_timeout, gave_up=child.exited)
        except errors.ProcessStartError as exc:
            raise child.failure(exc.reason) from exc
        self.endpoints.append(Endpoint("console", c.console_url, child.pid, ("web console (HTTPS)",)))

    async def _start_agent(self) -> None:
        """The local agent; ready once Stratum lists it READY."""
        c = self.config
        stratum, agent_id = c.target("stratum"), c.agent_id
        child = self._components.agent()
        await child.start()
        self.children.append(child)
        try:
            await readiness.wait_agent_ready(
                stratum, agent_id, timeout=c.start_timeout, security=self.admin, gave_up=child.exited
            )
        except errors.ProcessStartError as exc:
            raise child.failure(exc.reason) from exc
        self.endpoints.append(Endpoint("agent", f"{agent_id} -> {stratum}", child.pid))
        self._metrics_endpoint(child)

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
