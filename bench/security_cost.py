"""What security costs: SubmitEncode throughput and Plato steps/s with security on and off, in one run.

The issue's goal: with mutual TLS everywhere (and every call authenticated and authorized), each figure
loses at most 15 % against the same thing run with ``--insecure``. The machine drifts by 10-20 % over
minutes, so the two are measured side by side, round after round, alternating which goes first (on,
off in odd rounds; off, on in even ones), and the median of the per-round on/off ratios is the
figure. Each measurement starts fresh servers:

- **SubmitEncode**: :func:`submit_throughput.cosmos_run`, a fresh embedded stack (NATS, Plato,
  Stratum, Optimus; the local agent stopped so that no encode runs) with its own CA and mutual TLS on
  every hop, the harness calling Optimus as the local admin; vs ``StackConfig(insecure=True)``.
  ``--submits`` submits at ``--concurrency`` clients (default 32) after a warm-up; only the submit
  RPC is timed.
- **Plato steps/s**: :class:`plato_vs_temporal.PlatoEngine` (NATS + Plato with JetStream file
  storage, SDK worker and event watcher in this process), the fan-out workflow at K=10 and K=100
  (K + 2 steps each), C workflows in flight; Plato with a certificate of a fresh CA and the harness
  calling it over mutual TLS, vs Plato ``--insecure``. No Temporal.

Reported per round: each figure on and off and on/off; then the median on/off ratio per measure
against the goal (>= 0.85), and the server CPU per submit or per step on and off (less sensitive to
the neighbours than the rates).

Run::

    .venv/bin/python bench/security_cost.py             # 5 rounds: about 10 minutes on 2 cores
    .venv/bin/python bench/security_cost.py --quick     # 3 rounds, short runs: a couple of minutes
    .venv/bin/python bench/security_cost.py --json      # one JSON object with every figure
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plato_vs_temporal as plato_bench  # bench/, next to this script
import report
import submit_throughput

GOAL_RATIO = 0.85
"""Security on / off, at least, for submits/s and steps/s (a loss of at most 15 %)."""
MODES = ("on", "off")
PLATO_CONFIG = plato_bench.CONFIGS["plato-file"]


@dataclass
class Figure:
    """One measure (submits/s, or steps/s at one K) in one round, with security on and off."""

    measure: str
    round: int
    rate: dict[str, float] = field(default_factory=dict)
    """submits/s or steps/s per mode."""
    server_cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU of the servers (every Cosmos process and NATS) per submit or per step, per mode."""
    client_cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU of this process (client, SDK worker, watcher) per submit or per step, per mode."""
    cpu_ms_by_process: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per mode, the CPU per submit or per step of each process (where the cost lands)."""
    p99_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """Security on / off (1.0: no cost; below: slower with security)."""
        on, off = self.rate.get("on"), self.rate.get("off")
        return round(on / off, 3) if on and off else None


# --------------------------------------------------------------------------- the two measures


async def submit_round(
    args: argparse.Namespace, source: Path, work: Path, mode: str, i: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """One SubmitEncode run on a fresh embedded stack, security ``mode``; the loaded run's summary."""
    st_args = submit_throughput.parse(
        [
            *("-n", str(args.submits), "-c", str(args.concurrency), "--warmup", str(args.warmup)),
            *("--unloaded", "0", "--log-level", args.log_level, "--drain-timeout", "120"),
        ]
    )
    runs = await submit_throughput.cosmos_run(
        st_args, source, work, say, insecure=mode == "off", tag=f"stack-{mode}-{i}"
    )
    return runs["loaded"].summary()


async def plato_round(
    args: argparse.Namespace, work: Path, mode: str, say: Callable[[str], None]
) -> list[Any]:
    """The fan-out workflow at each K on one freshly started Plato, security ``mode``; one LoadRun per K."""
    timeouts = (args.workflow_timeout, args.run_timeout)
    runs = []
    directory = Path(tempfile.mkdtemp(prefix=f"plato-{mode}-", dir=work))
    try:
        async with plato_bench.PlatoEngine.running(PLATO_CONFIG, directory, secure=mode == "on") as engine:
            for k in args.ks:
                n = args.workflows or (3 if args.quick else 1) * plato_bench.default_workflows(k, args.quick)
                warm, _ = await plato_bench.run_load(
                    engine, PLATO_CONFIG.name, k, max(1, min(args.plato_concurrency, n // 2)),
                    args.plato_concurrency, timeouts,
                )  # fmt: skip
                if warm.errors or warm.timed_out:
                    raise plato_bench.BenchError(f"K={k} warm-up: {warm.first_error or 'timed out'}")
                run, _ = await plato_bench.run_load(
                    engine, PLATO_CONFIG.name, k, n, args.plato_concurrency, timeouts
                )
                say(
                    f"  plato, security {mode}, K={k}: {run.steps_per_s:,.0f} steps/s, "
                    f"p99 {run.p99_ms:.0f} ms, server CPU {run.server_cpu_ms_per_step:.2f} ms/step"
                    + (f", {run.errors} errors ({run.first_error})" if run.errors else "")
                )
                runs.append(run)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return runs


async def bench(args: argparse.Namespace, say: Callable[[str], None]) -> list[Figure]:
    work = Path(tempfile.mkdtemp(prefix="cosmos-security-cost-"))
    figures: list[Figure] = []
    try:
        source = work / "source.mp4"
        say("making a 2 s 320x240 source clip ...")
        clip = [sys.executable, "-m", "cosmos.optimus.media", "make-test-clip", "--out", str(source)]
        clip += ["--seconds", "2", "--size", "320x240", "--fps", "24"]
        await asyncio.to_thread(subprocess.run, clip, check=True, capture_output=True)
        for i in range(1, args.rounds + 1):
            order = MODES if i % 2 else tuple(reversed(MODES))
            say(f"round {i} of {args.rounds} (security {' then '.join(order)}) ...")
            submit = Figure("SubmitEncode submits/s", i)
            steps = {k: Figure(f"Plato steps/s, K={k}", i) for k in args.ks}
            for mode in order:
                if not args.skip_submit:
                    s = await submit_round(args, source, work, mode, i, say)
                    submit.rate[mode] = s["submits_per_s"]
                    submit.p99_ms[mode] = s["p99_ms"] or 0.0
                    submit.errors[mode] = sum(s["errors"].values())
                    cpu = s["cpu_ms_per_submit"]
                    submit.server_cpu_ms[mode] = round(sum(v for k, v in cpu.items() if k != "client"), 3)
                    submit.client_cpu_ms[mode] = cpu.get("client", 0.0)
                    submit.cpu_ms_by_process[mode] = cpu
                    say(
                        f"  submit, security {mode}: {s['submits_per_s']:,.0f} submits/s, "
                        f"p99 {s['p99_ms']} ms, server CPU {submit.server_cpu_ms[mode]:.2f} ms/submit"
                    )
                if not args.skip_plato:
                    for run in await plato_round(args, work, mode, say):
                        figure = steps[run.k]
                        figure.rate[mode] = round(run.steps_per_s, 1)
                        figure.p99_ms[mode] = round(run.p99_ms, 1)
                        figure.errors[mode] = run.errors + int(run.timed_out)
                        figure.server_cpu_ms[mode] = round(run.server_cpu_ms_per_step, 3)
                        figure.client_cpu_ms[mode] = round(run.bench_cpu_ms_per_step, 3)
                        figure.cpu_ms_by_process[mode] = run.cpu_ms_per_step
            if not args.skip_submit:
                figures.append(submit)
            if not args.skip_plato:
                figures += steps.values()
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    return figures


# --------------------------------------------------------------------------- report


def summarize(figures: Sequence[Figure]) -> dict[str, dict[str, Any]]:
    """Per measure: the median on/off ratio over the rounds (the goal), the median rates and CPU."""
    out: dict[str, dict[str, Any]] = {}
    for measure in dict.fromkeys(f.measure for f in figures):
        mine = [f for f in figures if f.measure == measure]
        ratios = [r for f in mine if (r := f.ratio) is not None]

        def median(values: list[float]) -> float | None:
            return round(statistics.median(values), 3) if values else None

        ratio = median(ratios)
        out[measure] = {
            "rounds": len(mine),
            "ratios": ratios,
            "median_ratio": ratio,
            "goal": f">= {GOAL_RATIO}",
            "met": ratio is not None and ratio >= GOAL_RATIO,
            **{
                f"median_{what}_{mode}": median(
                    [getattr(f, what)[mode] for f in mine if mode in getattr(f, what)]
                )
                for what in ("rate", "server_cpu_ms", "client_cpu_ms")
                for mode in MODES
            },
            "errors": sum(sum(f.errors.values()) for f in mine),
        }
    return out


def render(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        f"Security cost (mutual TLS + authentication on / --insecure): {s['rounds']} rounds, "
        f"{m['cpus']} CPUs, Python {m['python']}, {result['date']}",
        f"SubmitEncode: {s['submits']} submits at {s['concurrency']} clients per run (fresh embedded stack); "
        f"Plato: fan-out K={','.join(map(str, s['ks']))}, {s['plato_concurrency']} workflows in flight "
        "(fresh NATS + Plato, file storage)",
        "",
    ]
    rows = []
    for f in result["rounds"]:
        on, off = f["rate"].get("on"), f["rate"].get("off")
        cpu_on, cpu_off = f["server_cpu_ms"].get("on"), f["server_cpu_ms"].get("off")
        rows.append(
            [
                f["measure"],
                f["round"],
                _num(on),
                _num(off),
                f["ratio"],
                cpu_on,
                cpu_off,
                sum(f["errors"].values()),
            ]
        )
    headers = ["measure", "round", "on", "off", "on/off", "server CPU ms on", "off", "errors"]
    lines.append(report.table(headers, rows))
    lines.append("")
    rows = []
    for measure, g in result["summary"].items():
        rows.append(
            [measure, _num(g["median_rate_on"]), _num(g["median_rate_off"]), g["median_ratio"],
             g["median_server_cpu_ms_on"], g["median_server_cpu_ms_off"],
             f"{g['goal']}: {'met' if g['met'] else 'NOT met'}"]
        )  # fmt: skip
    headers = ["median", "on", "off", "on/off", "server CPU ms on", "off", "goal"]
    lines.append(report.table(headers, rows))
    return "\n".join(lines)


def _num(value: float | None) -> str | None:
    return None if value is None else f"{value:,.0f}"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="rounds of on + off (default 5, --quick 3)")
    p.add_argument("--quick", action="store_true", help="3 rounds of short runs: a couple of minutes")
    p.add_argument(
        "-n", "--submits", type=int, default=None, help="measured submits per run (2000, --quick 500)"
    )
    p.add_argument("-c", "--concurrency", type=int, default=32, help="SubmitEncode clients (32)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured submits first (200, --quick 50)")
    p.add_argument(
        "--log-level", default="info", help="log level of the stack's servers (info, as cosmos up)"
    )
    p.add_argument("--k", default="10,100", help="Plato fan-out widths (10,100)")
    p.add_argument(
        "--workflows",
        type=int,
        default=None,
        help="Plato workflows measured per K (default as plato_vs_temporal.py: 200 at K=10, 60 at K=100; "
        "--quick 48 and 12)",
    )
    p.add_argument(
        "--plato-concurrency", type=int, default=None, help="Plato workflows in flight (20, --quick 5)"
    )
    p.add_argument("--workflow-timeout", type=float, default=120.0, help="seconds one workflow may take")
    p.add_argument("--run-timeout", type=float, default=600.0, help="seconds one Plato run may take")
    p.add_argument("--skip-submit", action="store_true", help="measure Plato only")
    p.add_argument("--skip-plato", action="store_true", help="measure SubmitEncode only")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--json-file", type=Path, help="also write the JSON object to this file")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.submits = args.submits or (500 if args.quick else 2000)
    args.warmup = args.warmup if args.warmup is not None else (50 if args.quick else 200)
    args.plato_concurrency = args.plato_concurrency or (5 if args.quick else 20)
    args.ks = [int(k) for k in args.k.split(",") if k.strip()]
    if not args.ks or min(args.ks) < 1:
        p.error("--k: fan-out widths must be >= 1")
    return args


async def amain(args: argparse.Namespace) -> int:
    began = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {line}", file=sys.stderr, flush=True)

    figures = await bench(args, say)
    rounds = [
        {
            "measure": f.measure,
            "round": f.round,
            "rate": f.rate,
            "ratio": f.ratio,
            "p99_ms": f.p99_ms,
            "server_cpu_ms": f.server_cpu_ms,
            "client_cpu_ms": f.client_cpu_ms,
            "cpu_ms_by_process": f.cpu_ms_by_process,
            "errors": f.errors,
        }
        for f in figures
    ]
    summary = summarize(figures)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "rounds": args.rounds,
            "submits": args.submits,
            "concurrency": args.concurrency,
            "warmup": args.warmup,
            "ks": args.ks,
            "plato_concurrency": args.plato_concurrency,
            "plato_storage": PLATO_CONFIG.storage,
            "log_level": args.log_level,
        },
        "rounds": rounds,
        "summary": summary,
        "goal": {"ratio_min": GOAL_RATIO, "met": bool(summary) and all(g["met"] for g in summary.values())},
    }
    if args.json_file:
        args.json_file.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if all(g["errors"] == 0 for g in summary.values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(amain(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
