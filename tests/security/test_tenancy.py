"""Tenants see only their own workflows and jobs: another tenant's id answers NOT_FOUND, lists leave
them out, and the tenant comes from the caller's identity, never from a request field."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import security_harness
from plato_harness import CARD_WORKFLOW
from servers import ServiceProcess
from stratum_harness import TERMINAL, Agents, python_job, wait_agents

from cosmos.plato.v1 import workflow_service_pb2 as ws
from cosmos.plato.v1 import workflow_service_pb2_grpc
from cosmos.runtime import rpc_errors
from cosmos.stratum.v1 import job_service_pb2 as js
from cosmos.stratum.v1 import job_service_pb2_grpc

ALICE = security_harness.user("alice", "acme", "submitter")
BOB = security_harness.user("bob", "globex", "submitter")
ADMIN = security_harness.admin()


async def _not_found(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value
    return caught.value


async def test_workflows_of_another_tenant_do_not_exist(
    start_service: Callable[..., ServiceProcess], nats_url: str
) -> None:
    plato = start_service("plato", "--nats", nats_url)
    async with security_harness.channel(plato.target, ADMIN) as admin_channel:
        await workflow_service_pb2_grpc.WorkflowServiceStub(admin_channel).RegisterDefinition(
            ws.RegisterDefinitionRequest(request_id="reg", source_yaml=CARD_WORKFLOW)
        )
    async with (
        security_harness.channel(plato.target, ALICE) as a,
        security_harness.channel(plato.target, BOB) as b,
        security_harness.channel(plato.target, ADMIN) as admin,
    ):
        alice = workflow_service_pb2_grpc.WorkflowServiceStub(a)
        bob = workflow_service_pb2_grpc.WorkflowServiceStub(b)
        started = await alice.StartWorkflow(
            ws.StartWorkflowRequest(request_id="same-id", definition_id="encode-workflow-v3")
        )
        wf = started.workflow
        assert wf.tenant == "acme"
        # Bob's start with the same request_id is his own workflow, not Alice's (ids derive from the tenant).
        his = await bob.StartWorkflow(
            ws.StartWorkflowRequest(request_id="same-id", definition_id="encode-workflow-v3")
        )
        assert his.workflow.workflow_id != wf.workflow_id and not his.already_started
        assert his.workflow.tenant == "globex"

        exc = await _not_found(bob.GetWorkflow(ws.GetWorkflowRequest(workflow_id=wf.workflow_id)))
        info, _ = rpc_errors.details_of(exc)
        assert info is not None and info.reason == "ERROR_REASON_WORKFLOW_NOT_FOUND"
        missing = await _not_found(bob.GetWorkflow(ws.GetWorkflowRequest(workflow_id="wf-does-not-exist")))
        # The same answer as for an id that never existed, but for the id itself.
        theirs = (exc.details() or "").replace(wf.workflow_id, "X")
        assert theirs == (missing.details() or "").replace("wf-does-not-exist", "X")
        await _not_found(
            bob.CancelWorkflow(
                ws.CancelWorkflowRequest(request_id="c", workflow_id=wf.workflow_id, reason="x")
            )
        )
        await _not_found(bob.ListWorkflowEvents(ws.ListWorkflowEventsRequest(workflow_id=wf.workflow_id)))
        await _not_found(
            bob.SignalWorkflow(
                ws.SignalWorkflowRequest(request_id="s", workflow_id=wf.workflow_id, signal_name="go")
            )
        )
        await _not_found(
            bob.RetryWorkflow(ws.RetryWorkflowRequest(request_id="r", workflow_id=wf.workflow_id))
        )
        await _not_found(
            bob.ResetWorkflow(
                ws.ResetWorkflowRequest(request_id="r", workflow_id=wf.workflow_id, step_name="probe-source")
            )
        )
        listed = await bob.ListWorkflows(ws.ListWorkflowsRequest())
        assert [w.workflow_id for w in listed.workflows] == [his.workflow.workflow_id]

        # Nothing happened to Alice's workflow; the admin sees both tenants.
        still = (await alice.GetWorkflow(ws.GetWorkflowRequest(workflow_id=wf.workflow_id))).workflow
        assert still.state != 0 and still.workflow_id == wf.workflow_id
        everyone = await workflow_service_pb2_grpc.WorkflowServiceStub(admin).ListWorkflows(
            ws.ListWorkflowsRequest()
        )
        assert {w.tenant for w in everyone.workflows} == {"acme", "globex"}
        # The tenant filter narrows what the caller sees; it never widens it.
        only = await workflow_service_pb2_grpc.WorkflowServiceStub(admin).ListWorkflows(
            ws.ListWorkflowsRequest(tenant="globex")
        )
        assert [w.workflow_id for w in only.workflows] == [his.workflow.workflow_id]
        peek = await bob.ListWorkflows(ws.ListWorkflowsRequest(tenant="acme"))
        assert list(peek.workflows) == []


async def test_jobs_of_another_tenant_do_not_exist_and_tenant_comes_from_identity(
    start_service: Callable[..., ServiceProcess], nats_url: str, tmp_path: Path
) -> None:
    stratum = start_service("stratum", "--nats", nats_url)
    agents = Agents(tmp_path)
    agents.start(stratum.target, "host-1")
    await wait_agents(stratum.target, 1)
    try:
        await _jobs_are_tenant_scoped(stratum.target)
    finally:
        agents.stop_all()


async def _jobs_are_tenant_scoped(target: str) -> None:
    async with (
        security_harness.channel(target, ALICE) as a,
        security_harness.channel(target, BOB) as b,
    ):
        alice = job_service_pb2_grpc.JobServiceStub(a)
        bob = job_service_pb2_grpc.JobServiceStub(b)
        sleeper = python_job("import time; time.sleep(60)")
        job = (await alice.SubmitJob(js.SubmitJobRequest(request_id="j1", spec=sleeper))).job
        assert job.spec.tenant == "acme"

        # A request naming another tenant is refused, and creates nothing.
        spec = python_job("pass")
        spec.tenant = "acme"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bob.SubmitJob(js.SubmitJobRequest(request_id=uuid.uuid4().hex, spec=spec))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, violations = rpc_errors.details_of(caught.value)
        assert [v.field for v in violations] == ["spec.tenant"]

        await _not_found(bob.GetJob(js.GetJobRequest(job_id=job.job_id)))
        await _not_found(bob.CancelJob(js.CancelJobRequest(request_id="c", job_id=job.job_id)))
        watch = bob.WatchJob(js.WatchJobRequest(job_id=job.job_id))
        with pytest.raises(grpc.aio.AioRpcError) as watched:
            async for _ in watch:
                pass
        assert watched.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await bob.ListJobs(js.ListJobsRequest())).jobs == []
        assert (await bob.ListJobs(js.ListJobsRequest(tenant="acme"))).jobs == []
        after = (await alice.GetJob(js.GetJobRequest(job_id=job.job_id))).job
        assert after.state not in TERMINAL and after.failure_reason == ""  # Bob's cancel did nothing
        await alice.CancelJob(js.CancelJobRequest(request_id="c", job_id=job.job_id))
