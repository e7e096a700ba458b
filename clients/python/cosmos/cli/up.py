"""``cosmos up``: the embedded stack in the foreground until Ctrl-C or SIGTERM, its children kept up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cosmos import errors
from cosmos.cli.console import make_console
from cosmos.runtime import config, logs, process
from cosmos.security import context
from cosmos.stack.children import Child
from cosmos.stack.embedded import (
    DEFAULT_CONSOLE_PORT,
    DEFAULT_METRICS_PORTS,
    DEFAULT_WEBHOOK_PORT,
    EmbeddedStack,
    StackConfig,
)
from cosmos.stack.supervisor import Restart, Supervisor

PREFIX = "COSMOS"
RENEW_CHECK_S = 600.0


def add_stack_arguments(p: argparse.ArgumentParser) -> None:
    """Ports, data dir and agent settings of the embedded stack (each also an environment variable)."""
    d = StackConfig()
    config.add_env_argument(p, PREFIX, "--host", default=d.host, help="interface every server binds to")
    config.add_env_argument(
        p, PREFIX, "--optimus-port", default=d.optimus_port, type=int, help="Optimus gRPC port"
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--webhook-port",
        default=DEFAULT_WEBHOOK_PORT,
        type=int,
        help="Optimus HTTPS webhook port (0: none)",
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--metrics-port",
        default=DEFAULT_METRICS_PORTS["optimus"],
        type=int,
        help="Prometheus metrics (plaintext HTTP, /metrics) of Optimus on this port, Plato, Stratum and "
        "the agent on the next three (0: none)",
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--console-port",
        default=DEFAULT_CONSOLE_PORT,
        type=int,
        help="web console HTTPS port (0: none; docs/console.md)",
    )
    config.add_env_argument(p, PREFIX, "--plato-port", default=d.plato_port, type=int, help="Plato gRPC port")
    config.add_env_argument(
        p, PREFIX, "--stratum-port", default=d.stratum_port, type=int, help="Stratum gRPC port"
    )
    config.add_env_argument(p, PREFIX, "--nats-port", default=d.nats_port, type=int, help="NATS client port")
    config.add_env_argument(
        p,
        PREFIX,
        "--nats-cluster",
        default=d.nats_cluster,
        type=int,
        help="NATS servers: 1, or 3 (a JetStream cluster, streams and buckets R3)",
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--service-replicas",
        default=d.service_replicas,
        type=int,
        help="processes of Plato, Stratum and Optimus each (2 or more share the load; one Stratum leads)",
    )
    config.add_env_argument(
        p, PREFIX, "--data-dir", default=str(d.data_dir), help="JetStream data, logs, work dirs"
    )
    config.add_env_argument(
        p, PREFIX, "--s3-port", default=d.s3_port, type=int, help="embedded S3 (SeaweedFS) gateway port"
    )
    p.add_argument(
        "--no-s3",
        dest="s3",
        action="store_false",
        default=not config.env_flag(PREFIX, "--no-s3"),
        help="do not run the embedded S3 server (SeaweedFS); only file storage roots",
    )
    config.add_env_argument(
        p, PREFIX, "--agent-gpus", default="", help="GPUs the local agent declares (2xA100)"
    )
    config.add_env_argument(p, PREFIX, "--log-level", default="info", help="log level of the services")
    config.add_env_argument(
        p,
        PREFIX,
        "--token-port-offset",
        default=d.token_port_offset,
        type=int,
        help="each service takes platform tokens on its port plus this (0: none)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=config.env_flag(PREFIX, "--insecure"),
        help="development only, loopback only: plaintext, no certificates, no authentication",
    )


def stack_config(args: argparse.Namespace) -> StackConfig:
    """The :class:`StackConfig` the flags describe."""
    return StackConfig(
        host=args.host,
        optimus_port=args.optimus_port,
        webhook_port=args.webhook_port,
        console_port=args.console_port,
        plato_port=args.plato_port,
        stratum_port=args.stratum_port,
        nats_port=args.nats_port,
        nats_cluster=args.nats_cluster,
        service_replicas=args.service_replicas,
        s3=args.s3,
        s3_port=args.s3_port,
        data_dir=Path(args.data_dir),
        agent_gpus=args.agent_gpus,
        log_level=args.log_level,
        insecure=args.insecure,
        token_port_offset=args.token_port_offset,
        optimus_metrics_port=metrics_port(args.metrics_port, "optimus"),
        plato_metrics_port=metrics_port(args.metrics_port, "plato"),
        stratum_metrics_port=metrics_port(args.metrics_port, "stratum"),
        agent_metrics_port=metrics_port(args.metrics_port, "agent"),
    )


def metrics_port(base: int, component: str) -> int:
    """``component``'s metrics port from ``--metrics-port`` ``base`` (Optimus's; 0: none): the others
    follow it in the order of :data:`DEFAULT_METRICS_PORTS`."""
    if not base:
        return 0
    return base + list(DEFAULT_METRICS_PORTS).index(component)


def endpoints_table(stack: EmbeddedStack) -> Table:
    """What runs where, for people."""
    table = Table(title="Cosmos is up", title_justify="left")
    for column in ("component", "endpoint", "pid", "serves"):
        table.add_column(column)
    for ep in stack.endpoints:
        table.add_row(ep.name, ep.address, str(ep.pid), "\n".join(ep.services))
    return table


async def run_up(cfg: StackConfig, console: Console) -> int:
    """Start the stack, show it, wait for a signal or a crashed component, stop it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    s3 = "S3, " if cfg.s3 else ""
    with console.status(f"starting {s3}NATS, Plato, Stratum, Optimus and the local agent..."):
        stack = EmbeddedStack(cfg)
        await stack.start()
    console.print(endpoints_table(stack))
    saved = context.save(stack.context())
    if stack.credentials is not None:
        pki_dir = stack.credentials.directory
        console.print(
            f"credentials: {pki_dir}/ca.pem, {pki_dir}/admin.pem, {pki_dir}/admin-key.pem "
            f"(context 'local' in {saved})"
        )
    if cfg.runs_console and stack.credentials is not None:
        pki_dir = stack.credentials.directory
        # soft_wrap: the command stays on one line to be copied, however narrow the terminal.
        console.print(
            f"console: {cfg.console_url} (HTTPS; its certificate is the dev CA's, {pki_dir}/ca.pem)"
        )
        console.print(
            "  sign in with a platform token: cosmos token create --tenant default --role admin "
            f"--key {pki_dir}/token-key.pem",
            soft_wrap=True,
        )
    console.print(f"logs: {cfg.data_dir / 'logs'}   data: {cfg.data_dir}   press Ctrl-C to stop")

    def exited(restart: Restart) -> None:
        child = restart.child
        console.print(
            f"[yellow]{child.name} exited with code {restart.code}; restarting it in {restart.delay:g}s "
            f"(restart {restart.restarts}, log {child.log_path})[/yellow]\n{child.log_tail(5)}"
        )

    def started(child: Child) -> None:
        stack.restarted(child)
        console.print(f"{child.name} restarted (pid {child.pid})")

    # Only Ctrl-C or SIGTERM stops the stack: a child that exits is restarted, with backoff.
    supervisor = Supervisor(stack.children, on_exit=exited, on_started=started)
    supervising = asyncio.create_task(supervisor.run(stop))
    renewed = loop.time()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        if loop.time() - renewed > RENEW_CHECK_S:
            # Certificates live 24 h: renew what is near its end; every process reloads the files.
            renewed = loop.time()
            await asyncio.to_thread(stack.renew_credentials)
    await supervising
    console.print("stopping...")
    codes = await stack.stop()
    console.print("stopped: " + ", ".join(f"{name} ({code})" for name, code in codes.items()))
    return process.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos up``."""
    p = argparse.ArgumentParser(prog="cosmos up", description="Run the whole platform locally.")
    try:
        add_stack_arguments(p)
        args = p.parse_args(argv)
        logs.configure_logging("up", level="warning", fmt="text")
        return asyncio.run(run_up(stack_config(args), make_console()))
    except errors.ConfigError as exc:
        print(f"cosmos up: {exc}", file=sys.stderr)
        return process.EXIT_CONFIG
    except errors.CosmosError as exc:
        print(f"cosmos up: {exc}", file=sys.stderr)
        return process.EXIT_FAILED
