"""The SDK's workflow watch survives a kill -9 of Plato: every event once, in order, to the end."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import security_harness
from plato_harness import PlatoClient
from servers import ServiceProcess, wait_serving

from cosmos.plato.v1 import events_pb2, workflow_service_pb2_grpc
from cosmos.sdk import StepContext, Worker, watch_workflow

ET = events_pb2.WorkflowEventType
GATED = """\
workflow:
  id: gated
  rules:
    - when: workflow.started
      do: [gate]
    - when: gate.completed
      do: [after]
"""


async def test_watch_workflow_resumes_after_a_plato_restart(
    start_service: Callable[..., Any], nats_url: str, run_worker: Any, tmp_path: Path
) -> None:
    plato = start_service("plato", "--nats", nats_url)
    opened = asyncio.Event()
    worker = Worker(nats_url, tls=security_harness.worker_tls())

    @worker.handler("gate")
    async def gate(step: StepContext) -> dict[str, Any]:
        await opened.wait()
        return {}

    @worker.handler("after")
    async def after(step: StepContext) -> dict[str, Any]:
        return {}

    run_worker(worker)
    async with security_harness.channel(plato.target) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        client = PlatoClient(plato.target, nats_url, channel, stub)
        await client.register(GATED)
        wf_id = await client.start("gated")
        seen: list[events_pb2.WorkflowEvent] = []

        async def watch() -> None:
            async for event in watch_workflow(stub, wf_id):
                seen.append(event)

        watching = asyncio.create_task(watch())
        for _ in range(600):
            if any(e.type == ET.WORKFLOW_EVENT_TYPE_STEP_SCHEDULED for e in seen):
                break
            await asyncio.sleep(0.05)
        plato.proc.send_signal(signal.SIGKILL)
        plato.proc.wait()
        await asyncio.sleep(1.0)
        again = ServiceProcess(list(plato.proc.args), plato.target, tmp_path / "plato-again.log")
        try:
            await asyncio.to_thread(wait_serving, plato.target, "", 30.0, again.proc)
            opened.set()
            await asyncio.wait_for(watching, 60)
            history = await client.history(wf_id)
        finally:
            again.stop()
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))  # none lost, none twice
    assert seen[-1].type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED
    assert [e.event_id for e in seen] == [e.event_id for e in history]
