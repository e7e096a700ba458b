"""An encode followed by ``cosmos encode`` completes while Stratum, Optimus and Plato are killed and
restarted under it: no step fails for it, and the CLI's progress watch reconnects."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from encode_harness import embedded_stack, make_clip
from rich.console import Console

from cosmos.cli import encode as cli
from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.stack.embedded import EmbeddedStack
from cosmos.stratum.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "long.mp4", seconds=12, size="640x360", fps=24)


async def restart(stack: EmbeddedStack, name: str) -> None:
    """kill -9 the component ``name`` and start it again, as `cosmos up`'s supervisor would."""
    (child,) = [c for c in stack.children if c.name == name]
    os.kill(child.pid, signal.SIGKILL)
    assert child.process is not None
    await child.process.wait()
    await asyncio.sleep(1.0)  # it stays away for a moment
    await child.start()


async def a_chunk_job_runs(stack: EmbeddedStack, timeout: float = 120) -> None:
    async with stack.context().channel("stratum") as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        for _ in range(int(timeout / 0.1)):
            listed = await jobs.ListJobs(job_service_pb2.ListJobsRequest(state=job_pb2.JOB_STATE_RUNNING))
            if any("encode" in j.spec.argv for j in listed.jobs):
                return
            await asyncio.sleep(0.1)
    raise AssertionError("no chunk encode ran")


@pytest.mark.slow
async def test_an_encode_survives_restarts_of_stratum_optimus_and_plato(
    long_clip: Path, tmp_path: Path
) -> None:
    async with embedded_stack(tmp_path / "data") as stack:
        console = Console(record=True, width=300)
        argv = [str(long_clip), "--profiles", "360p", "--out", "ladder", "--quality", "off", "--json"]
        args = cli.parser().parse_args(argv)
        encoding = asyncio.create_task(cli.run_encode(args, console, stack.context()))
        await a_chunk_job_runs(stack)
        for name in ("stratum", "optimus", "plato"):
            await restart(stack, name)
        code = await asyncio.wait_for(encoding, 300)
        async with stack.context().channel("plato") as channel:
            workflows = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
            listed = await workflows.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest())
    assert code == 0, console.export_text()
    (workflow,) = listed.workflows
    assert workflow.state == workflow_pb2.WORKFLOW_STATE_COMPLETED
    # Nothing failed because a service was away: every step ran once.
    assert {s.attempt for s in workflow.steps} == {1}, [(s.step_id, s.attempt) for s in workflow.steps]
    published = tmp_path / "data" / "storage" / "default" / "ladder"
    assert json.loads((published / ".cosmos-publish.json").read_text())
