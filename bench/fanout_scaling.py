"""Plato's cost per step as a fan-out grows: bytes written to NATS and Plato CPU, K = 10 … 10,000.

One workflow shape (a step, a fan-out of K no-op steps with ``maxConcurrency``, a final step) runs on
a fresh NATS + Plato (:class:`plato_vs_temporal.PlatoEngine`, secure as in production) for each K.
For each K it reports, per step: bytes clients sent to NATS (the server's ``/varz`` ``in_bytes``
delta: Plato's header, step and blob writes, events, tasks, plus the worker's results), Plato's CPU
milliseconds, and steps/s. Flat columns are the goal: a transition writes what it changed.

Run it against another checkout's code (e.g. main, to compare) by putting that checkout's source
directories first on ``PYTHONPATH`` (the Plato subprocess inherits it)::

    .venv/bin/python bench/fanout_scaling.py                       # K = 10, 100, 1000, 10000
    .venv/bin/python bench/fanout_scaling.py --ks 100 --json       # one K, JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plato_vs_temporal as pvt

from cosmos.plato.v1 import workflow_service_pb2
from cosmos.runtime.config import free_port

DEFINITION = """\
workflow:
  id: bench-fanout
  limits: {maxSteps: 100000, maxRuleFirings: 100000}
  rules:
    - when: workflow.started
      do: [first]
    - when: first.completed
      do:
        - fanout: {for: each i in input.items, run: noop, maxConcurrency: 500}
    - when: all noop.completed
      do: [last]
  steps:
    noop:
      input: {i: "${i}"}
"""
"""As ``plato_vs_temporal``'s, with each instance's input its item alone (a step without ``input:``
gets the whole workflow input, which would make the tasks themselves grow with K)."""


def workflows_for(k: int) -> int:
    """Workflows per K: about 2,000 steps' worth, at least one."""
    return max(1, 2000 // k)


def in_bytes(monitor_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=5) as reply:
        return int(json.load(reply)["in_bytes"])


async def measure(k: int, workdir: Path) -> dict[str, Any]:
    monitor = free_port(pvt.HOST)
    original = pvt.nats_server_argv

    def with_monitor(*args: Any, **kwargs: Any) -> list[str]:
        return [*original(*args, **kwargs), "-m", str(monitor)]

    pvt.nats_server_argv = with_monitor  # type: ignore[assignment]
    config = pvt.CONFIGS["plato-file"]
    try:
        async with pvt.PlatoEngine.running(config, workdir) as engine:
            assert engine._stub is not None
            await engine._stub.RegisterDefinition(
                workflow_service_pb2.RegisterDefinitionRequest(
                    request_id=uuid.uuid4().hex, source_yaml=DEFINITION
                )
            )
            # Warm up (connections, caches, definition) on a small workflow, then measure.
            await asyncio.wait_for(engine.run_workflow(list(range(10))), 120)
            n = workflows_for(k)
            before = in_bytes(monitor)
            run, _ = await pvt.run_load(engine, config.name, k, n, min(n, 8), (1800.0, 3600.0))
            written = in_bytes(monitor) - before
    finally:
        pvt.nats_server_argv = original  # type: ignore[assignment]
    steps = run.completed * run.steps_per_workflow
    return {
        "k": k,
        "workflows": n,
        "completed": run.completed,
        "errors": run.errors,
        "steps_per_s": round(run.steps_per_s, 1),
        "bytes_per_step": round(written / steps) if steps else None,
        "plato_cpu_ms_per_step": run.cpu_ms_per_step.get("plato"),
        "nats_cpu_ms_per_step": run.cpu_ms_per_step.get("nats-server"),
    }


def render(rows: Sequence[dict[str, Any]]) -> str:
    headers = [
        "K",
        "workflows",
        "steps/s",
        "bytes to NATS / step",
        "Plato CPU ms / step",
        "NATS CPU ms / step",
    ]
    keys = [
        "k",
        "workflows",
        "steps_per_s",
        "bytes_per_step",
        "plato_cpu_ms_per_step",
        "nats_cpu_ms_per_step",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(row[key]) for key in keys) + " |" for row in rows]
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    rows = []
    for k in args.ks:
        with tempfile.TemporaryDirectory(prefix="cosmos-fanout-scaling-") as tmp:
            row = await measure(k, Path(tmp))
        rows.append(row)
        if not args.json:
            print(f"K={k}: {row}", file=sys.stderr, flush=True)
    print(json.dumps(rows) if args.json else render(rows))
    return 0 if all(row["errors"] == 0 and row["completed"] == row["workflows"] for row in rows) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000, 10000], help="fan-out sizes")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    return asyncio.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
