"""Soak: the embedded stack under a steady mix of encodes and workflows for a while, watched for leaks.

One secure embedded stack (``cosmos up``'s: NATS, Plato, Stratum, Optimus and the local agent, mutual
TLS everywhere), with an SDK worker in this process (the stack's worker certificate). For
``--duration`` seconds:

- ``--encodes`` lanes each submit a short encode (a ``--clip-seconds`` test clip, profile 360p, its own
  request id and output) and wait for it to end, then submit the next;
- ``--workflows`` lanes each start a small fan-out workflow (first, ``--fanout`` no-op steps, last)
  and wait for it to end, then start the next.

Every ``--sample`` seconds the resident memory (RSS) of every process of the stack and of this one
is sampled. Reported: encodes and workflows finished per minute, failures and RPC errors by code,
and per process the RSS after the warm-up (the first sample after ``--warmup`` seconds), at the end,
the peak, and the growth between the two (what a leak looks like). Not a test: nothing is asserted;
the exit code is 1 only when something failed.

Run::

    .venv/bin/python bench/soak.py                    # 10 minutes
    .venv/bin/python bench/soak.py --duration 60      # a minute
    .venv/bin/python bench/soak.py --json-file soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import platform
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
import report

from cosmos.optimus.media.ffmpeg import Progress
from cosmos.optimus.media.testclip import make_test_clip
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime.config import free_port
from cosmos.sdk import StepContext, Worker
from cosmos.stack import credentials
from cosmos.stack.embedded import EmbeddedStack, StackConfig

DEFINITION = """\
workflow:
  id: soak-fanout
  rules:
    - when: workflow.started
      do: [soak-first]
    - when: soak-first.completed
      do:
        - fanout: {for: each i in input.items, run: soak-noop}
    - when: all soak-noop.completed
      do: [soak-last]
"""
ENCODE_DONE = {
    encode_pb2.ENCODE_STATE_SUCCEEDED,
    encode_pb2.ENCODE_STATE_FAILED,
    encode_pb2.ENCODE_STATE_CANCELLED,
}
WORKFLOW_DONE = {
    workflow_pb2.WORKFLOW_STATE_COMPLETED,
    workflow_pb2.WORKFLOW_STATE_FAILED,
    workflow_pb2.WORKFLOW_STATE_CANCELLED,
}
POLL = 0.5


@dataclass
class Tally:
    """What one kind of work did over the run."""

    ok: int = 0
    failed: int = 0
    rpc_errors: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)


@dataclass
class Memory:
    """RSS samples of the stack's processes and this one, in MiB."""

    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def sample(self, pids: dict[str, int], now: float) -> None:
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(pid).memory_info().rss / 2**20
                self.samples.setdefault(name, []).append((now, rss))

    def summary(self, warmup: float) -> dict[str, dict[str, float]]:
        out = {}
        for name, series in self.samples.items():
            settled = [rss for t, rss in series if t >= warmup] or [series[-1][1]]
            out[name] = {
                "after_warmup_mib": round(settled[0], 1),
                "end_mib": round(settled[-1], 1),
                "peak_mib": round(max(rss for _, rss in series), 1),
                "growth_mib": round(settled[-1] - settled[0], 1),
                "growth_pct": round(100 * (settled[-1] - settled[0]) / settled[0], 1) if settled[0] else 0.0,
            }
        return out


async def _lane(deadline: float, tally: Tally, once: Callable[[], Awaitable[bool]]) -> None:
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            ok = await once()
        except grpc.aio.AioRpcError as exc:
            tally.rpc_errors[exc.code().name] += 1
            await asyncio.sleep(1.0)
            continue
        tally.seconds.append(time.monotonic() - t0)
        if ok:
            tally.ok += 1
        else:
            tally.failed += 1


def encode_once(
    stub: encode_service_pb2_grpc.EncodeServiceStub, clip: Path, out_root: Path
) -> Callable[[], Awaitable[bool]]:
    async def once() -> bool:
        key = uuid.uuid4().hex[:12]
        reply = await stub.SubmitEncode(
            encode_service_pb2.SubmitEncodeRequest(
                request_id=f"soak-{key}", source_uri=clip.as_uri(), profiles=["360p"],
                output_uri=(out_root / key).as_uri(),
            ),
            timeout=30,
        )  # fmt: skip
        while True:
            got = await stub.GetEncode(
                encode_service_pb2.GetEncodeRequest(encode_id=reply.encode.encode_id), timeout=30
            )
            if got.encode.state in ENCODE_DONE:
                return bool(got.encode.state == encode_pb2.ENCODE_STATE_SUCCEEDED)
            await asyncio.sleep(POLL)

    return once


def workflow_once(
    stub: workflow_service_pb2_grpc.WorkflowServiceStub, fanout: int
) -> Callable[[], Awaitable[bool]]:
    async def once() -> bool:
        start = workflow_service_pb2.StartWorkflowRequest(
            request_id=uuid.uuid4().hex, definition_id="soak-fanout"
        )
        start.input.update({"items": list(range(fanout))})
        reply = await stub.StartWorkflow(start, timeout=30)
        while True:
            got = await stub.GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(workflow_id=reply.workflow.workflow_id), timeout=30
            )
            if got.workflow.state in WORKFLOW_DONE:
                return bool(got.workflow.state == workflow_pb2.WORKFLOW_STATE_COMPLETED)
            await asyncio.sleep(POLL)

    return once


def soak_worker(stack: EmbeddedStack) -> Worker:
    assert stack.credentials is not None
    worker = Worker(stack.config.nats_url, tls=stack.credentials.files(credentials.WORKER))

    @worker.handler("soak-first")
    async def first(step: StepContext) -> dict[str, Any]:
        return {"count": len(step.input["input"]["items"])}

    @worker.handler("soak-noop")
    async def noop(step: StepContext) -> dict[str, Any]:
        return {"item": step.input.get("i")}

    @worker.handler("soak-last")
    async def last(step: StepContext) -> dict[str, Any]:
        return {"done": True}

    return worker


async def soak(args: argparse.Namespace, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    cfg = StackConfig(
        optimus_port=free_port(), plato_port=free_port(), stratum_port=free_port(), nats_port=free_port(),
        data_dir=work / "stack", log_level="warning",
    )  # fmt: skip
    storage = cfg.storage_dir / credentials.ADMIN_TENANT
    storage.mkdir(parents=True, exist_ok=True)
    clip = storage / "soak-source.mp4"
    await asyncio.to_thread(make_test_clip, str(clip), args.clip_seconds, "640x360", 24.0, Progress())
    encodes, workflows, memory = Tally(), Tally(), Memory()
    stopping = asyncio.Event()
    async with EmbeddedStack(cfg) as stack:
        context = stack.context()
        plato = workflow_service_pb2_grpc.WorkflowServiceStub(context.channel("plato"))
        optimus = encode_service_pb2_grpc.EncodeServiceStub(context.channel("optimus"))
        await plato.RegisterDefinition(
            workflow_service_pb2.RegisterDefinitionRequest(
                request_id=uuid.uuid4().hex, source_yaml=DEFINITION
            )
        )
        worker_task = asyncio.create_task(soak_worker(stack).run(stopping))
        pids = {c.name: c.pid for c in stack.children if c.exited() is None} | {"bench": psutil.Process().pid}
        t0 = time.monotonic()
        deadline = t0 + args.duration
        say(
            f"soaking for {args.duration:.0f} s: {args.encodes} encode lanes, {args.workflows} workflow lanes"
        )

        async def sampler() -> None:
            while time.monotonic() < deadline:
                memory.sample(pids, time.monotonic() - t0)
                await asyncio.sleep(args.sample)

        out_root = storage / "soak-out"
        lanes = [_lane(deadline, encodes, encode_once(optimus, clip, out_root)) for _ in range(args.encodes)]
        lanes += [
            _lane(deadline, workflows, workflow_once(plato, args.fanout)) for _ in range(args.workflows)
        ]
        await asyncio.gather(sampler(), *lanes)
        memory.sample(pids, time.monotonic() - t0)
        elapsed = time.monotonic() - t0
        stopping.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(worker_task, 15)
        exited = {c.name: c.exited() for c in stack.children if c.exited() is not None}

    def rates(t: Tally) -> dict[str, Any]:
        return {
            "ok": t.ok, "failed": t.failed, "per_minute": round(60 * t.ok / elapsed, 1),
            "rpc_errors": dict(t.rpc_errors),
            "median_s": round(sorted(t.seconds)[len(t.seconds) // 2], 2) if t.seconds else None,
        }  # fmt: skip

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "json_file"},
        "seconds": round(elapsed, 1),
        "encodes": rates(encodes),
        "workflows": rates(workflows),
        "steps_per_s": round(workflows.ok * (args.fanout + 2) / elapsed, 1),
        "memory": memory.summary(args.warmup),
        "exited_early": exited,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Soak: {result['seconds']} s, {result['machine']['cpus']} CPUs, {result['date']}",
        "",
        report.table(
            ["work", "ok", "failed", "per minute", "median s", "rpc errors"],
            [
                [kind, r["ok"], r["failed"], r["per_minute"], r["median_s"], r["rpc_errors"] or "-"]
                for kind, r in (("encodes", result["encodes"]), ("workflows", result["workflows"]))
            ],
        ),
        f"steps/s (workflows): {result['steps_per_s']}",
        "",
        report.table(
            ["process", "RSS after warm-up MiB", "end MiB", "peak MiB", "growth MiB", "growth %"],
            [
                [name, m["after_warmup_mib"], m["end_mib"], m["peak_mib"], m["growth_mib"], m["growth_pct"]]
                for name, m in result["memory"].items()
            ],
        ),
    ]
    if result["exited_early"]:
        lines.append(f"exited during the run: {result['exited_early']}")
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline (default 60)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--encodes", type=int, default=1, help="encode lanes (default 1)")
    p.add_argument("--workflows", type=int, default=4, help="workflow lanes (default 4)")
    p.add_argument("--fanout", type=int, default=10, help="no-op steps per workflow (default 10)")
    p.add_argument("--clip-seconds", type=float, default=4.0, help="length of the encoded clip")
    p.add_argument("--json-file", type=Path, help="also write the result as JSON here")
    args = p.parse_args(argv)
    args.warmup = min(args.warmup, args.duration / 2)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="cosmos-soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp), say))
    print(render(result))
    if args.json_file:
        args.json_file.write_text(json.dumps(result, indent=2) + "\n")
    bad = result["encodes"]["failed"] + result["workflows"]["failed"] + bool(result["exited_early"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
