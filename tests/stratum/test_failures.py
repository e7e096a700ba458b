"""Host loss, stale attempts and Stratum restarts: no job lost, no stale result accepted."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import security_harness
from servers import stop_process, wait_serving
from stratum_harness import JS, Agents, JobsClient, python_job, wait_agents

from cosmos.runtime.config import free_port
from cosmos.stratum.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc, job_pb2


class Stratum:
    """A Stratum process that a test can restart on the same address."""

    def __init__(self, nats_url: str, log: Path) -> None:
        self.target = f"127.0.0.1:{free_port()}"
        self.nats_url = nats_url
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cosmos.cli", "stratum", "--listen", self.target, "--nats", self.nats_url,
             "--lease-seconds", "2", "--heartbeat-interval", "0.3",
             *security_harness.service_args("stratum")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_serving(self.target, proc=self.proc)

    def stop(self) -> int:
        assert self.proc is not None
        return stop_process(self.proc)


@pytest.fixture
def stratum(nats_url: str, tmp_path: Path) -> Iterator[Stratum]:
    server = Stratum(nats_url, tmp_path / "stratum.log")
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture
async def jobs(stratum: Stratum) -> AsyncIterator[JobsClient]:
    client = JobsClient.connect(stratum.target)
    yield client
    await client.channel.close(None)


async def test_killed_agent_job_completes_elsewhere_and_its_stale_attempt_is_refused(
    stratum: Stratum, jobs: JobsClient, agents: Agents
) -> None:
    agents.start(stratum.target, "doomed")
    await wait_agents(stratum.target, 1)
    job = await jobs.submit(python_job("import time; time.sleep(2); print('done')"))
    running = await jobs.wait(job.job_id, [JS.JOB_STATE_RUNNING])
    assert (running.agent_id, running.attempt) == ("doomed", 1)

    agents.kill("doomed")
    agents.start(stratum.target, "survivor")
    done = await jobs.wait(job.job_id, timeout=60)
    assert done.state == JS.JOB_STATE_SUCCEEDED
    assert (done.agent_id, done.attempt) == ("survivor", 2)

    # The old host comes back claiming the first attempt and reporting its result: both are refused.
    doomed = security_harness.workload("agent", "doomed")
    async with security_harness.channel(stratum.target, doomed) as channel:
        outbox: asyncio.Queue[agent_service_pb2.ConnectRequest] = asyncio.Queue()
        hello = agent_service_pb2.AgentHello(
            agent_id="doomed", inventory=agent_pb2.Inventory(cpu_millis=2000)
        )
        hello.running.add(job_id=job.job_id, attempt=1)
        await outbox.put(agent_service_pb2.ConnectRequest(request_id="h", hello=hello))
        finished = agent_service_pb2.JobFinished(
            job_id=job.job_id, attempt=1, final_state=JS.JOB_STATE_SUCCEEDED
        )
        finished.result.error = "stale"
        await outbox.put(agent_service_pb2.ConnectRequest(request_id="f", finished=finished))

        async def requests() -> AsyncIterator[agent_service_pb2.ConnectRequest]:
            while True:
                yield await outbox.get()

        call = agent_service_pb2_grpc.AgentServiceStub(channel).Connect(requests())
        kinds: dict[str, agent_service_pb2.ConnectResponse] = {}
        async for reply in call:
            kinds[str(reply.WhichOneof("message"))] = reply
            if {"kill_stale", "ack"} <= kinds.keys():
                break
        call.cancel()
    assert (kinds["kill_stale"].kill_stale.job_id, kinds["kill_stale"].kill_stale.attempt) == (job.job_id, 1)
    assert not kinds["ack"].ack.accepted
    after = await jobs.get(job.job_id)
    assert (after.state, after.attempt, after.result.error) == (JS.JOB_STATE_SUCCEEDED, 2, "")


async def a_running_job(stratum: Stratum, jobs: JobsClient, agents: Agents, seconds: int) -> job_pb2.Job:
    """An agent, and a job running on it for ``seconds``."""
    agents.start(stratum.target, "steady")
    await wait_agents(stratum.target, 1)
    job = await jobs.submit(python_job(f"import time; time.sleep({seconds}); print('long')", cpu_millis=1500))
    await jobs.wait(job.job_id, [JS.JOB_STATE_RUNNING])
    return job


async def restart(stratum: Stratum, job_ids: list[str], outage: float = 0.0) -> list[job_pb2.Job]:
    """Stop Stratum cleanly, leave it down for ``outage`` seconds, start it again; each job once ended."""
    assert stratum.stop() == 0
    await asyncio.sleep(outage)
    stratum.start()
    restarted = JobsClient.connect(stratum.target)
    try:
        return [await restarted.wait(job_id, timeout=60) for job_id in job_ids]
    finally:
        await restarted.channel.close(None)


async def test_restart_of_stratum_loses_neither_queued_nor_running_jobs(
    stratum: Stratum, jobs: JobsClient, agents: Agents
) -> None:
    long_one = await a_running_job(stratum, jobs, agents, seconds=4)
    waiting = await jobs.submit(python_job("print('after')", cpu_millis=1500))
    assert (await jobs.get(waiting.job_id)).state == JS.JOB_STATE_QUEUED
    first, second = await restart(stratum, [long_one.job_id, waiting.job_id])
    assert first.state == JS.JOB_STATE_SUCCEEDED and first.attempt == 1  # reconciled, not re-run
    assert second.state == JS.JOB_STATE_SUCCEEDED


async def test_an_agent_is_back_within_its_lease_after_a_long_stratum_outage(
    stratum: Stratum, jobs: JobsClient, agents: Agents
) -> None:
    # Stratum gives a recovered job's agent one lease (2 s here) to come back. The agent used to
    # double its wait between attempts up to 5 s, so after a long outage it came back too late and its
    # running job was run again; it now tries at least once per heartbeat interval (0.3 s here).
    long_one = await a_running_job(stratum, jobs, agents, seconds=14)
    (done,) = await restart(stratum, [long_one.job_id], outage=6)  # every attempt meanwhile fails
    assert done.state == JS.JOB_STATE_SUCCEEDED and done.attempt == 1  # reconciled, not re-run
