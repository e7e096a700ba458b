"""Jobs with an image go only to agents that advertise a container runtime (dispatcher over a real
NATS, agents in-process): placed on the agent with podman, never on one without; refused with
UNSUPPORTED_RUNTIME when no agent of the pool has one, or failed with the reason after waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import security_harness

from cosmos import errors
from cosmos.runtime import jetstream
from cosmos.security.tls import TlsFiles
from cosmos.stratum.dispatcher import Dispatcher, DispatcherConfig
from cosmos.stratum.placement import SchedulerAllocator
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.store import JobStore
from cosmos.stratum.v1 import agent_pb2, agent_service_pb2, job_pb2

JS = job_pb2.JobState
Outbox = asyncio.Queue[agent_service_pb2.ConnectResponse]


@dataclass
class Pool:
    dispatcher: Dispatcher
    registry: AgentRegistry

    def connect(self, agent_id: str, *runtimes: str, cpu_millis: int = 4000) -> Outbox:
        agent = agent_pb2.Agent(agent_id=agent_id)
        agent.inventory.cpu_millis = cpu_millis
        agent.inventory.memory_bytes = 8 << 30
        agent.inventory.runtimes.extend(["process", *runtimes])
        record = self.registry.connect(agent)
        return self.dispatcher.agent_connected(record.agent, [])


@pytest.fixture
async def pool(nats_url: str) -> AsyncIterator[Pool]:
    nc, js = await jetstream.connect(
        nats_url, "test-dispatcher", tls=TlsFiles.in_dir(security_harness.pki_dir(), "stratum")
    )
    store = JobStore(nc, js, memory=True)
    await store.ensure()
    registry = AgentRegistry()
    config = DispatcherConfig(unplaceable_timeout=0.5)
    yield Pool(Dispatcher(store, registry, SchedulerAllocator(), config), registry)
    await nc.close()


def image_job(image: str = "localhost/cosmos-worker:0.1.0") -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(argv=["python3", "-c", "pass"], image=image)
    spec.resources.cpu_millis = 500
    spec.resources.memory_bytes = 64 << 20
    return spec


def assigned(outbox: Outbox) -> list[str]:
    jobs = []
    while not outbox.empty():
        message = outbox.get_nowait()
        if message.HasField("assign"):
            jobs.append(message.assign.job_id)
    return jobs


async def test_a_job_with_an_image_lands_only_on_the_agent_with_a_container_runtime(pool: Pool) -> None:
    # The bare agent is the tighter fit and comes first: only the runtime keeps image jobs off it.
    bare = pool.connect("bare", cpu_millis=2000)
    podman = pool.connect("podman", "podman", cpu_millis=16000)
    images = [(await pool.dispatcher.submit(f"img-{i}", image_job()))[0].job_id for i in range(3)]
    plain, _ = await pool.dispatcher.submit("plain", job_pb2.JobSpec(argv=["true"]))
    await pool.dispatcher._pass()
    on_podman, on_bare = assigned(podman), assigned(bare)
    assert set(images) <= set(on_podman)
    assert not set(images) & set(on_bare)
    assert plain.job_id in on_podman + on_bare


async def test_a_job_with_an_image_is_refused_when_no_agent_has_a_runtime(pool: Pool) -> None:
    pool.connect("bare")
    with pytest.raises(errors.FailedPreconditionError, match="need an agent with podman or docker") as info:
        await pool.dispatcher.submit("img", image_job())
    assert info.value.reason == "ERROR_REASON_UNSUPPORTED_RUNTIME"
    # A runtime named explicitly must be there too.
    pool.connect("docker-only", "docker")
    spec = image_job()
    spec.runtime = "podman"
    with pytest.raises(errors.FailedPreconditionError, match="need an agent with podman;"):
        await pool.dispatcher.submit("img-podman", spec)


async def test_a_queued_job_with_an_image_fails_with_the_reason_when_its_agent_is_gone(pool: Pool) -> None:
    bare = pool.connect("bare")
    pool.connect("podman", "podman")
    job, _ = await pool.dispatcher.submit("img", image_job())  # accepted: an agent has podman
    await pool.dispatcher.revoke_agent("podman", "test")  # gone before the job was placed
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while job.job_id in pool.dispatcher.jobs and loop.time() < deadline:
        await pool.dispatcher._pass()
        await asyncio.sleep(0.2)
    stored = await pool.dispatcher.store.get(job.job_id)
    assert stored is not None and stored.state == JS.JOB_STATE_FAILED, stored
    assert "no node has a container runtime (docker or podman) for a job with an image" in (
        stored.failure_reason
    )
    assert not assigned(bare)  # it waited in the queue rather than land on the bare agent
