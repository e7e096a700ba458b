"""Workflows of any size (issue 12, point 1): real NATS, a real Plato process, SDK workers.

A workflow's state is a header plus a record per step and blobs (docs/plato.md, "Workflow state"), so
neither a wide fan-out nor large step outputs meet the 1 MB of one NATS message; values past the
documented limits are refused at the boundary instead of wedging a workflow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import security_harness
from plato_harness import TERMINAL, PlatoClient

from cosmos.plato import limits
from cosmos.plato.v1 import events_pb2, workflow_pb2, workflow_service_pb2
from cosmos.protocol import values
from cosmos.runtime import rpc_errors
from cosmos.sdk import StepContext, Worker, WorkerConfig

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
MB = 1_000_000

WIDE = """\
workflow:
  id: wide-fan-out
  limits: {maxSteps: 10001}
  rules:
    - when: workflow.started
      do:
        - fanout: {for: each item in input.items, run: work, maxConcurrency: 500}
    - when: all work.completed
      do: [finish]
  steps:
    work:
      input: {item: "${item}"}
    finish:
      input: {count: "${input.count}"}
"""

BIG_VALUES = """\
workflow:
  id: big-values
  rules:
    - when: workflow.started
      do: [produce]
    - when: produce.completed
      do: [relay]
    - when: relay.completed
      do: [consume]
  steps:
    produce:
      input: {size: "${input.size}"}
    relay:
      input: {data: "${steps.produce.output.data}"}
    consume:
      input: {data: "${steps.relay.output.data}"}
"""

EMPTY_FAN_OUT = """\
workflow:
  id: empty-fan-out-{form}
  rules:
    - when: workflow.started
      do: [prepare]
{rules}
"""
RULE_FORM = """\
    - when: prepare.completed
      do:
        - fanout: {for: each item in input.items, run: work}
    - when: all work.completed
      do: [finish]"""
SEQUENCE_FORM = """\
    - when: prepare.completed
      do:
        - fanout: {for: each item in input.items, run: work}
        - finish"""


async def wait_slowly(plato: PlatoClient, workflow_id: str, timeout: float) -> workflow_pb2.Workflow:
    """Wait for the end polling every 2 s: each GetWorkflow of a wide workflow reads all its steps."""

    async def poll() -> workflow_pb2.Workflow:
        while True:
            wf = await plato.get(workflow_id)
            if wf.state in TERMINAL:
                return wf
            await asyncio.sleep(2.0)

    return await asyncio.wait_for(poll(), timeout)


async def test_a_10000_item_fan_out_with_max_concurrency_500_completes(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    worker = Worker(
        plato.nats_url, WorkerConfig(concurrency=500, fetch_batch=256), security_harness.worker_tls()
    )
    seen: set[int] = set()

    @worker.handler("work")
    async def work(step: StepContext) -> dict[str, Any]:
        seen.add(step.input["item"])
        return {"double": step.input["item"] * 2}

    @worker.handler("finish")
    async def finish(step: StepContext) -> dict[str, Any]:
        return {"count": step.input["count"]}

    run_worker(worker)
    count = 10_000
    await plato.register(WIDE)
    workflow_id = await plato.start("wide-fan-out", {"items": list(range(count)), "count": count})
    done = await wait_slowly(plato, workflow_id, timeout=900)
    assert done.state == WS.WORKFLOW_STATE_COMPLETED, done.failure_reason
    assert seen == set(range(count))
    work_steps = [s for s in done.steps if s.step_name == "work"]
    assert len(work_steps) == count and all(s.state == SS.STEP_STATE_COMPLETED for s in work_steps)
    assert [values.struct_to_dict(s.output)["double"] for s in work_steps[:3]] == [0, 2, 4]
    assert values.struct_to_dict(done.output) == {"finish": {"count": count}}


async def test_1_mb_step_outputs_flow_between_steps_and_the_state_outgrows_a_message(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())

    @worker.handler("produce")
    async def produce(step: StepContext) -> dict[str, Any]:
        return {"data": "p" * step.input["size"]}

    @worker.handler("relay")
    async def relay(step: StepContext) -> dict[str, Any]:
        return {"data": step.input["data"].replace("p", "r")}

    @worker.handler("consume")
    async def consume(step: StepContext) -> dict[str, Any]:
        data = step.input["data"]
        return {"bytes": len(data), "relayed": set(data) == {"r"}}

    run_worker(worker)
    await plato.register(BIG_VALUES)
    # Two values of 1 MB in outputs and two more in inputs: ~4 MB of state, four NATS messages' worth.
    workflow_id = await plato.start("big-values", {"size": MB})
    done = await plato.wait(workflow_id, timeout=120)
    assert done.state == WS.WORKFLOW_STATE_COMPLETED, done.failure_reason
    assert values.struct_to_dict(done.output) == {"consume": {"bytes": MB, "relayed": True}}
    by_name = {s.step_name: s for s in done.steps}
    assert [s.state for s in by_name.values()] == [SS.STEP_STATE_COMPLETED] * 3
    # GetWorkflow answers within its response budget: some of the large values are read back, the
    # rest say how large they are rather than growing the response past gRPC's 4 MiB.
    produced = values.struct_to_dict(by_name["produce"].output)
    assert produced.get("data") == "p" * MB or produced["omitted"]["bytes"] > MB
    # The history keeps a note of each large payload, not the payload.
    history = await plato.history(workflow_id)
    completed = [e for e in history if e.type == events_pb2.WORKFLOW_EVENT_TYPE_STEP_COMPLETED]
    assert values.struct_to_dict(completed[0].payload)["omitted"]["bytes"] > MB
    assert history[0].type == events_pb2.WORKFLOW_EVENT_TYPE_WORKFLOW_STARTED


async def test_a_start_too_big_is_refused_with_invalid_argument(plato: PlatoClient) -> None:
    await plato.register(BIG_VALUES)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await plato.start("big-values", {"size": 1, "padding": "x" * (limits.DEFAULT_MAX_VALUE_BYTES + 1)})
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, bad = rpc_errors.details_of(refused.value)
    assert [v.field for v in bad] == ["input"]
    assert "at most 1,032,192" in (refused.value.details() or "")
    listed = await plato.stub.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest())
    assert not listed.workflows  # nothing half-started was left behind


async def test_an_output_over_the_limit_fails_the_step_with_a_reason(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())
    calls = 0

    @worker.handler("produce")
    async def produce(step: StepContext) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"data": "p" * step.input["size"]}

    run_worker(worker)
    await plato.register(BIG_VALUES)
    workflow_id = await plato.start("big-values", {"size": 2 * MB})
    done = await plato.wait(workflow_id, timeout=60)
    assert done.state == WS.WORKFLOW_STATE_FAILED
    produce_step = done.steps[0]
    assert produce_step.state == SS.STEP_STATE_FAILED
    assert "exceeds the limit of 1,032,192 bytes" in produce_step.error
    assert "exceeds the limit" in done.failure_reason
    assert calls == 1  # not retried: no retry makes it fit


@pytest.mark.parametrize("form", ["rules", "sequence"])
async def test_an_empty_fan_out_fires_its_fan_in(
    plato: PlatoClient, run_worker: Callable[[Worker], None], form: str
) -> None:
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())
    for queue in ("prepare", "work", "finish"):
        worker.handler(queue)(_done)
    run_worker(worker)
    source = EMPTY_FAN_OUT.replace("{form}", form).replace(
        "{rules}", RULE_FORM if form == "rules" else SEQUENCE_FORM
    )
    await plato.register(source)
    empty = await plato.wait(await plato.start(f"empty-fan-out-{form}", {"items": []}), timeout=60)
    assert empty.state == WS.WORKFLOW_STATE_COMPLETED, empty.failure_reason
    assert [s.step_id for s in empty.steps] == ["prepare", "finish"]
    # A non-empty fan-out of the same definition still waits for its instances.
    full = await plato.wait(await plato.start(f"empty-fan-out-{form}", {"items": [1, 2]}), timeout=60)
    assert [s.step_id for s in full.steps] == ["prepare", "work[0]", "work[1]", "finish"]


async def _done(step: StepContext) -> dict[str, Any]:
    return {"step": step.task.step_id}
