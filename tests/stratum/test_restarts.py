"""Restarts are non-events: Stratum restarted (SIGTERM or kill -9) with jobs in flight, agents that
die or stop, cancels racing a restart, and a pool that is empty for a while."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import security_harness
from stratum_harness import JS, Agents, JobsClient, Stratum, python_job, wait_agents

from cosmos.stratum.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc, job_service_pb2


@pytest.fixture
def make_stratum(nats_url: str, tmp_path: Path) -> Iterator[Callable[..., Stratum]]:
    made: list[Stratum] = []

    def make(*args: str) -> Stratum:
        made.append(Stratum(nats_url, tmp_path / f"stratum-{len(made)}.log", *args))
        return made[-1]

    yield make
    for server in made:
        server.close()


@contextlib.asynccontextmanager
async def jobs_client(target: str) -> AsyncIterator[JobsClient]:
    client = JobsClient.connect(target)
    try:
        yield client
    finally:
        await client.channel.close(None)


class FakeAgent:
    """An agent speaking the stream protocol by hand: it heartbeats, records what Stratum sends, and
    never runs anything (so a test decides what an agent does with an assignment or a cancel)."""

    def __init__(self, target: str, agent_id: str) -> None:
        self.target, self.agent_id = target, agent_id
        self.received: list[agent_service_pb2.ConnectResponse] = []
        self._channel = security_harness.channel(target, security_harness.workload("agent", agent_id))
        self._outbox: asyncio.Queue[agent_service_pb2.ConnectRequest] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, running: tuple[tuple[str, int], ...] = ()) -> None:
        hello = agent_service_pb2.AgentHello(
            agent_id=self.agent_id, inventory=agent_pb2.Inventory(cpu_millis=4000, memory_bytes=8 << 30)
        )
        for job_id, attempt in running:
            hello.running.add(job_id=job_id, attempt=attempt)
        await self._outbox.put(agent_service_pb2.ConnectRequest(request_id="hello", hello=hello))

        async def requests() -> AsyncIterator[agent_service_pb2.ConnectRequest]:
            while True:
                yield await self._outbox.get()

        call = agent_service_pb2_grpc.AgentServiceStub(self._channel).Connect(requests())

        async def read() -> None:
            with contextlib.suppress(Exception):
                async for reply in call:
                    self.received.append(reply)

        async def beat() -> None:
            while True:
                await self._outbox.put(
                    agent_service_pb2.ConnectRequest(heartbeat=agent_service_pb2.AgentHeartbeat())
                )
                await asyncio.sleep(0.3)

        self._tasks = [asyncio.create_task(read()), asyncio.create_task(beat())]

    async def wait_for(
        self, kind: str, job_id: str, timeout: float = 30
    ) -> agent_service_pb2.ConnectResponse:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for reply in self.received:
                if reply.WhichOneof("message") == kind and getattr(reply, kind).job_id == job_id:
                    return reply
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.agent_id} got no {kind} for {job_id}: {self.received}")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._channel.close(None)


async def test_a_job_submitted_while_the_pool_has_no_agents_waits_for_one(
    make_stratum: Callable[..., Stratum], agents: Agents
) -> None:
    stratum = make_stratum()
    stratum.start()
    async with jobs_client(stratum.target) as jobs:
        job = await jobs.submit(python_job("print('late agent')"))
        assert job.state == JS.JOB_STATE_QUEUED  # not refused: "no agent right now" is transient
        await asyncio.sleep(1.5)
        assert (await jobs.get(job.job_id)).state == JS.JOB_STATE_QUEUED
        agents.start(stratum.target, "late")
        done = await jobs.wait(job.job_id, timeout=60)
        assert done.state == JS.JOB_STATE_SUCCEEDED, done.failure_reason


async def test_a_job_no_agent_can_take_fails_after_the_unplaceable_timeout(
    make_stratum: Callable[..., Stratum],
) -> None:
    stratum = make_stratum("--unplaceable-timeout", "2")
    stratum.start()
    async with jobs_client(stratum.target) as jobs:
        job = await jobs.submit(python_job("print('never')"))
        done = await jobs.wait(job.job_id, timeout=60)
    assert done.state == JS.JOB_STATE_FAILED
    assert "no agent could run this job for 2s" in done.failure_reason
    assert "no agents" in done.failure_reason


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
async def test_jobs_in_flight_complete_across_a_stratum_restart(
    make_stratum: Callable[..., Stratum], agents: Agents, how: str
) -> None:
    stratum = make_stratum("--lease-seconds", "10")
    stratum.start()
    agents.start(stratum.target, "steady")
    await wait_agents(stratum.target, 1)
    async with jobs_client(stratum.target) as jobs:
        running = await jobs.submit(python_job("import time; time.sleep(3); print('long')"))
        await jobs.wait(running.job_id, [JS.JOB_STATE_RUNNING])
    if how == "sigterm":
        assert stratum.stop() == 0
    else:
        stratum.kill()
    stratum.start()
    async with jobs_client(stratum.target) as jobs:
        # Submitted before the agent is back: queued, not refused with "the pool has no agents".
        fresh = await jobs.submit(python_job("print('fresh')"))
        first = await jobs.wait(running.job_id, timeout=60)
        second = await jobs.wait(fresh.job_id, timeout=60)
    assert (first.state, first.attempt) == (JS.JOB_STATE_SUCCEEDED, 1), first.failure_reason  # kept
    assert second.state == JS.JOB_STATE_SUCCEEDED, second.failure_reason


async def test_a_cancel_racing_an_assignment_stays_cancelled_after_a_restart(
    make_stratum: Callable[..., Stratum], agents: Agents
) -> None:
    stratum = make_stratum("--lease-seconds", "2")
    stratum.start()
    fake = FakeAgent(stratum.target, "sluggish")
    await fake.connect()
    await wait_agents(stratum.target, 1)
    async with jobs_client(stratum.target) as jobs:
        job = await jobs.submit(python_job("print('must not run')"))
        await fake.wait_for("assign", job.job_id)
        # The agent has the assignment but not yet acted on the cancel when Stratum dies.
        cancel = job_service_pb2.CancelJobRequest(request_id="c1", job_id=job.job_id, reason="user")
        await jobs.stub.CancelJob(cancel)
        await fake.wait_for("cancel", job.job_id)
    stratum.kill()
    await fake.close()
    stratum.start()
    agents.start(stratum.target, "eager")  # would run the job if it were requeued
    async with jobs_client(stratum.target) as jobs:
        done = await jobs.wait(job.job_id, timeout=60)
    assert (done.state, done.attempt, done.agent_id) == (JS.JOB_STATE_CANCELLED, 1, "sluggish")


async def test_an_agent_still_running_a_cancelled_attempt_is_told_again_after_a_restart(
    make_stratum: Callable[..., Stratum],
) -> None:
    stratum = make_stratum("--lease-seconds", "5")
    stratum.start()
    fake = FakeAgent(stratum.target, "deaf")
    await fake.connect()
    await wait_agents(stratum.target, 1)
    async with jobs_client(stratum.target) as jobs:
        job = await jobs.submit(python_job("print('x')"))
        await fake.wait_for("assign", job.job_id)
        await jobs.stub.CancelJob(job_service_pb2.CancelJobRequest(request_id="c", job_id=job.job_id))
    stratum.kill()
    await fake.close()
    stratum.start()
    back = FakeAgent(stratum.target, "deaf")
    await back.connect(running=((job.job_id, 1),))
    try:
        told = await back.wait_for("cancel", job.job_id)
        assert told.cancel.attempt == 1
    finally:
        await back.close()


async def test_a_dead_agents_jobs_are_requeued_at_once_not_after_the_lease(
    make_stratum: Callable[..., Stratum], agents: Agents
) -> None:
    # A minute-long lease: only the stream reset can requeue the job within the wait below.
    stratum = make_stratum("--lease-seconds", "60")
    stratum.start()
    agents.start(stratum.target, "doomed")
    await wait_agents(stratum.target, 1)
    async with jobs_client(stratum.target) as jobs:
        job = await jobs.submit(python_job("import time; time.sleep(4); print('ok')"))
        await jobs.wait(job.job_id, [JS.JOB_STATE_RUNNING])
        agents.start(stratum.target, "survivor")
        await wait_agents(stratum.target, 2)
        killed = time.monotonic()
        agents.kill("doomed")
        moved = await jobs.get(job.job_id)
        while moved.attempt < 2 and time.monotonic() - killed < 30:
            await asyncio.sleep(0.05)
            moved = await jobs.get(job.job_id)
        print(f"requeued and reassigned {time.monotonic() - killed:.2f}s after kill -9 of the agent")
        assert moved.agent_id == "survivor"
        done = await jobs.wait(job.job_id, timeout=60)
    assert (done.state, done.attempt) == (JS.JOB_STATE_SUCCEEDED, 2), done.failure_reason


async def test_a_stopped_agents_jobs_are_requeued_not_cancelled(
    make_stratum: Callable[..., Stratum], agents: Agents
) -> None:
    stratum = make_stratum("--lease-seconds", "60")
    stratum.start()
    leaving = agents.start(stratum.target, "leaving")
    await wait_agents(stratum.target, 1)
    async with jobs_client(stratum.target) as jobs:
        job = await jobs.submit(python_job("import time; time.sleep(3); print('ok')"))
        await jobs.wait(job.job_id, [JS.JOB_STATE_RUNNING])
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(30) == 0
        agents.start(stratum.target, "staying")
        done = await jobs.wait(job.job_id, timeout=60)
    assert (done.state, done.attempt, done.agent_id) == (JS.JOB_STATE_SUCCEEDED, 2, "staying")
