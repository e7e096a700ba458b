"""Stratum under failure and load: agent-loss recovery time and progress latency.

Real processes on loopback: a NATS server, Stratum with its default lease (10 s) and heartbeat (2 s),
and two agents. Two measurements:

- **agent-loss recovery**: a job runs on agent X; ``kill -9`` of X at t0; t1 = the job is RUNNING on
  the other agent (a new attempt). Repeated ``--rounds`` times. Goal: under 15 s with defaults.
- **progress latency**: a job writes a progress line on the documented progress channel every
  300 ms (longer than the agent's 250 ms coalescing, so each line is sent at once), carrying its
  wall-clock write time; a ``WatchJob`` client records receive time - write time. p50 / p99.

Security is on as in production: a throwaway CA (bench_security.py), Stratum and each agent with
their certificates, the benchmark calling as the admin over mutual TLS; ``--insecure`` runs every
process with ``--insecure`` instead (plaintext on loopback, the baseline).

Run: ``.venv/bin/python bench/stratum_failover.py [--rounds 3] [--samples 100] [--insecure] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from bench_security import BenchPki, agent_args, connect, server_args

from cosmos.runtime.config import Address, free_port
from cosmos.stack import natsd
from cosmos.stratum.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    pool_service_pb2,
    pool_service_pb2_grpc,
)

RUNNING = job_pb2.JOB_STATE_RUNNING
PROGRESS_PROGRAM = """
import json, os, time
with open(int(os.environ["COSMOS_PROGRESS_FD"]), "w", buffering=1) as channel:
    for i in range({samples}):
        channel.write(json.dumps({{"percent": 100 * i / {samples}, "message": repr(time.time())}}) + "\\n")
        time.sleep(0.3)
"""


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def cosmos(*args: str) -> list[str]:
    return [sys.executable, "-m", "cosmos.cli", *args]


async def wait_ready(
    pool: pool_service_pb2_grpc.PoolServiceAsyncStub, agent_id: str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = await pool.GetAgent(pool_service_pb2.GetAgentRequest(agent_id=agent_id))
            if reply.agent.state == 1:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"agent {agent_id} never became READY")


async def wait_running(jobs: job_service_pb2_grpc.JobServiceAsyncStub, job_id: str, attempt: int) -> str:
    while True:
        job = (await jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job_id))).job
        if job.state == RUNNING and job.attempt >= attempt:
            return job.agent_id
        await asyncio.sleep(0.02)


async def recovery(
    mesh: BenchPki | None,
    target: str,
    agents: dict[str, subprocess.Popen[bytes]],
    start_agent: Any,
    rounds: int,
) -> list[float]:
    times = []
    async with connect(mesh, target, "stratum") as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        pool = pool_service_pb2_grpc.PoolServiceStub(channel)
        for agent_id in agents:
            await wait_ready(pool, agent_id)
        for _ in range(rounds):
            spec = job_pb2.JobSpec(argv=[sys.executable, "-c", "import time; time.sleep(120)"])
            spec.resources.cpu_millis = 1500  # one per agent: the survivor must have room
            reply = await jobs.SubmitJob(
                job_service_pb2.SubmitJobRequest(request_id=uuid.uuid4().hex, spec=spec)
            )
            victim = await wait_running(jobs, reply.job.job_id, 1)
            t0 = time.monotonic()
            agents[victim].send_signal(signal.SIGKILL)
            agents[victim].wait()
            await wait_running(jobs, reply.job.job_id, 2)
            times.append(time.monotonic() - t0)
            await jobs.CancelJob(
                job_service_pb2.CancelJobRequest(request_id=uuid.uuid4().hex, job_id=reply.job.job_id)
            )
            agents[victim] = start_agent(victim)
            await wait_ready(pool, victim)
    return times


async def progress_latency(mesh: BenchPki | None, target: str, samples: int) -> list[float]:
    latencies = []
    async with connect(mesh, target, "stratum") as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        spec = job_pb2.JobSpec(
            argv=[sys.executable, "-c", PROGRESS_PROGRAM.format(samples=samples)],
            progress_format=job_pb2.PROGRESS_FORMAT_CHANNEL,
        )
        spec.resources.cpu_millis = 100
        reply = await jobs.SubmitJob(job_service_pb2.SubmitJobRequest(request_id=uuid.uuid4().hex, spec=spec))
        async for update in jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=reply.job.job_id)):
            event = update.event
            if event.WhichOneof("event") == "progress" and event.progress.message:
                latencies.append(time.time() - float(event.progress.message))
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cosmos-bench-stratum-"))
    procs: list[subprocess.Popen[bytes]] = []
    agents: dict[str, subprocess.Popen[bytes]] = {}
    try:
        mesh = None if args.insecure else BenchPki.create(root / "pki")
        nats_port = free_port()
        procs.append(
            spawn(natsd.nats_server_argv(Address("127.0.0.1", nats_port), root / "nats"), root / "nats.log")
        )
        target = f"127.0.0.1:{free_port()}"
        procs.append(
            spawn(
                cosmos(
                    "stratum",
                    "--listen",
                    target,
                    "--nats",
                    f"nats://127.0.0.1:{nats_port}",
                    *server_args(mesh, "stratum"),
                ),
                root / "s.log",
            )
        )

        def start_agent(agent_id: str) -> subprocess.Popen[bytes]:
            argv = cosmos(
                "agent", "--stratum", target, "--agent-id", agent_id, "--work-dir", str(root / agent_id),
                *agent_args(mesh, agent_id),
            )  # fmt: skip
            return spawn(argv, root / f"{agent_id}.log")

        for agent_id in ("agent-a", "agent-b"):
            agents[agent_id] = start_agent(agent_id)
        await asyncio.sleep(1.0)
        recovered = await recovery(mesh, target, agents, start_agent, args.rounds)
        latencies = await progress_latency(mesh, target, args.samples)
    finally:
        for proc in [*agents.values(), *reversed(procs)]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "settings": {
            "lease_seconds": 10.0,
            "heartbeat_interval": 2.0,
            "rounds": args.rounds,
            "samples": args.samples,
            "security": "off (--insecure)" if args.insecure else "on (mutual TLS)",
        },
        "agent_loss_recovery_s": {
            "samples": [round(t, 3) for t in recovered],
            "mean": round(statistics.mean(recovered), 3),
            "max": round(max(recovered), 3),
            "goal_s": 15.0,
            "met": max(recovered) < 15.0,
        },
        "progress_latency_ms": {
            "count": len(latencies),
            "p50": round(percentile(latencies, 50) * 1000, 2),
            "p99": round(percentile(latencies, 99) * 1000, 2),
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="agent kills to time")
    parser.add_argument("--samples", type=int, default=100, help="progress updates to time")
    parser.add_argument(
        "--insecure", action="store_true", help="every process with --insecure (the plaintext baseline)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args()
    figures = asyncio.run(main(options))
    if options.json:
        print(json.dumps(figures))
    else:
        rec, lat = figures["agent_loss_recovery_s"], figures["progress_latency_ms"]
        print(
            f"agent-loss recovery: mean {rec['mean']} s, max {rec['max']} s over {len(rec['samples'])} kills "
            f"(lease 10 s, heartbeat 2 s; goal < 15 s: {'met' if rec['met'] else 'NOT met'})"
        )
        print(
            f"progress latency (program write -> WatchJob client): p50 {lat['p50']} ms, p99 {lat['p99']} ms "
            f"over {lat['count']} updates"
        )
