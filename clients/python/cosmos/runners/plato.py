"""``cosmos plato``: the Plato server and, given ``--stratum``, the built-in Stratum runner in the same
process (one process to deploy, as before the runner moved out of Plato)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from cosmos.plato import server
from cosmos.runners.stratum import StratumRunner
from cosmos.runtime import config, process
from cosmos.sdk import Worker
from cosmos.security.config import Security


def parser() -> argparse.ArgumentParser:
    """Plato's flags and the runner's ``--stratum``."""
    p = server.parser()
    config.add_env_argument(
        p,
        server.PREFIX,
        "--stratum",
        default="",
        help="Stratum gRPC address for job steps (empty: no job steps run here)",
    )
    return p


def stratum_runner(nats_url: str, target: str) -> server.Companion:
    """The runner of ``job:`` steps as a companion of the server: an SDK worker on the runner's queue
    that connects to NATS with the server's own certificate."""
    stratum = config.parse_target(target, setting="--stratum")

    async def run(security: Security, stopping: asyncio.Event) -> None:
        worker = Worker(nats_url, tls=security.tls)
        StratumRunner(stratum, security).register(worker)
        await worker.run(stopping, finish_running=False)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos plato``."""
    args = parser().parse_args(argv)
    companions = [stratum_runner(args.nats, args.stratum)] if args.stratum else []
    return process.run("plato", args, lambda: server.serve(args, companions))
