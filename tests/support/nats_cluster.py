"""A real 3-node JetStream cluster for tests: locked-down nodes (TLS, mapped users, authenticated
routes) on free loopback ports, which a test may kill -9 and start again on the same store."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import security_harness
from servers import stop_process

from cosmos.runtime.config import Address, free_port
from cosmos.security import pki
from cosmos.security.tls import TlsFiles
from cosmos.stack import natsd


class NatsNode:
    """One nats-server of the cluster; its config and store survive a kill."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.argv = argv
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it (again) and wait until it accepts connections."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nats node on {self.port} did not listen:\n{self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """kill -9: no goodbye to its peers, no flush."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (SIGKILL after a grace)."""
        if self.proc is not None:
            stop_process(self.proc)


class NatsCluster:
    """Three nodes named ``n1``..``n3``; :attr:`url` lists all of them, comma-separated."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        security_harness.worker_tls()
        users = natsd.default_users([pki.spiffe_id("user", security_harness.WORKER)])
        tls = TlsFiles.in_dir(security_harness.pki_dir(), "nats")
        ports = [free_port() for _ in range(size)]
        routes = tuple(Address("127.0.0.1", free_port()) for _ in range(size))
        self.route_addresses = routes
        """Every node's route listener."""
        self.nodes: list[NatsNode] = []
        for i, port in enumerate(ports):
            name = f"n{i + 1}"
            argv = natsd.nats_server_argv(
                Address("127.0.0.1", port),
                directory / name,
                name,
                tls=tls,
                users=users,
                cluster=natsd.ClusterNode(routes[i], routes),
            )
            self.nodes.append(NatsNode(argv, port, directory / f"{name}.log"))

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what ``--nats`` takes)."""
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> NatsNode:
        """The node whose server name is ``name``."""
        return self.nodes[int(name.removeprefix("n")) - 1]

    def start(self) -> None:
        """Start every node."""
        for n in self.nodes:
            n.start()

    def stop(self) -> None:
        """Stop every node."""
        for n in self.nodes:
            n.stop()
