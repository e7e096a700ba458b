"""Each rule kind against a real NATS and a real Plato process, with SDK handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from plato_harness import CARD_WORKFLOW, PlatoClient, event_names

from cosmos.plato.v1 import events_pb2, workflow_pb2
from cosmos.sdk import StepContext, StepError, Worker

WS = workflow_pb2.WorkflowState
ET = events_pb2.WorkflowEventType


def card_worker(
    plato: PlatoClient, *, fail_profile: str = "", encode_delay: dict[str, float] | None = None
) -> Worker:
    worker = Worker(plato.nats_url)
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
    wf_id = await plato.start(
        "encode-workflow-v3", {"sourceUri": "file:///in.mp4", "profiles": ["1080p", "720p", "360p"]}
    )
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    steps = {s.step_id: s for s in wf.steps}
    assert sorted(steps) == [
        "encode-segment[0]", "encode-segment[1]", "encode-segment[2]", "mux-final", "probe-source", "publish-manifest",
    ]  # fmt: skip
    assert [steps[f"encode-segment[{i}]"].output["profile"] for i in range(3)] == ["1080p", "720p", "360p"]

    names = event_names(await plato.history(wf_id))
    assert names[0] == "WORKFLOW_STARTED" and names[-1] == "WORKFLOW_COMPLETED"
    # Fan-in: mux-final is scheduled only after the slow 1080p instance completed; then the ordered list.
    assert names.index("STEP_SCHEDULED mux-final") > names.index("STEP_COMPLETED encode-segment[0]")
    assert names.index("STEP_SCHEDULED publish-manifest") > names.index("STEP_COMPLETED mux-final")
    assert names.count("STEP_SCHEDULED mux-final") == 1
    assert worker.calls["encode-segment"] and "notify-oncall" not in worker.calls  # type: ignore[attr-defined]
