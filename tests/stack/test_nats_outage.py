"""NATS stopped under a running Plato, Stratum and Optimus, then started again (same port, same store):
meanwhile the RPCs that need it answer UNAVAILABLE with RetryInfo and health says NOT_SERVING; after,
everything is SERVING again on its own and the data is still there."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import security_harness
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from cosmos.optimus.v1 import encode_service_pb2, encode_service_pb2_grpc
from cosmos.plato.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime.config import Address, free_port
from cosmos.stratum.v1 import job_service_pb2, job_service_pb2_grpc, pool_service_pb2, pool_service_pb2_grpc

ONE_STEP = """\
workflow:
  id: outage-one-step
  rules:
    - when: workflow.started
      do: [only]
"""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Nats:
    """A nats-server that a test stops and starts again on the same port and store dir."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = security_harness.nats_argv(Address("127.0.0.1", self.port), self.store)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server did not listen")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Nats]:
    server = Nats(tmp_path / "nats-store")
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(20)


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
    except grpc.aio.AioRpcError:
        return -1
    return int(reply.status)


async def until_health(
    channel: grpc.aio.Channel, status: int, timeout: float = 60, service: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while (current := await health(channel, service)) != status:
        assert time.monotonic() < deadline, f"health is {current}, not {status}, after {timeout}s"
        await asyncio.sleep(0.2)


async def unavailable(call: Any) -> None:
    """``call`` answers UNAVAILABLE with a RetryInfo (the call's own deadline bounds the wait)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (caught.value.code(), caught.value.details())
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status.details)
    assert retry.retry_delay.seconds >= 1


async def test_a_nats_outage_is_answered_unavailable_and_healed_on_reconnect(
    nats: Nats, start_service: Callable[..., Any]
) -> None:
    plato = start_service("plato", "--nats", nats.url)
    stratum = start_service("stratum", "--nats", nats.url)
    optimus = start_service("optimus", "--plato", plato.target)
    async with (
        security_harness.channel(plato.target) as p,
        security_harness.channel(stratum.target) as s,
        security_harness.channel(optimus.target) as o,
    ):
        workflows = workflow_service_pb2_grpc.WorkflowServiceStub(p)
        jobs = job_service_pb2_grpc.JobServiceStub(s)
        pool = pool_service_pb2_grpc.PoolServiceStub(s)
        encodes = encode_service_pb2_grpc.EncodeServiceStub(o)
        await workflows.RegisterDefinition(
            workflow_service_pb2.RegisterDefinitionRequest(request_id="outage", source_yaml=ONE_STEP)
        )
        started = await workflows.StartWorkflow(
            workflow_service_pb2.StartWorkflowRequest(request_id="before", definition_id="outage-one-step")
        )
        workflow_id = started.workflow.workflow_id

        nats.kill()
        # Answered by the services themselves well inside the callers' deadlines (not left to time out).
        get = workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id)
        await unavailable(workflows.GetWorkflow(get, timeout=10))
        start = workflow_service_pb2.StartWorkflowRequest(
            request_id="during", definition_id="outage-one-step"
        )
        await unavailable(workflows.StartWorkflow(start, timeout=10))
        submit = job_service_pb2.SubmitJobRequest(request_id=uuid.uuid4().hex)
        submit.spec.argv.append("true")
        await unavailable(jobs.SubmitJob(submit, timeout=10))
        await unavailable(jobs.ListJobs(job_service_pb2.ListJobsRequest(), timeout=10))
        for channel in (p, s, o):
            await until_health(channel, NOT_SERVING)
        await unavailable(
            encodes.GetEncode(encode_service_pb2.GetEncodeRequest(encode_id="enc-1"), timeout=10)
        )
        # What needs no NATS goes on: the pool's view, the profile catalogue.
        await pool.ListAgents(pool_service_pb2.ListAgentsRequest(), timeout=10)
        await encodes.ListProfiles(encode_service_pb2.ListProfilesRequest(), timeout=10)

        nats.start()
        for channel in (p, s, o):
            await until_health(channel, SERVING)
        # The Stratum process is SERVING as soon as NATS is back; its job service once it holds the
        # leader lease again (until then it answers UNAVAILABLE: no leader is known yet, retry).
        await until_health(s, SERVING, service="cosmos.stratum.v1.JobService")
        # Back without a restart of any service, and nothing was lost.
        reply = await workflows.GetWorkflow(get, timeout=30)
        assert reply.workflow.workflow_id == workflow_id
        await workflows.StartWorkflow(start, timeout=30)
        listed = await jobs.ListJobs(job_service_pb2.ListJobsRequest(), timeout=30)
        assert all(job.request_id != submit.request_id for job in listed.jobs)


@pytest.mark.parametrize("service", ["plato", "stratum"])
def test_a_service_stopped_while_nats_is_away_exits_cleanly_at_once(
    nats: Nats, start_service: Callable[..., Any], service: str
) -> None:
    started = start_service(service, "--nats", nats.url)
    nats.kill()
    time.sleep(1)  # the client has noticed and buffers for its reconnect
    began = time.monotonic()
    code = started.stop()
    took = time.monotonic() - began
    output = started.output()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    # Not the JetStream request timeout (5 s) nor the leader lease's ttl: nothing waits on NATS.
    assert took < 3, f"{service} took {took:.1f}s to stop"
