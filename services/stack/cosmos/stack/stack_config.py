"""Where the embedded stack listens and keeps its data (:class:`StackConfig`), and what it reports
running (:class:`Endpoint`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cosmos.runtime import config
from cosmos.runtime.config import Address

DEFAULT_METRICS_PORTS = {"optimus": 9451, "plato": 9452, "stratum": 9453, "agent": 9454}
"""The metrics ports of ``cosmos up`` (``--metrics-port`` moves them; library users of
:class:`StackConfig` opt in): plaintext HTTP on the stack's loopback host, ``/metrics`` only."""
DEFAULT_CONSOLE_PORT = 50444
"""The web console's HTTPS port of ``cosmos up`` (library users of :class:`StackConfig` opt in)."""
DEFAULT_WEBHOOK_PORT = 50443
"""The webhook port of ``cosmos up`` (library users of :class:`StackConfig` opt in)."""


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

    def check_ports(self) -> None:
        """Refuse to start when a port the stack listens on is taken, naming the setting that moves it."""
        for owner, port, setting in (
            ("nats", self.nats_port, "--nats-port / COSMOS_NATS_PORT"),
            ("plato", self.plato_port, "--plato-port / COSMOS_PLATO_PORT"),
            ("stratum", self.stratum_port, "--stratum-port / COSMOS_STRATUM_PORT"),
            ("optimus", self.optimus_port, "--optimus-port / COSMOS_OPTIMUS_PORT"),
        ):
            config.ensure_port_free(self.address(port), owner, setting)
            if owner != "nats" and not self.insecure and self.token_port(port):
                config.ensure_port_free(self.address(self.token_port(port)), owner, "--token-port-offset")
        if self.webhook_port:
            config.ensure_port_free(self.address(self.webhook_port), "optimus webhook", "--webhook-port")
        for owner in ("optimus", "plato", "stratum", "agent"):
            if self.metrics_port(owner):
                config.ensure_port_free(
                    self.address(self.metrics_port(owner)), f"{owner} metrics", "--metrics-port"
                )
        if self.runs_console:
            config.ensure_port_free(self.address(self.console_port), "console", "--console-port")


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
