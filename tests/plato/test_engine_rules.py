"""Each rule kind against a real NATS and a real Plato process, with SDK handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import security_harness
from plato_harness import CARD_WORKFLOW, PlatoClient, event_names

from cosmos.plato.v1 import events_pb2, workflow_pb2
from cosmos.protocol import values
from cosmos.sdk import StepContext, StepError, Worker

WS = workflow_pb2.WorkflowState
ET = events_pb2.WorkflowEventType


def card_worker(
    plato: PlatoClient, *, fail_profile: str = "", encode_delay: dict[str, float] | None = None
) -> Worker:
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())
    calls: dict[str, list[str]] = {}
    worker.calls = calls  # type: ignore[attr-defined]

    @worker.handler("probe-source")
    async def probe(step: StepContext) -> dict[str, Any]:
        calls.setdefault("probe-source", []).append(step.idempotency_key)
        return {"duration": 20.0, "source": step.input["input"]["sourceUri"]}

    @worker.handler("encode-segment")
    async def encode(step: StepContext) -> dict[str, Any]:
        profile = step.input["profile"]
        calls.setdefault("encode-segment", []).append(step.idempotency_key)
        await asyncio.sleep((encode_delay or {}).get(profile, 0.0))
        if profile == fail_profile:
            raise StepError(f"encoder crashed on {profile}")
        return {"profile": profile, "uri": f"file:///out/{profile}.mp4"}

    for name in ("mux-final", "publish-manifest", "notify-oncall"):

        def make(step_name: str) -> Callable[[StepContext], Any]:
            async def handle(step: StepContext) -> dict[str, Any]:
                calls.setdefault(step_name, []).append(step.idempotency_key)
                return {"done": step_name}

            return handle

        worker.handler(name)(make(name))
    return worker


async def test_card_workflow_runs_unchanged_with_fan_in_waiting_for_every_instance(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    assert await plato.register(CARD_WORKFLOW) == 1
    worker = card_worker(plato, encode_delay={"1080p": 1.0})
    run_worker(worker)
    profiles = ["1080p", "720p", "360p"]
    wf_id = await plato.start("encode-workflow-v3", {"sourceUri": "file:///in.mp4", "profiles": profiles})
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    steps = {s.step_id: s for s in wf.steps}
    fanned = [f"encode-segment[{i}]" for i in range(3)]
    assert sorted(steps) == [*fanned, "mux-final", "probe-source", "publish-manifest"]
    assert [steps[step_id].output["profile"] for step_id in fanned] == profiles

    names = event_names(await plato.history(wf_id))
    assert names[0] == "WORKFLOW_STARTED" and names[-1] == "WORKFLOW_COMPLETED"
    # Fan-in: mux-final is scheduled only after the slow 1080p instance completed; then the ordered list.
    assert names.index("STEP_SCHEDULED mux-final") > names.index("STEP_COMPLETED encode-segment[0]")
    assert names.index("STEP_SCHEDULED publish-manifest") > names.index("STEP_COMPLETED mux-final")
    assert names.count("STEP_SCHEDULED mux-final") == 1
    assert worker.calls["encode-segment"] and "notify-oncall" not in worker.calls  # type: ignore[attr-defined]


async def test_any_failed_retries_with_backoff_then_runs_on_exhausted_and_fails_with_reason(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    source = CARD_WORKFLOW.replace(
        "retry: {max: 3, backoff: exponential}",
        "retry: {max: 3, backoff: exponential, initialInterval: 200ms, maxInterval: 500ms, jitter: 0.1}",
    )
    await plato.register(source)
    worker = card_worker(plato, fail_profile="720p")
    run_worker(worker)
    wf_id = await plato.start(
        "encode-workflow-v3", {"sourceUri": "file:///in.mp4", "profiles": ["1080p", "720p"]}
    )
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_FAILED
    assert "encode-segment[1]" in wf.failure_reason and "encoder crashed on 720p" in wf.failure_reason
    assert "4 attempt(s)" in wf.failure_reason
    failed = next(s for s in wf.steps if s.step_id == "encode-segment[1]")
    assert failed.attempt == 4 and failed.state == workflow_pb2.STEP_STATE_FAILED
    # The other instance ran once; the onExhausted action ran; nothing after the failed fan-in ran.
    calls = worker.calls  # type: ignore[attr-defined]
    assert sum(1 for key in calls["encode-segment"] if "encode-segment[0]" in key) == 1
    assert len(calls["notify-oncall"]) == 1 and "mux-final" not in calls

    events = await plato.history(wf_id)
    retries = [e for e in events if e.type == ET.WORKFLOW_EVENT_TYPE_STEP_RETRY_SCHEDULED]
    payloads = [values.struct_to_dict(e.payload) for e in retries]
    assert [p["next_attempt"] for p in payloads] == [2, 3, 4]
    expected = [0.2, 0.4, 0.5]  # exponential from 200ms, capped at 500ms, ±10% jitter
    for event, payload, nominal in zip(retries, payloads, expected, strict=True):
        # The delay is recorded rounded to the millisecond, so the bounds allow half of one.
        assert nominal * 0.9 - 0.0005 <= payload["delay_seconds"] <= nominal * 1.1 + 0.0005
        # The next attempt was really held back for the delay (durable timer, not an immediate retry).
        scheduled = next(
            e for e in events
            if e.type == ET.WORKFLOW_EVENT_TYPE_STEP_SCHEDULED and e.step_id == event.step_id
            and e.attempt == payload["next_attempt"]
        )  # fmt: skip
        waited = (scheduled.event_time.ToDatetime() - event.event_time.ToDatetime()).total_seconds()
        assert waited >= payload["delay_seconds"] - 0.01


RUNAWAY = """\
workflow:
  id: runaway
  limits: {maxRuleFirings: 15}
  rules:
    - when: workflow.started
      do: [tick]
    - name: loop-forever
      when: tick.completed
      do: [tick]
"""


async def test_runaway_guard_fails_the_workflow_naming_the_rule(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(RUNAWAY)
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())

    @worker.handler("tick")
    async def tick(step: StepContext) -> dict[str, Any]:
        return {}

    run_worker(worker)
    wf = await plato.wait(await plato.start("runaway"))
    assert wf.state == WS.WORKFLOW_STATE_FAILED
    assert "runaway guard" in wf.failure_reason and "loop-forever" in wf.failure_reason
    assert "maxRuleFirings=15" in wf.failure_reason
    assert wf.rule_firings == 16  # the firing that tripped the guard is counted, not run


TIMEOUT = """\
workflow:
  id: timeout-{kind_id}
  steps:
    hang:
      timeout: {{{kind}: {limit}}}
  rules:
    - when: workflow.started
      do: [hang]
"""


async def test_start_to_close_and_heartbeat_timeouts_fire_and_cancel_the_handler(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(TIMEOUT.format(kind_id="starttoclose", kind="startToClose", limit="500ms"))
    await plato.register(TIMEOUT.format(kind_id="heartbeat", kind="heartbeat", limit="400ms"))
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())
    cancelled: list[str] = []

    @worker.handler("hang")
    async def hang(step: StepContext) -> dict[str, Any]:
        try:
            if step.task.definition_id == "timeout-heartbeat":
                await step.heartbeat(percent=10)  # alive once, then silent
            await asyncio.sleep(30)
        finally:
            if step.cancelled.is_set():
                cancelled.append(step.task.definition_id)
        return {}

    run_worker(worker)
    for kind, message in (
        ("startToClose", "startToClose timeout of 0.5s"),
        ("heartbeat", "heartbeat timeout of 0.4s"),
    ):
        wf = await plato.wait(await plato.start(f"timeout-{kind.lower()}"))
        assert wf.state == WS.WORKFLOW_STATE_FAILED
        assert message in wf.failure_reason
        assert wf.steps[0].state == workflow_pb2.STEP_STATE_TIMED_OUT
        names = event_names(await plato.history(wf.workflow_id))
        assert "STEP_TIMED_OUT hang" in names
        if kind == "heartbeat":
            assert "STEP_STARTED hang" in names and "STEP_HEARTBEAT hang" in names
    await asyncio.sleep(0.5)
    assert sorted(cancelled) == ["timeout-heartbeat", "timeout-starttoclose"]
