"""Actions and the less common rule kinds: parallel groups, cartesian fan-out with a concurrency cap,
guards, templates, signals, child workflows, compensation, step-level retry and builtins."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import nats
import security_harness
from nats.aio.msg import Msg
from plato_harness import PlatoClient, event_names

from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2
from cosmos.protocol import values
from cosmos.sdk import StepContext, StepError, Worker

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState

ACTIONS = """\
workflow:
  id: actions
  steps:
    render:
      input: {res: "${res}", codec: "${codec}", src: "${steps.probe.output.uri}"}
  rules:
    - when: workflow.started
      do: [probe]
    - when: probe.completed and steps.probe.output.height >= 1080
      do:
        - fanout:
            for: [each res in input.resolutions, each codec in input.codecs]
            run: render
            maxConcurrency: 2
    - when: [probe.completed, "steps.probe.output.height < 1080"]
      do: [small]
    - when: all render.completed
      do:
        - parallel: [thumb, [package, publish]]
"""


def recording_worker(nats_url: str, queues: list[str], log: list[str]) -> Worker:
    worker = Worker(nats_url, tls=security_harness.worker_tls())
    for queue in queues:

        def make(name: str) -> Callable[[StepContext], Any]:
            async def handle(step: StepContext) -> dict[str, Any]:
                log.append(f"start {step.task.step_id}")
                await asyncio.sleep(0.05)
                log.append(f"end {step.task.step_id}")
                return {"step": name}

            return handle

        worker.handler(queue)(make(queue))
    return worker


async def test_cartesian_fanout_with_cap_guards_templates_parallel_and_sequence(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(ACTIONS)
    log: list[str] = []
    worker = recording_worker(plato.nats_url, ["thumb", "package", "publish", "small"], log)
    inflight = 0
    peak = 0
    rendered: list[dict[str, Any]] = []

    @worker.handler("probe")
    async def probe(step: StepContext) -> dict[str, Any]:
        return {"height": 1080, "uri": "file:///src.mov"}

    @worker.handler("render")
    async def render(step: StepContext) -> dict[str, Any]:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        rendered.append(step.input)
        await asyncio.sleep(0.2)
        inflight -= 1
        return {"file": f"{step.input['res']}-{step.input['codec']}"}

    run_worker(worker)
    wf = await plato.wait(
        await plato.start("actions", {"resolutions": ["1080p", "720p"], "codecs": ["h264", "av1"]})
    )
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    assert peak == 2  # maxConcurrency held, and was used
    assert [(r["res"], r["codec"]) for r in sorted(rendered, key=lambda r: (r["res"], r["codec"]))] == [
        ("1080p", "av1"), ("1080p", "h264"), ("720p", "av1"), ("720p", "h264"),
    ]  # fmt: skip
    assert {r["src"] for r in rendered} == {"file:///src.mov"}  # templated from the probe's output
    assert not any("small" in line for line in log)  # the guard kept the other rule from firing
    assert log.index("start publish") > log.index("end package")  # sequence inside the parallel group
    assert log.index("start thumb") < log.index("end package")  # thumb ran alongside


SIGNALS = """\
workflow:
  id: signals
  rules:
    - when: workflow.started
      do: [build]
    - when: build.completed and signal.approve and signals.approve.by == 'ops'
      do: [ship]
"""


async def test_signals_are_received_and_join_conditions(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(SIGNALS)
    release = asyncio.Event()
    worker = recording_worker(plato.nats_url, ["ship"], [])

    @worker.handler("build")
    async def build(step: StepContext) -> dict[str, Any]:
        await asyncio.wait_for(release.wait(), 30)
        return {}

    run_worker(worker)
    wf_id = await plato.start("signals")
    request = workflow_service_pb2.SignalWorkflowRequest(
        request_id=uuid.uuid4().hex, workflow_id=wf_id, signal_name="approve"
    )
    request.payload.update({"by": "ops"})
    await plato.stub.SignalWorkflow(request)
    await asyncio.sleep(0.3)
    release.set()
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED
    assert [s.step_id for s in wf.steps] == ["build", "ship"]
    assert "WORKFLOW_SIGNALED" in event_names(await plato.history(wf_id))


PARENT = """\
workflow:
  id: parent
  steps:
    sub:
      workflow: {id: child}
      input: {n: "${input.n}"}
  rules:
    - when: workflow.started
      do: [sub]
"""
CHILD = """\
workflow:
  id: child
  rules:
    - when: workflow.started
      do: [double]
"""


async def test_child_workflows_run_and_report_to_their_parent(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(CHILD)
    await plato.register(PARENT)
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())

    @worker.handler("double")
    async def double(step: StepContext) -> dict[str, Any]:
        return {"value": step.input["input"]["n"] * 2}

    run_worker(worker)
    wf = await plato.wait(await plato.start("parent", {"n": 21}))
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    sub = wf.steps[0]
    output = values.struct_to_dict(sub.output)
    assert output["output"] == {"double": {"value": 42}}
    child = await plato.get(sub.child_workflow_id)
    assert child.parent_workflow_id == wf.workflow_id and child.state == WS.WORKFLOW_STATE_COMPLETED


RECOVERY = """\
workflow:
  id: recovery
  steps:
    flaky:
      retry: {max: 2, backoff: fixed, initialInterval: 100ms}
  rules:
    - when: workflow.started
      do: [flaky, risky]
    - when: risky.failed
      do: [cleanup]
"""


async def test_step_retry_then_compensation_handles_a_failure(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(RECOVERY)
    worker = recording_worker(plato.nats_url, ["cleanup"], [])

    @worker.handler("flaky")
    async def flaky(step: StepContext) -> dict[str, Any]:
        if step.attempt < 3:
            raise StepError(f"transient {step.attempt}")
        return {"ok": True}

    @worker.handler("risky")
    async def risky(step: StepContext) -> dict[str, Any]:
        raise StepError("bad input", non_retryable=True)

    run_worker(worker)
    wf = await plato.wait(await plato.start("recovery"))
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    steps = {s.step_id: s for s in wf.steps}
    assert steps["flaky"].attempt == 3 and steps["flaky"].state == SS.STEP_STATE_COMPLETED
    assert steps["risky"].state == SS.STEP_STATE_FAILED and steps["risky"].error == "bad input"
    assert steps["cleanup"].state == SS.STEP_STATE_COMPLETED
    names = event_names(await plato.history(wf.workflow_id))
    assert names.count("STEP_RETRY_SCHEDULED flaky") == 2


BUILTINS = """\
workflow:
  id: builtins
  steps:
    pause:
      uses: timer
      with: {duration: "${input.wait}"}
    say:
      uses: log
      with: {message: "hello ${workflow.id}"}
    tell:
      uses: notify
      with: {channel: oncall, message: "done ${workflow.id}"}
  rules:
    - when: workflow.started
      do: [pause, say, tell]
"""


async def test_builtin_timer_log_and_notify_run_inside_plato(plato: PlatoClient) -> None:
    await plato.register(BUILTINS)
    nc = await nats.connect(plato.nats_url, **security_harness.nats_options())
    received: list[dict[str, Any]] = []

    async def collect(msg: Msg) -> None:
        received.append(json.loads(msg.data))

    await nc.subscribe("cosmos.notify.oncall", cb=collect)
    try:
        wf = await plato.wait(await plato.start("builtins", {"wait": "300ms"}))
    finally:
        await nc.close()
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    steps = {s.step_id: s for s in wf.steps}
    slept = (steps["pause"].close_time.ToDatetime() - steps["pause"].start_time.ToDatetime()).total_seconds()
    assert slept >= 0.29
    assert values.struct_to_dict(steps["say"].output)["message"] == f"hello {wf.workflow_id}"
    assert [m["message"] for m in received] == [f"done {wf.workflow_id}"]


SHARED = """\
workflow:
  id: shared-queue
  rules:
    - when: workflow.started
      do:
        - fanout: {for: each i in input.items, run: work}
"""


async def test_many_handler_processes_share_one_queue(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(SHARED)
    workers = [
        Worker(plato.nats_url, tls=security_harness.worker_tls()),
        Worker(plato.nats_url, tls=security_harness.worker_tls()),
    ]
    keys: list[str] = []
    for worker in workers:

        @worker.handler("work")
        async def work(step: StepContext) -> dict[str, Any]:
            keys.append(step.idempotency_key)
            await asyncio.sleep(0.05)
            return {}

        run_worker(worker)
    # Both pull from the start (on a loaded machine one could otherwise take every task alone).
    await asyncio.wait_for(asyncio.gather(*(w.subscribed.wait() for w in workers)), 30)
    wf = await plato.wait(await plato.start("shared-queue", {"items": list(range(40))}))
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED
    assert len(keys) == len(set(keys)) == 40  # each task went to exactly one handler
    assert all(worker.completed > 0 for worker in workers), [w.completed for w in workers]
