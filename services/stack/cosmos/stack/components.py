"""The embedded stack's components as child processes: what each one runs (its command line, its
environment, its log file) and the gRPC services it reports SERVING once ready.

Starting them in order and waiting for each is :class:`cosmos.stack.embedded.EmbeddedStack`'s; this
module only says what to start.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from cosmos.runtime import config
from cosmos.stack import credentials, natsd, seaweed
from cosmos.stack.children import Child
from cosmos.stack.credentials import StackCredentials
from cosmos.stack.stack_config import StackConfig

OPTIMUS_SERVICES = ("cosmos.optimus.v1.EncodeService",)
PLATO_SERVICES = ("cosmos.plato.v1.WorkflowService", "cosmos.plato.v1.StepService")
STRATUM_SERVICES = (
    "cosmos.stratum.v1.JobService",
    "cosmos.stratum.v1.AgentService",
    "cosmos.stratum.v1.PoolService",
)

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
class Components:
    """The :class:`Child` of each component of a stack with this configuration, credentials and S3
    server (the stack makes one whenever it needs a child, so each sees what has started by then)."""

    config: StackConfig
    """Ports and directories."""
    credentials: StackCredentials | None = None
    """The dev CA and certificates (None with ``insecure``)."""
    s3: seaweed.S3Server | None = None
    """The embedded S3 server, once prepared."""
    metrics_urls: dict[str, str] = field(default_factory=dict)
    """Where each child serves its metrics (by child name), recorded as its command line is made."""

    def child(self, name: str, argv: Sequence[str]) -> Child:
        """Child ``name`` running ``argv``, its output in ``<data-dir>/logs/<name>.log``."""
        child = Child(name, list(argv), self.config.data_dir / "logs" / f"{name}.log")
        if self.s3 is not None and name != "s3":
            # The standard AWS variables: every S3 client in the services reads them (cosmos.runtime.s3).
            child.env.update(self.s3.env())
        return child

    def security_args(self, name: str) -> list[str]:
        """The flags giving component ``name`` its certificate (or ``--insecure``)."""
        if self.credentials is None:
            return ["--insecure"]
        return ["--pki-dir", str(self.credentials.directory), "--pki-name", name]

    def roots(self) -> str:
        """The storage roots every service gets: the local dir, and the S3 bucket when it runs."""
        local = str(self.config.storage_dir)
        return f"{local},s3://{seaweed.BUCKET}" if self.config.s3 else local

    def metrics_args(self, name: str, replica: int = 1) -> list[str]:
        """``--metrics-listen`` for component ``name`` when its metrics port is set (replicas after the
        first on free ports); its URL goes into :attr:`metrics_urls`."""
        c = self.config
        port = c.metrics_port(name)
        if not port:
            return []
        if replica > 1:
            port = config.free_port(c.host)
        child_name = name if replica == 1 else f"{name}-{replica}"
        self.metrics_urls[child_name] = f"http://{c.address(port)}/metrics"
        return ["--metrics-listen", str(c.address(port))]

    def webhook_args(self) -> list[str]:
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

    def service(self, name: str, port: int, *extra: str, replica: int = 1) -> Child:
        """The child running service ``name`` on ``port``; replicas after the first are named
        ``<name>-<n>`` and take no platform tokens."""
        argv = [sys.executable, "-m", "cosmos.cli", name, "--listen", str(self.config.address(port)), *extra]
        argv += self.security_args(name)
        token_port = self.config.token_port(port)
        if self.credentials is not None and token_port and replica == 1:
            argv += ["--token-listen", str(self.config.address(token_port))]
        argv += self.metrics_args(name, replica)
        argv += ["--log-level", self.config.log_level]
        child = self.child(name if replica == 1 else f"{name}-{replica}", argv)
        child.role = name
        return child

    def plato_args(self) -> list[str]:
        """Plato's own flags (every replica's): NATS, the replicas of its streams, Stratum."""
        c = self.config
        return [
            "--nats",
            c.nats_url,
            "--replicas",
            str(c.replicas),
            "--stratum",
            c.target("stratum"),
            # With credentials the key lives in the PKI dir; an insecure stack keeps one too,
            # so tasks outstanding across a restart still complete.
            *([] if self.credentials else ["--task-key", str((c.data_dir / "plato-task.key").absolute())]),
        ]

    def stratum_args(self) -> list[str]:
        """Stratum's own flags (every replica's): NATS, the replicas of its streams, the storage roots."""
        c = self.config
        return [
            "--nats",
            c.nats_url,
            "--replicas",
            str(c.replicas),
            "--storage-root",
            self.roots(),
            # The dev CA signs the certificates of agents that join with a join token.
            *(["--agent-ca-dir", str(self.credentials.directory)] if self.credentials else []),
        ]

    def optimus_args(self) -> list[str]:
        """Optimus's own flags (every replica's; the first one's webhook is :meth:`webhook_args`)."""
        c = self.config
        return [
            "--plato",
            c.target("plato"),
            "--work-root",
            str((c.data_dir / "work").absolute()),
            "--storage-root",
            self.roots(),
        ]

    def s3_server(self) -> Child:
        """The embedded S3 server (SeaweedFS), once :attr:`s3` is prepared."""
        assert self.s3 is not None
        return self.child("s3", self.s3.argv())

    def nats_nodes(self) -> list[Child]:
        """The NATS server, or each node of the cluster (their client and route ports picked free
        the first time, the first node's client port being ``nats_port``)."""
        c = self.config
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
        children = []
        for name, port, cluster in nodes:
            # Each node its own store dir and server name (the first keeps the single node's "nats/",
            # so a stack that grows into a cluster keeps its data and migrates it to R3).
            argv = natsd.nats_server_argv(
                c.address(port), c.data_dir / name, name, tls=tls, users=users, cluster=cluster
            )
            children.append(self.child(name, argv))
        return children

    def console(self) -> Child:
        """The web console, calling the first replica's token port of each service as the signed-in
        user."""
        c = self.config
        argv = [
            sys.executable,
            "-m",
            "cosmos.cli",
            "console",
            "--listen",
            str(c.address(c.console_port)),
            *self.security_args("console"),
            "--storage-root",
            self.roots(),  # the player streams what an encode published, locally or from S3
        ]
        for name in ("optimus", "plato", "stratum"):
            argv += [f"--{name}", str(c.address(c.token_port(c.ports(name)[0])))]
        argv += ["--log-level", c.log_level]
        return self.child("console", argv)

    def agent(self) -> Child:
        """The local agent (:attr:`StackConfig.agent_id`), joined to every Stratum replica."""
        c = self.config
        agent_id = c.agent_id
        argv = [
            sys.executable,
            "-m",
            "cosmos.cli",
            "agent",
            "--stratum",
            c.target("stratum"),
            "--agent-id",
            agent_id,
            "--work-dir",
            str(c.data_dir / "agents" / agent_id),
            "--storage-root",
            self.roots(),
            *self.security_args("agent"),
            # Each tenant's jobs (their own uid when the agent is root) own <dir>/<tenant> here:
            # Optimus's scratch, and the tenant's files (sources, outputs) under storage/.
            "--job-tenant-roots",
            f"{(c.data_dir / 'work').absolute()},{c.storage_dir.absolute()}",
        ]
        if c.agent_gpus:
            argv += ["--gpus", c.agent_gpus]
        argv += [*self.metrics_args("agent"), "--log-level", c.log_level]
        return self.child("agent", argv)
