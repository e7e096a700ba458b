"""End to end: a job cannot read the agent's key nor run as root; the job policy refuses at submit."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import security_harness
from stratum_harness import JS, Agents, JobsClient, python_job, wait_agents

from cosmos.runtime import rpc_errors
from cosmos.security import pki
from cosmos.stratum.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

# The interpreter the jobs run is wherever this checkout's venv is (CI clones elsewhere).
POLICY = f"""
tenants:
  default: {{executables: [python3, /usr/bin/*, {Path(sys.executable).parent}/*, /tmp/*]}}
  "*": {{executables: [python3], images: []}}
"""


@pytest.fixture
def stratum(start_service: Callable[..., Any], nats_url: str, tmp_path: Path) -> Any:
    policy = tmp_path / "job-policy.yaml"
    policy.write_text(POLICY)
    return start_service("stratum", "--nats", nats_url, "--job-policy", str(policy))


@pytest.fixture
async def jobs(stratum: Any) -> AsyncIterator[JobsClient]:
    client = JobsClient.connect(stratum.target)
    yield client
    await client.channel.close(None)


def log_text(events: list[job_pb2.JobEvent]) -> str:
    return "\n".join(e.log.text for e in events if e.WhichOneof("event") == "log")


@pytest.mark.skipif(os.geteuid() != 0, reason="the agent switches users only when it runs as root")
async def test_a_job_cannot_read_the_agents_key_nor_write_as_root(
    stratum: Any, jobs: JobsClient, agents: Agents, tmp_path: Path
) -> None:
    agents.start(stratum.target, "host-a")
    await wait_agents(stratum.target, 1)
    key = pki.Paths.named(security_harness.pki_dir(), "agent-host-a").key
    key_text = key.read_text()
    body = [line for line in key_text.splitlines() if line and not line.startswith("-----")]
    marker = Path("/etc/cosmos-sandbox-test-marker")
    code = f"""
import asyncio
import os
import sys
print("UID", os.getuid())
try:
    print(open({str(key)!r}).read())
except OSError as exc:
    print("KEY", type(exc).__name__)
try:
    open({str(marker)!r}, "w").write("owned")
except OSError as exc:
    print("WRITE", type(exc).__name__)
"""
    job = await jobs.submit(python_job(code))
    done = await jobs.wait(job.job_id)
    assert done.state == JS.JOB_STATE_SUCCEEDED, done.failure_reason
    text = log_text(await jobs.events(job.job_id))
    uid = int(text.splitlines()[0].split()[1])
    assert uid != 0
    # The key's directory is out of the job's view (or at least unreadable): never its bytes.
    assert "KEY FileNotFoundError" in text or "KEY PermissionError" in text
    assert "PRIVATE KEY" not in text and all(line not in text for line in body)
    assert "WRITE PermissionError" in text and not await asyncio.to_thread(marker.exists)


async def test_a_forbidden_executable_is_refused_at_submit(stratum: Any, jobs: JobsClient) -> None:
    acme = security_harness.channel(stratum.target, security_harness.user("ann", "acme", "submitter"))
    try:
        stub = JobsClient(acme, job_service_pb2_grpc.JobServiceStub(acme))
        cases = [
            (job_pb2.JobSpec(argv=["sh", "-c", "touch /tmp/pwned"]), "spec.argv[0]"),
            (job_pb2.JobSpec(argv=["/usr/bin/python3", "-c", "pass"]), "spec.argv[0]"),
            (job_pb2.JobSpec(argv=["python3", "-c", "pass"], image="alpine:3"), "spec.image"),
        ]
        for spec, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.submit(spec)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            info, violations = rpc_errors.details_of(caught.value)
            assert info is not None and info.reason == "ERROR_REASON_FORBIDDEN_EXECUTABLE"
            assert [v.field for v in violations] == [field]
        # Nothing was created, for this tenant or anyone.
        listed = await jobs.stub.ListJobs(job_service_pb2.ListJobsRequest())
        assert list(listed.jobs) == []
        # What the tenant's list allows passes the policy: with no agent here yet it waits for one.
        allowed = await stub.submit(job_pb2.JobSpec(argv=["python3", "-c", "pass"]))
        assert allowed.state == job_pb2.JOB_STATE_QUEUED
    finally:
        await acme.close(None)
