"""Container jobs through real Stratum and agent processes, in the locally built worker image: a job
with an image lands on the agent that advertises podman (never on the one started with
``--runtimes process``), runs non-root without network, and a cancel through the API removes its
container. Skipped, with the reason, where podman cannot run containers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import podman_harness
import pytest
from stratum_harness import JS, Agents, JobsClient, wait_agents

from cosmos.stratum.agent import containers
from cosmos.stratum.v1 import job_pb2, job_service_pb2

pytestmark = pytest.mark.skipif(bool(why := podman_harness.podman_unusable()), reason=why)


@pytest.fixture(scope="module")
def worker_image() -> str:
    return podman_harness.worker_image()


def image_job(image: str, code: str) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(argv=["python3", "-c", code], image=image)
    spec.resources.cpu_millis = 100
    spec.resources.memory_bytes = 64 << 20
    return spec


REPORT = """
import json, os, socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    net = "reached"
except OSError as exc:
    net = type(exc).__name__
print(json.dumps({"uid": os.getuid(), "net": net, "interfaces": sorted(os.listdir("/sys/class/net"))}))
"""


async def test_image_jobs_run_only_on_the_agent_with_podman(
    stratum: Any, jobs: JobsClient, agents: Agents, worker_image: str
) -> None:
    agents.start(stratum.target, "bare", "--runtimes", "process")
    agents.start(stratum.target, "podman")
    await wait_agents(stratum.target, 2)
    submitted = [await jobs.submit(image_job(worker_image, REPORT)) for _ in range(3)]
    for job in submitted:
        done = await jobs.wait(job.job_id, timeout=120)
        assert done.state == JS.JOB_STATE_SUCCEEDED, done.failure_reason
        assert done.agent_id == "podman"
        lines = [e.log.text for e in await jobs.events(job.job_id) if e.WhichOneof("event") == "log"]
        report = json.loads(lines[-1])
        assert report["uid"] != 0 and report["net"] != "reached" and report["interfaces"] == ["lo"]


async def test_cancel_through_the_api_removes_the_container(
    stratum: Any, jobs: JobsClient, agents: Agents, worker_image: str
) -> None:
    agents.start(stratum.target, "podman")
    await wait_agents(stratum.target, 1)
    job = await jobs.submit(image_job(worker_image, "import time; print('up', flush=True); time.sleep(300)"))
    running = await jobs.wait(job.job_id, [JS.JOB_STATE_RUNNING], timeout=60)
    name = containers.container_name(job.job_id, running.attempt)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not podman_harness.container_exists(name):
        assert loop.time() < deadline
        await asyncio.sleep(0.1)
    await jobs.stub.CancelJob(
        job_service_pb2.CancelJobRequest(request_id="cancel-1", job_id=job.job_id, reason="test")
    )
    done = await jobs.wait(job.job_id, timeout=60)
    assert done.state == JS.JOB_STATE_CANCELLED
    deadline = loop.time() + 30
    while podman_harness.container_exists(name):
        assert loop.time() < deadline, "the cancelled job's container is still there"
        await asyncio.sleep(0.1)
