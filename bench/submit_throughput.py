"""``SubmitEncode`` throughput and latency through the real start path vs a bare grpc.aio echo server.

One client harness (this process: C concurrent lanes on one grpc.aio channel, each sending its next
``SubmitEncode`` as soon as the last one returned, N submits in all after an unmeasured warm-up)
drives, one after the other:

- **cosmos**: Optimus on a freshly started embedded stack (NATS, Plato, Stratum, Optimus): every
  submit is validated, then started on Plato (``StartWorkflows``, concurrent submits sharing a call:
  per start an inbox publish and a record create on JetStream; definitions come from Plato's cache).
  Each has its own ``request_id``, a small real source clip and ``profiles: ["360p"]``. The encodes
  are started for real; the local agent is stopped before the run (``--keep-agent`` keeps it), so
  their first jobs queue up on Stratum instead of running on the same 2 cores. Plato's evaluator
  works through the started workflows meanwhile, as it would in production. Only the submit RPC is
  timed. Security is on as ``cosmos up`` runs it: the stack makes its own CA, every hop is mutual TLS,
  and this harness calls as the stack's local admin (``channels.connect`` with ``stack.admin``);
  ``--insecure`` runs the stack with ``StackConfig(insecure=True)`` instead (plaintext on loopback).
  Sources and outputs lie under the stack's storage root for tenant ``default``
  (``<data-dir>/storage/default/``).
- **echo (own process)**: a bare ``grpc.aio`` server with the generated ``EncodeService`` whose
  ``SubmitEncode`` answers at once, in a separate process like Optimus.
- **echo (in-process)**: the same servicer in this process, sharing the client's event loop.

Reported: submits/s over the measured run, p50/p90/p99/max latency, errors, and the CPU each
process spent per submit; ratios cosmos / echo. The issue's goal: at least 1,000 submits/s with a
p99 of at most 50 ms.

Run::

    .venv/bin/python bench/submit_throughput.py            # 2,000 submits, 32 clients
    .venv/bin/python bench/submit_throughput.py --quick    # 300 submits, 16 clients
    .venv/bin/python bench/submit_throughput.py --json     # one JSON object with every figure
    .venv/bin/python bench/submit_throughput.py --insecure # the stack without security

bench/security_cost.py runs :func:`cosmos_run` with security on and off, round after round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import report  # bench/report.py, next to this script

from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.runtime import channels
from cosmos.runtime.config import free_port
from cosmos.security.config import Security
from cosmos.stack.embedded import EmbeddedStack, StackConfig

GOAL_RATE = 1000.0
GOAL_P99_MS = 50.0


# --------------------------------------------------------------------------- the echo server


class EchoEncode(encode_service_pb2_grpc.EncodeServiceServicer):
    """``SubmitEncode`` that answers at once with a pending encode."""

    async def SubmitEncode(
        self, request: encode_service_pb2.SubmitEncodeRequest, context: Any
    ) -> encode_service_pb2.SubmitEncodeResponse:
        return encode_service_pb2.SubmitEncodeResponse(
            encode=encode_pb2.Encode(
                encode_id="enc-" + request.request_id[-24:],
                state=encode_pb2.ENCODE_STATE_PENDING,
                source_uri=request.source_uri,
                output_uri=request.output_uri,
                profiles=request.profiles,
                request_id=request.request_id,
            )
        )


async def start_echo(port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    encode_service_pb2_grpc.add_EncodeServiceServicer_to_server(EchoEncode(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def serve_echo(port: int) -> None:
    """The echo server as its own process (``--serve-echo PORT``), until SIGTERM."""
    server = await start_echo(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)


# --------------------------------------------------------------------------- the client harness


@dataclass
class Run:
    """One measured run against one server."""

    target: str
    submits: int
    concurrency: int
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    errors: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    drain: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        ok = len(lat)

        def pct(p: float) -> float | None:
            return round(lat[min(ok - 1, int(p / 100 * ok))], 2) if ok else None

        return {
            "target": self.target,
            "submits": self.submits,
            "ok": ok,
            "errors": self.errors,
            "concurrency": self.concurrency,
            "wall_s": round(self.wall_s, 3),
            "submits_per_s": round(ok / self.wall_s, 1) if self.wall_s else 0.0,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(lat[-1], 2) if lat else None,
            "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
            "cpu_s": {k: round(v, 3) for k, v in self.cpu_s.items()},
            "cpu_ms_per_submit": {k: round(1000 * v / max(ok, 1), 3) for k, v in self.cpu_s.items()},
            **({"after_the_run": self.drain} if self.drain is not None else {}),
        }


def make_requests(
    n: int, tag: str, source: Path, out_root: Path
) -> list[encode_service_pb2.SubmitEncodeRequest]:
    return [
        encode_service_pb2.SubmitEncodeRequest(
            request_id=f"bench-{tag}-{i:06d}-{uuid.uuid4().hex[:8]}",
            source_uri=source.as_uri(),
            profiles=["360p"],
            output_uri=(out_root / f"{tag}-{i:06d}").as_uri(),
        )
        for i in range(n)
    ]


async def drive(
    stub: encode_service_pb2_grpc.EncodeServiceAsyncStub,
    requests: Sequence[encode_service_pb2.SubmitEncodeRequest],
    concurrency: int,
    run: Run | None,
) -> None:
    """Closed loop: ``concurrency`` lanes, each sending its next request when the last one returned."""
    counter = itertools.count()
    errors: Counter[str] = Counter()

    async def lane() -> None:
        while (i := next(counter)) < len(requests):
            t0 = time.perf_counter()
            try:
                await stub.SubmitEncode(requests[i], timeout=60)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            if run is not None:
                run.latencies_ms.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    if run is not None:
        run.wall_s = time.perf_counter() - t0
        run.errors = dict(errors)


def _cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(
    target: str,
    name: str,
    pids: dict[str, int],
    make: Callable[[int, str], list[encode_service_pb2.SubmitEncodeRequest]],
    args: argparse.Namespace,
    during: Callable[[], Awaitable[None]] | None = None,
    security: Security | None = None,
) -> dict[str, Run]:
    """Warm up; ``args.unloaded`` submits one at a time (the latency floor); then the measured
    closed-loop run at ``args.concurrency``. CPU of the client and of ``pids`` over each.

    ``security``: how to dial Optimus (``channels.connect``, as the CLI does); None: a bare plaintext
    grpc.aio channel (the echo servers)."""
    runs: dict[str, Run] = {}
    if security is None:
        opened = grpc.aio.insecure_channel(target)
    else:
        opened = channels.connect(target, "optimus", security)
    async with opened as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        await drive(stub, make(args.warmup, f"{name}-warm"), args.concurrency, None)
        plan = [("unloaded", args.unloaded, 1), ("loaded", args.submits, args.concurrency)]
        for key, n, concurrency in plan:
            if n <= 0:
                continue
            # Start each phase on a quiet server: what the last one started has been worked through.
            await settle(pids, 1, args.drain_timeout)
            requests = make(n, f"{name}-{key}")
            run = Run(
                target=name if key == "loaded" else f"{name}, 1 client", submits=n, concurrency=concurrency
            )
            before = {k: _cpu(p) for k, p in pids.items()} | {"client": _self_cpu()}
            profiling = asyncio.ensure_future(during()) if during is not None and key == "loaded" else None
            await drive(stub, requests, concurrency, run)
            after = {k: _cpu(p) for k, p in pids.items()} | {"client": _self_cpu()}
            if profiling is not None:
                await profiling
            run.cpu_s = {k: after[k] - before[k] for k in after}
            runs[key] = run
    return runs


# --------------------------------------------------------------------------- the three targets


async def cosmos_run(
    args: argparse.Namespace,
    source: Path,
    work: Path,
    say: Callable[[str], None],
    *,
    insecure: bool = False,
    tag: str = "stack",
) -> dict[str, Run]:
    """A freshly started embedded stack in ``work/<tag>``, security on (or ``insecure``), measured."""
    cfg = StackConfig(
        optimus_port=free_port(), plato_port=free_port(), stratum_port=free_port(), nats_port=free_port(),
        data_dir=work / tag, log_level=args.log_level, insecure=insecure,
    )  # fmt: skip
    # Optimus takes only files under its storage root, per tenant: <data-dir>/storage/<tenant>/.
    storage = cfg.data_dir / "storage" / "default"
    out_root = storage / "out"
    out_root.mkdir(parents=True)
    clip = storage / source.name
    shutil.copyfile(source, clip)
    async with (EmbeddedStack if args.keep_agent else StackWithoutAgent)(cfg) as stack:
        await asyncio.sleep(1.0)
        pids = {c.name: c.pid for c in stack.children if c.exited() is None}
        during = None
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            during = profiler(
                args.profile,
                {k: pids[k] for k in ("optimus", "plato")},
                args.profile_seconds,
                args.profile_native,
            )
        security = "off" if insecure else "on"
        say(f"cosmos (security {security}): {args.submits} submits, {args.concurrency} clients ...")
        run = await measure(
            str(cfg.address(cfg.optimus_port)),
            "cosmos",
            pids,
            lambda n, tag: make_requests(n, tag, clip, out_root),
            args,
            during,
            stack.admin,
        )
        say("waiting for the stack to finish starting the encodes ...")
        loaded = run["loaded"]
        loaded.drain = await settle({k: v for k, v in pids.items()}, loaded.submits, args.drain_timeout)
        say("stopping the stack ...")
    return run


class StackWithoutAgent(EmbeddedStack):
    """The embedded stack without its local agent: the encodes' first jobs queue up on Stratum instead
    of running on the same cores as the servers being measured.

    Starting the agent and stopping it would do the same, but an agent of an ``insecure`` stack is
    refused today (the ``--insecure`` caller lacks PERMISSION_AGENT_CONNECT), so the stack would never
    start; and this saves the agent's start-up on both sides of an on/off comparison.
    """

    async def _start_agent(self) -> None:
        return None


async def settle(pids: dict[str, int], submits: int, timeout: float) -> dict[str, Any]:
    """After the submits returned, the stack still works through the started workflows (Plato's
    evaluator schedules their first steps, which become Stratum jobs). Wait until the stack's
    processes are idle (under 10 % of a core for a second); report how long that took and the CPU it
    cost, and the CPU per submit over the run and this tail together."""
    t0 = time.perf_counter()
    before = {k: _cpu(p) for k, p in pids.items()}
    last = sum(before.values())
    quiet = 0
    while time.perf_counter() - t0 < timeout and quiet < 2:
        await asyncio.sleep(0.5)
        now = sum(_cpu(p) for p in pids.values())
        quiet = quiet + 1 if now - last < 0.05 else 0
        last = now
    after = {k: _cpu(p) for k, p in pids.items()}
    cpu = {k: after[k] - before[k] for k in after}
    # The two quiet half-seconds at the end are not part of the tail.
    return {
        "tail_s": round(max(0.0, time.perf_counter() - t0 - 1.0), 2),
        "settled": quiet >= 2,
        "tail_cpu_ms_per_submit": {k: round(1000 * v / max(submits, 1), 3) for k, v in cpu.items()},
    }


def profiler(out: Path, pids: dict[str, int], seconds: float, native: bool) -> Callable[[], Awaitable[None]]:
    """py-spy recordings (collapsed stacks) of ``pids`` while the measured run goes on."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))

    async def record() -> None:
        procs = []
        for name, pid in pids.items():
            argv = [exe, "record", "--pid", str(pid), "--duration", f"{seconds:g}", "--rate", "200"]
            argv += ["--format", "raw", "--output", str(out / f"{name}.txt")]
            argv += ["--native"] if native else ["--nonblocking"]  # --native needs to pause the process
            procs.append(
                await asyncio.create_subprocess_exec(
                    *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
                )
            )
        await asyncio.gather(*(p.wait() for p in procs))

    return record


async def echo_process_run(args: argparse.Namespace, source: Path, work: Path) -> dict[str, Run]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-echo", str(port),
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 30)
        return await measure(
            f"127.0.0.1:{port}",
            "echo (own process)",
            {"echo": proc.pid},
            lambda n, tag: make_requests(n, tag, source, work),
            args,
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def echo_inprocess_run(args: argparse.Namespace, source: Path, work: Path) -> dict[str, Run]:
    port = free_port()
    server = await start_echo(port)
    try:
        return await measure(
            f"127.0.0.1:{port}",
            "echo (in-process)",
            {},
            lambda n, tag: make_requests(n, tag, source, work),
            args,
        )
    finally:
        await server.stop(1)


# --------------------------------------------------------------------------- report


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    out = [
        f"SubmitEncode: {s['submits']:,} submits with {s['concurrency']} concurrent clients "
        f"(after {s['warmup']} warm-up and {s['unloaded']} one at a time); {result['machine']['cpus']} CPUs, "
        f"Python {result['machine']['python']}, {result['date']}; security {s['security']}",
        "",
    ]
    rows = []
    for r in result["runs"].values():
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_submit"].items())
        errors = sum(r["errors"].values())
        rows.append(
            [r["target"], r["submits"], r["concurrency"], f"{r['submits_per_s']:,.0f}", r["p50_ms"],
             r["p90_ms"], r["p99_ms"], r["max_ms"], errors, cpu]
        )  # fmt: skip
    headers = [
        "server",
        "n",
        "C",
        "submits/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
        "CPU ms/submit",
    ]
    out.append(report.table(headers, rows))
    tail = result["runs"]["cosmos"].get("after_the_run")
    if tail:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in tail["tail_cpu_ms_per_submit"].items())
        total = sum(tail["tail_cpu_ms_per_submit"].values()) + sum(
            v for k, v in result["runs"]["cosmos"]["cpu_ms_per_submit"].items() if k != "client"
        )
        out.append(
            f"after the last submit returned, the stack worked {tail['tail_s']:.1f} s more starting the "
            f"encodes (CPU ms/submit: {cpu}); stack CPU per encode, run + tail: {total:.2f} ms"
        )
    out.append("")
    out.append(report.table(["ratio", "value"], [[k, v] for k, v in result["ratios"].items()]))
    out.append("")
    g = result["goal"]
    rate_met = "met" if g["rate_met"] else "NOT met"
    p99_met = "met" if g["p99_met"] else "NOT met"
    out.append(
        f"goal: >= {GOAL_RATE:,.0f} submits/s: {g['submits_per_s']:,.0f} ({rate_met}); "
        f"p99 <= {GOAL_P99_MS:g} ms: {g['p99_ms']} ms ({p99_met})"
    )
    return "\n".join(out)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--submits", type=int, default=2000, help="measured submits per server (2000)")
    p.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent clients (32)")
    p.add_argument("--warmup", type=int, default=100, help="unmeasured submits first (100)")
    p.add_argument("--unloaded", type=int, default=200, help="submits one at a time before the run (200)")
    p.add_argument("--quick", action="store_true", help="300 submits, 16 clients, 30 warm-up")
    p.add_argument("--keep-agent", action="store_true", help="keep the local agent: the encodes' jobs run")
    p.add_argument(
        "--insecure", action="store_true", help="the stack without security (StackConfig(insecure=True))"
    )
    p.add_argument(
        "--drain-timeout", type=float, default=300.0, help="how long to wait for the stack to settle"
    )
    p.add_argument(
        "--log-level", default="info", help="log level of the stack's servers (info, as cosmos up)"
    )
    p.add_argument("--skip-echo", action="store_true", help="measure Cosmos only")
    p.add_argument("--profile", type=Path, help="py-spy recordings of optimus and plato into this directory")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--profile-seconds", type=float, default=5.0, help="how long to record (5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--json-file", type=Path, help="also write the JSON object to this file")
    p.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.submits, args.concurrency, args.warmup, args.unloaded = 300, 16, 30, 50
    return args


async def amain(args: argparse.Namespace) -> int:
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
    work = Path(tempfile.mkdtemp(prefix="cosmos-submit-bench-"))
    try:
        source = work / "source.mp4"
        say("making a 2 s 320x240 source clip ...")
        clip = [sys.executable, "-m", "cosmos.optimus.media", "make-test-clip", "--out", str(source)]
        clip += ["--seconds", "2", "--size", "320x240", "--fps", "24"]
        await asyncio.to_thread(subprocess.run, clip, check=True, capture_output=True)
        runs: dict[str, Run] = {}

        def keep(prefix: str, got: dict[str, Run]) -> None:
            for key, run in got.items():
                runs[prefix if key == "loaded" else f"{prefix}_{key}"] = run

        if not args.skip_echo:
            say("echo server (own process) ...")
            keep("echo_process", await echo_process_run(args, source, work))
            say("echo server (in-process) ...")
            keep("echo_inprocess", await echo_inprocess_run(args, source, work))
        say("embedded stack ...")
        keep("cosmos", await cosmos_run(args, source, work, say, insecure=args.insecure))
        summaries = {k: r.summary() for k, r in runs.items()}
        c = summaries["cosmos"]
        ratios: dict[str, float | None] = {}
        for key, label in (("echo_process", "own process"), ("echo_inprocess", "in-process")):
            e = summaries.get(key)
            if e is None:
                continue
            ratios[f"cosmos / echo ({label}) submits/s"] = round(c["submits_per_s"] / e["submits_per_s"], 3)
            for q in ("p50_ms", "p99_ms"):
                ratios[f"cosmos / echo ({label}) {q[:3]}"] = round(c[q] / e[q], 2) if c[q] and e[q] else None
            cu, eu = summaries.get("cosmos_unloaded"), summaries.get(f"{key}_unloaded")
            if cu and eu and cu["p50_ms"] and eu["p50_ms"]:
                ratios[f"cosmos / echo ({label}) p50, 1 client"] = round(cu["p50_ms"] / eu["p50_ms"], 2)
        result = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "settings": {
                "submits": args.submits,
                "concurrency": args.concurrency,
                "warmup": args.warmup,
                "unloaded": args.unloaded,
                "keep_agent": args.keep_agent,
                "log_level": args.log_level,
                "profiles": ["360p"],
                "security": "off (--insecure)" if args.insecure else "on (mutual TLS)",
            },
            "runs": summaries,
            "ratios": ratios,
            "goal": {
                "submits_per_s_min": GOAL_RATE,
                "p99_ms_max": GOAL_P99_MS,
                "submits_per_s": c["submits_per_s"],
                "p99_ms": c["p99_ms"],
                "rate_met": c["submits_per_s"] >= GOAL_RATE,
                "p99_met": c["p99_ms"] is not None and c["p99_ms"] <= GOAL_P99_MS,
            },
        }
        if args.json_file:
            args.json_file.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2) if args.json else render(result))
        return 0 if not any(r.errors for r in runs.values()) else 1
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.serve_echo:
        asyncio.run(serve_echo(args.serve_echo))
        return 0
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
