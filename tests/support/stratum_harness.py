"""Helpers for Stratum tests: agents as real processes, job specs, waiting on job states."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import security_harness
from google.protobuf import duration_pb2
from servers import stop_process, wait_serving

from cosmos.runtime.config import free_port
from cosmos.stratum.v1 import (
    agent_pb2,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    pool_service_pb2,
    pool_service_pb2_grpc,
)

JS = job_pb2.JobState
TERMINAL = (JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED, JS.JOB_STATE_CANCELLED, JS.JOB_STATE_TIMED_OUT)


async def wait_agents(target: str, count: int) -> None:
    """Until at least ``count`` agents are READY in Stratum at ``target``."""
    async with security_harness.channel(target) as channel:
        pool = pool_service_pb2_grpc.PoolServiceStub(channel)
        for _ in range(300):
            reply = await pool.ListAgents(pool_service_pb2.ListAgentsRequest())
            if sum(a.state == agent_pb2.AGENT_STATE_READY for a in reply.agents) >= count:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} agents READY")


def python_job(code: str, **resources: int) -> job_pb2.JobSpec:
    """A job running ``python -c code``."""
    spec = job_pb2.JobSpec(argv=[sys.executable, "-c", code])
    spec.resources.cpu_millis = resources.get("cpu_millis", 100)
    spec.resources.memory_bytes = resources.get("memory_bytes", 64 << 20)
    spec.resources.gpu.count = resources.get("gpus", 0)
    return spec


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


@dataclass
class Agents:
    """``cosmos agent`` processes started by a test; all killed at the end."""

    work_root: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, stratum: str, agent_id: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.work_root / f"{agent_id}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cosmos.cli", "agent", "--stratum", stratum, "--agent-id", agent_id,
             "--work-dir", str(self.work_root / agent_id), "--log-format", "text",
             *security_harness.agent_args(agent_id), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs[agent_id] = proc
        return proc

    def kill(self, agent_id: str) -> None:
        proc = self.procs.pop(agent_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@dataclass
class JobsClient:
    """A channel to Stratum's JobService with the waits tests need."""

    channel: grpc.aio.Channel
    stub: job_service_pb2_grpc.JobServiceAsyncStub

    @classmethod
    def connect(cls, target: str) -> JobsClient:
        channel = security_harness.channel(target)
        return cls(channel, job_service_pb2_grpc.JobServiceStub(channel))

    async def submit(self, spec: job_pb2.JobSpec, request_id: str = "") -> job_pb2.Job:
        reply = await self.stub.SubmitJob(
            job_service_pb2.SubmitJobRequest(request_id=request_id or uuid.uuid4().hex, spec=spec)
        )
        return reply.job

    async def get(self, job_id: str) -> job_pb2.Job:
        return (await self.stub.GetJob(job_service_pb2.GetJobRequest(job_id=job_id))).job

    async def wait(
        self, job_id: str, states: Sequence[job_pb2.JobState.ValueType] = TERMINAL, timeout: float = 60
    ) -> job_pb2.Job:
        async def poll() -> job_pb2.Job:
            while True:
                job = await self.get(job_id)
                if job.state in states:
                    return job
                await asyncio.sleep(0.05)

        return await asyncio.wait_for(poll(), timeout)

    async def events(self, job_id: str, from_sequence: int = 0) -> list[job_pb2.JobEvent]:
        call = self.stub.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id, from_sequence=from_sequence))
        return [reply.event async for reply in call]


class Stratum:
    """A Stratum process a test can kill and start again on the same address and NATS."""

    def __init__(self, nats_url: str, log: Path, *args: str) -> None:
        self.target = f"127.0.0.1:{free_port()}"
        self.argv = [
            sys.executable, "-m", "cosmos.cli", "stratum", "--listen", self.target, "--nats", nats_url,
            "--heartbeat-interval", "0.3", *security_harness.service_args("stratum"), *args,
        ]  # fmt: skip
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        wait_serving(self.target, proc=self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        return stop_process(self.proc)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
