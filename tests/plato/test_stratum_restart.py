"""Job steps survive Stratum going away: the runner waits for it, never fails the step for it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import security_harness
from plato_harness import PlatoClient
from stratum_harness import JS, Agents, JobsClient, Stratum, wait_agents

from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2_grpc
from cosmos.protocol import values
from cosmos.stratum.v1 import job_service_pb2

WS = workflow_pb2.WorkflowState

NAP = "import json, os, sys, time; time.sleep(float(sys.argv[1])); json.dump({'slept': sys.argv[1]}, open(os.environ['COSMOS_RESULT_FILE'], 'w'))"  # noqa: E501
DEFINITION = f"""\
workflow:
  id: nap
  steps:
    nap:
      job:
        argv: ["{sys.executable}", "-c", "{NAP}", "${{input.seconds}}"]
        resources: {{cpuMillis: 100}}
      retry: {{max: 3, initialInterval: 1s}}
  rules:
    - when: workflow.started
      do: [nap]
"""


async def wait_running_job(target: str) -> None:
    jobs = JobsClient.connect(target)
    try:
        for _ in range(600):
            reply = await jobs.stub.ListJobs(job_service_pb2.ListJobsRequest(state=JS.JOB_STATE_RUNNING))
            if reply.jobs:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("no job RUNNING")
    finally:
        await jobs.channel.close(None)


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
async def test_job_steps_complete_across_a_stratum_restart_without_a_step_retry(
    start_service: Callable[..., Any], nats_url: str, agents: Agents, tmp_path: Path, how: str
) -> None:
    stratum = Stratum(nats_url, tmp_path / "stratum.log", "--lease-seconds", "10")
    stratum.start()
    try:
        plato = start_service("plato", "--nats", nats_url, "--stratum", stratum.target)
        agents.start(stratum.target, "host")
        await wait_agents(stratum.target, 1)
        async with security_harness.channel(plato.target) as channel:
            client = PlatoClient(
                plato.target, nats_url, channel, workflow_service_pb2_grpc.WorkflowServiceStub(channel)
            )
            await client.register(DEFINITION)
            running = await client.start("nap", {"seconds": 4})
            await wait_running_job(stratum.target)
            if how == "sigterm":
                assert stratum.stop() == 0
            else:
                stratum.kill()
            # Started while Stratum is away: its step waits for Stratum rather than failing.
            waiting = await client.start("nap", {"seconds": 0})
            await asyncio.sleep(2)
            stratum.start()
            for workflow_id in (running, waiting):
                wf = await client.wait(workflow_id, timeout=90)
                assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
                (step,) = wf.steps
                assert step.attempt == 1  # no step failure, no retry
            first = values.struct_to_dict((await client.get(running)).steps[0].output)
            assert first["job"]["attempt"] == 1  # the running job was kept, not run again
    finally:
        stratum.close()
