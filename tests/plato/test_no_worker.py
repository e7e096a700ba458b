"""A step waiting on a task queue that no worker polls is visible: ``no_worker_since_time`` on
GetWorkflow, and "no worker for step X for N s" in ``cosmos workflows show``; a worker that comes
clears it and the workflow finishes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats.js.errors
import security_harness
import yaml
from plato_harness import PlatoClient

from cosmos.plato import pollers
from cosmos.plato.v1 import workflow_pb2
from cosmos.sdk import StepContext, Worker

SS = workflow_pb2.StepState
WS = workflow_pb2.WorkflowState
COSMOS = str(Path(sys.executable).parent / "cosmos")

TWO_STEPS = """
workflow:
  id: two-steps
  rules:
    - when: workflow.started
      do: [first]
    - when: first.completed
      do: [second]
"""


def worker_for(plato: PlatoClient, *queues: str) -> Worker:
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())
    for queue in queues:

        async def handle(step: StepContext) -> dict[str, Any]:
            return {"ok": True}

        worker.handler(queue)(handle)
    return worker


async def step_of(plato: PlatoClient, wf_id: str, step_id: str) -> workflow_pb2.StepExecution:
    wf = await plato.get(wf_id)
    return next(s for s in wf.steps if s.step_id == step_id)


async def test_a_step_nobody_polls_is_marked_and_shown_then_cleared_by_a_worker(
    plato: PlatoClient, run_worker: Callable[[Worker], None], tmp_path: Path
) -> None:
    await plato.register(TWO_STEPS)
    run_worker(worker_for(plato, "first"))  # nothing serves "second"
    wf_id = await plato.start("two-steps", {})
    for _ in range(200):
        wf = await plato.get(wf_id)
        second = [s for s in wf.steps if s.step_id == "second"]
        if second and second[0].HasField("no_worker_since_time"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"second never marked: {wf}")
    first = next(s for s in wf.steps if s.step_id == "first")
    assert first.state == SS.STEP_STATE_COMPLETED and not first.HasField("no_worker_since_time")
    assert first.task_queue == "first"
    assert second[0].state == SS.STEP_STATE_SCHEDULED and second[0].task_queue == "second"
    assert second[0].no_worker_since_time.ToNanoseconds() >= second[0].schedule_time.ToNanoseconds()

    # The CLI says it in words.
    files = security_harness.admin()
    config = tmp_path / "config.yaml"
    context = {
        "endpoints": {"plato": plato.target},
        "ca": str(files.ca),
        "cert": str(files.cert),
        "key": str(files.key),
    }
    config.write_text(yaml.safe_dump({"current-context": "t", "contexts": {"t": context}}))
    env = {**os.environ, "COSMOS_CONFIG": str(config), "COLUMNS": "200"}
    shown = await asyncio.to_thread(
        subprocess.run,
        [COSMOS, "workflows", "show", wf_id],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "no worker for step second for " in shown.stdout and "'second'" in shown.stdout, shown.stdout

    # A worker for the queue: the mark goes, the workflow completes.
    run_worker(worker_for(plato, "second"))
    assert (await plato.wait(wf_id)).state == WS.WORKFLOW_STATE_COMPLETED
    assert not (await step_of(plato, wf_id, "second")).HasField("no_worker_since_time")


async def test_a_polled_queue_is_never_marked(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    # A worker that polls "second" but takes its time: the step waits on a polled queue (RUNNING soon,
    # never marked while SCHEDULED either).
    await plato.register(TWO_STEPS)
    run_worker(worker_for(plato, "first", "second"))
    await asyncio.sleep(1.0)  # the worker's consumers exist and poll
    wf_id = await plato.start("two-steps", {})
    while (wf := await plato.get(wf_id)).state != WS.WORKFLOW_STATE_COMPLETED:
        assert not any(s.HasField("no_worker_since_time") for s in wf.steps), wf
        await asyncio.sleep(0.05)


class FakeJs:
    """consumer_info answers from a script: a number of pending pulls per look, or "absent"."""

    def __init__(self, looks: list[int | str]) -> None:
        self.looks = looks
        self.asked = 0

    async def consumer_info(self, stream: str, consumer: str, timeout: float = 0) -> Any:
        look = self.looks[min(self.asked, len(self.looks) - 1)]
        self.asked += 1
        if look == "absent":
            raise nats.js.errors.NotFoundError()
        return SimpleNamespace(num_waiting=look, num_ack_pending=0)


async def test_a_worker_between_two_pulls_is_not_reported_missing() -> None:
    # No pull pending for an instant, then one: polled, after a second look.
    js = FakeJs([0, 1])
    assert await pollers.Pollers(lambda: js, now=lambda: 1000.0).unpolled_since("q", 990.0) is None  # type: ignore[arg-type, return-value]
    assert js.asked == 2
    # No consumer: no worker, said at once, since the step was scheduled.
    js = FakeJs(["absent"])
    assert await pollers.Pollers(lambda: js, now=lambda: 1000.0).unpolled_since("q", 990.0) == 990.0  # type: ignore[arg-type, return-value]
    assert js.asked == 1
    # A consumer nobody pulls from, three looks in a row: no worker.
    js = FakeJs([0, 0, 0])
    assert await pollers.Pollers(lambda: js, now=lambda: 1000.0).unpolled_since("q", 990.0) == 990.0  # type: ignore[arg-type, return-value]
    assert js.asked == 3
