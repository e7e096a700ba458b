"""Stratum leader takeover: kill -9 of the leading replica, and how long until jobs are served again.

Real processes on loopback, security on (a throwaway CA, mutual TLS everywhere): a NATS server, two
Stratum replicas with the default leader lease (``--lease-ttl 3``), one agent given both replicas'
addresses. Each round a job is running on the agent; the leader is killed (``kill -9``) at t0, then:

- **takeover**: t1 = the first ``SubmitJob`` answered OK through a channel to both replicas (round
  robin, UNAVAILABLE retried on the other: what every Cosmos client does given ``a,b``);
- **agent back**: t2 = the agent is READY on the new leader;
- **no job lost**: the job that was running is still RUNNING in its first attempt (the new leader
  recovered it from NATS and the agent reported it again), and the job submitted after the kill
  succeeds.

The killed replica is started again (now a follower) before the next round. The peer, side by side in
the same run (alternating which goes first): one Stratum, killed and started again at once by a
supervisor (what ``cosmos up`` does), timed to its first ``SubmitJob`` answered OK. Goal: takeover
under 5 s.

Run: ``.venv/bin/python bench/stratum_takeover.py [--rounds 5] [--json]``.
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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stratum_failover import cosmos, spawn, wait_ready

from cosmos.runtime.config import Address, free_port
from cosmos.stack import natsd
from cosmos.stratum.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, pool_service_pb2_grpc

GOAL_S = 5.0
JOBS = "cosmos.stratum.v1.JobService"
RUNNING = job_pb2.JOB_STATE_RUNNING


class Replica:
    def __init__(self, root: Path, name: str, nats: str, mesh: BenchPki) -> None:
        self.target = f"127.0.0.1:{free_port()}"
        self.argv = cosmos("stratum", "--listen", self.target, "--nats", nats, *server_args(mesh, "stratum"))
        self.log = root / f"{name}.log"
        self.mesh = mesh
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = spawn(self.argv, self.log)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def leads(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            async with connect(self.mesh, self.target, "stratum") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=JOBS), timeout=1
                )
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def sleeper(seconds: float) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(argv=[sys.executable, "-c", f"import time; time.sleep({seconds})"])
    spec.resources.cpu_millis = 100
    spec.resources.memory_bytes = 64 << 20
    return spec


async def submit(jobs: job_service_pb2_grpc.JobServiceAsyncStub, spec: job_pb2.JobSpec) -> job_pb2.Job:
    reply = await jobs.SubmitJob(job_service_pb2.SubmitJobRequest(request_id=uuid.uuid4().hex, spec=spec))
    return reply.job


async def first_submit(
    jobs: job_service_pb2_grpc.JobServiceAsyncStub, t0: float
) -> tuple[float, job_pb2.Job]:
    """Seconds from t0 to the first SubmitJob answered OK (and that job)."""
    while True:
        try:
            job = await submit(jobs, sleeper(0))
            return time.monotonic() - t0, job
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            await asyncio.sleep(0.02)


async def wait_job(
    jobs: job_service_pb2_grpc.JobServiceAsyncStub, job_id: str, states: set[int]
) -> job_pb2.Job:
    while True:
        job = (await jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job_id))).job
        if job.state in states:
            return job
        await asyncio.sleep(0.05)


async def replicas_round(mesh: BenchPki, replicas: list[Replica], agent_id: str) -> dict[str, Any]:
    both = ",".join(r.target for r in replicas)
    async with connect(mesh, both, "stratum") as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        pool = pool_service_pb2_grpc.PoolServiceStub(channel)
        await wait_ready(pool, agent_id)
        running = await submit(jobs, sleeper(120))
        await wait_job(jobs, running.job_id, {RUNNING})
        leaders = [r for r in replicas if await r.leads()]
        assert len(leaders) == 1, "exactly one replica leads"
        t0 = time.monotonic()
        leaders[0].kill()
        takeover, probe = await first_submit(jobs, t0)
        await wait_ready(pool, agent_id)
        agent_back = time.monotonic() - t0
        still = (await jobs.GetJob(job_service_pb2.GetJobRequest(job_id=running.job_id))).job
        done = await asyncio.wait_for(wait_job(jobs, probe.job_id, {job_pb2.JOB_STATE_SUCCEEDED}), 60)
        kept = still.state == RUNNING and still.attempt == 1 and done.state == job_pb2.JOB_STATE_SUCCEEDED
        await jobs.CancelJob(
            job_service_pb2.CancelJobRequest(request_id=uuid.uuid4().hex, job_id=running.job_id)
        )
        leaders[0].start()  # back as a follower
        return {"takeover_s": takeover, "agent_back_s": agent_back, "no_job_lost": kept}


async def restart_round(mesh: BenchPki, single: Replica, agent_id: str) -> float:
    async with connect(mesh, single.target, "stratum") as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        await wait_ready(pool_service_pb2_grpc.PoolServiceStub(channel), agent_id)
        t0 = time.monotonic()
        single.kill()
        await asyncio.sleep(0.5)  # cosmos up's supervisor: first restart after 0.5 s
        single.start()
        elapsed, _ = await first_submit(jobs, t0)
        return elapsed


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cosmos-bench-takeover-"))
    procs: list[subprocess.Popen[bytes]] = []
    replicas: list[Replica] = []
    try:
        mesh = BenchPki.create(root / "pki")
        nats = []
        for name in ("nats-ha", "nats-single"):  # one NATS each: the two setups never share a lease
            port = free_port()
            procs.append(
                spawn(natsd.nats_server_argv(Address("127.0.0.1", port), root / name), root / f"{name}.log")
            )
            nats.append(f"nats://127.0.0.1:{port}")
        replicas = [Replica(root, f"stratum-{n}", nats[0], mesh) for n in range(2)]
        single = Replica(root, "stratum-single", nats[1], mesh)
        for replica in [*replicas, single]:
            replica.start()
        await asyncio.sleep(1.0)

        def agent(agent_id: str, stratum: str) -> subprocess.Popen[bytes]:
            argv = cosmos(
                "agent", "--stratum", stratum, "--agent-id", agent_id, "--work-dir", str(root / agent_id),
                *agent_args(mesh, agent_id),
            )  # fmt: skip
            return spawn(argv, root / f"{agent_id}.log")

        procs.append(agent("agent-ha", ",".join(r.target for r in replicas)))
        procs.append(agent("agent-single", single.target))
        ha: list[dict[str, Any]] = []
        restarts: list[float] = []
        for n in range(args.rounds):
            order = ("ha", "single") if n % 2 == 0 else ("single", "ha")
            for which in order:
                if which == "ha":
                    ha.append(await replicas_round(mesh, replicas, "agent-ha"))
                else:
                    restarts.append(await restart_round(mesh, single, "agent-single"))
        replicas.append(single)
    finally:
        for replica in replicas:
            replica.stop()
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(root, ignore_errors=True)
    takeovers = [r["takeover_s"] for r in ha]
    return {
        "settings": {"lease_ttl_s": 3.0, "rounds": args.rounds, "security": "on (mutual TLS)"},
        "takeover_s": {
            "samples": [round(t, 3) for t in takeovers],
            "median": round(statistics.median(takeovers), 3),
            "max": round(max(takeovers), 3),
            "goal_s": GOAL_S,
            "met": max(takeovers) < GOAL_S,
        },
        "agent_back_s": {
            "samples": [round(r["agent_back_s"], 3) for r in ha],
            "max": round(max(r["agent_back_s"] for r in ha), 3),
        },
        "no_job_lost": all(r["no_job_lost"] for r in ha),
        "single_restart_s": {
            "samples": [round(t, 3) for t in restarts],
            "median": round(statistics.median(restarts), 3),
        },
        "takeover_over_restart": round(statistics.median(takeovers) / statistics.median(restarts), 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="leader kills to time (and as many restarts)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args()
    figures = asyncio.run(main(options))
    if options.json:
        print(json.dumps(figures))
    else:
        t, r = figures["takeover_s"], figures["single_restart_s"]
        print(
            f"leader takeover after kill -9: median {t['median']} s, max {t['max']} s over "
            f"{len(t['samples'])} kills (goal < {t['goal_s']} s: {'met' if t['met'] else 'NOT met'}); "
            f"agent back on the new leader within {figures['agent_back_s']['max']} s; "
            f"no job lost: {figures['no_job_lost']}"
        )
        print(
            f"single Stratum restarted by a supervisor: median {r['median']} s; "
            f"takeover / restart = {figures['takeover_over_restart']}"
        )
