"""Job steps: a definition's ``job:`` template runs on Stratum through Plato's built-in runner."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import security_harness
from plato_harness import PlatoClient
from stratum_harness import Agents, wait_agents

from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2_grpc
from cosmos.protocol import values

WS = workflow_pb2.WorkflowState

WRITE = (
    "import json, os, sys; n = open('out.txt', 'w').write(sys.argv[1]); "
    "json.dump({'written': n}, open(os.environ['COSMOS_RESULT_FILE'], 'w'))"
)
JOBS = f"""\
workflow:
  id: job-steps
  steps:
    render:
      job:
        argv: ["{sys.executable}", "-c", "{WRITE}", "${{input.word}}"]
        outputs: [{{uri: "${{input.out}}", path: out.txt}}]
        resources: {{cpuMillis: 100}}
    broken:
      job:
        argv: ["{sys.executable}", "-c", "import sys; print('no luck', file=sys.stderr); sys.exit(3)"]
  rules:
    - when: workflow.started
      do: [render]
    - when: [render.completed, "input.fail == true"]
      do: [broken]
"""


async def test_job_steps_run_on_stratum_and_report_results_and_failures(
    start_service: Callable[..., Any], nats_url: str, agents: Agents, tmp_path: Path
) -> None:
    # tmp_path is the storage root; the workflow's tenant (the admin's, default) writes in tmp_path/default.
    roots = ("--storage-root", str(tmp_path))
    stratum = start_service("stratum", "--nats", nats_url, "--heartbeat-interval", "0.3", *roots)
    plato = start_service("plato", "--nats", nats_url, "--stratum", stratum.target)
    agents.start(stratum.target, "runner-host", *roots)
    await wait_agents(stratum.target, 1)
    async with security_harness.channel(plato.target) as channel:
        client = PlatoClient(
            plato.target, nats_url, channel, workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        )
        await client.register(JOBS)
        out = tmp_path / "default" / "result.txt"
        wf = await client.wait(
            await client.start("job-steps", {"word": "hello", "out": f"file://{out}", "fail": False})
        )
        assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
        assert out.read_text() == "hello"
        output = values.struct_to_dict(wf.steps[0].output)
        assert output["job"]["exit_code"] == 0 and output["job"]["agent_id"] == "runner-host"
        assert output["job"]["outputs"] == [{"uri": f"file://{out}", "path": "out.txt"}]
        assert output["written"] == 5  # the job's own result, from $COSMOS_RESULT_FILE

        failed = await client.wait(
            await client.start(
                "job-steps", {"word": "x", "out": f"file://{tmp_path / 'default' / 'x.txt'}", "fail": True}
            )
        )
        assert failed.state == WS.WORKFLOW_STATE_FAILED
        assert "broken" in failed.failure_reason and "exit" in failed.failure_reason
        assert "no luck" in failed.failure_reason
