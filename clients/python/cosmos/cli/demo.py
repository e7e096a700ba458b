"""``cosmos demo``: the main job on the embedded stack.

Until the encoding ladder lands, the demo brings the stack up (same ports, data dir and settings as
``cosmos up``), checks every service's health and the agent's registration, prints them, and stops
the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc
from rich.console import Console
from rich.table import Table

from cosmos import errors
from cosmos.cli import up
from cosmos.cli.console import make_console
from cosmos.runtime import logs, process
from cosmos.stack import readiness
from cosmos.stack.embedded import EmbeddedStack, StackConfig
from cosmos.stratum.v1 import agent_pb2, pool_service_pb2, pool_service_pb2_grpc


async def run_demo(cfg: StackConfig, console: Console) -> int:
    """Start, inspect and stop the stack; non-zero if anything is not healthy."""
    with console.status("starting the embedded stack..."):
        stack = EmbeddedStack(cfg)
        await stack.start()
    try:
        console.print(up.endpoints_table(stack))
        healthy = await _health_table(stack, console)
        agents_ok = await _agents_table(cfg, console)
    finally:
        codes = await stack.stop()
    clean = all(code == 0 for code in codes.values())
    console.print("stopped: " + ", ".join(f"{name} (exit {code})" for name, code in codes.items()))
    ok = healthy and agents_ok and clean
    console.print("[green]demo ok[/green]" if ok else "[red]demo failed[/red]")
    return process.EXIT_OK if ok else process.EXIT_FAILED


async def _health_table(stack: EmbeddedStack, console: Console) -> bool:
    table = Table(title="grpc.health.v1.Health/Check", title_justify="left")
    for column in ("component", "service", "status"):
        table.add_column(column)
    ok = True
    for ep in stack.endpoints:
        if ep.name in ("nats", "agent"):
            continue
        for service in (*ep.services, ""):
            status = await readiness.health_status(ep.address, service)
            ok = ok and status == "SERVING"
            table.add_row(ep.name, service or '"" (overall)', status)
    console.print(table)
    return ok


async def _agents_table(cfg: StackConfig, console: Console) -> bool:
    async with grpc.aio.insecure_channel(str(cfg.address(cfg.stratum_port))) as channel:
        reply = await pool_service_pb2_grpc.PoolServiceStub(channel).ListAgents(
            pool_service_pb2.ListAgentsRequest(), timeout=5
        )
    table = Table(title="Stratum agents", title_justify="left")
    for column in ("agent", "state", "cpus", "memory", "gpus", "runtimes"):
        table.add_column(column)
    for agent in reply.agents:
        inv = agent.inventory
        table.add_row(
            agent.agent_id,
            agent_pb2.AgentState.Name(agent.state).removeprefix("AGENT_STATE_"),
            f"{inv.cpu_millis / 1000:g}",
            f"{inv.memory_bytes / (1 << 30):.1f} GiB",
            ", ".join(g.model for g in inv.gpus) or "-",
            ", ".join(inv.runtimes),
        )
    console.print(table)
    return any(a.state == agent_pb2.AGENT_STATE_READY for a in reply.agents)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos demo``."""
    p = argparse.ArgumentParser(prog="cosmos demo", description="Run the main job on the embedded stack.")
    try:
        up.add_stack_arguments(p)
        args = p.parse_args(argv)
        logs.configure_logging("demo", level="warning", fmt="text")
        return asyncio.run(run_demo(up.stack_config(args), make_console()))
    except errors.CosmosError as exc:
        print(f"cosmos demo: {exc}", file=sys.stderr)
        return process.EXIT_FAILED
