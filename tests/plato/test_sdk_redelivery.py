"""SDK workers and redelivery: a handler that outlives ``ack_wait`` keeps its task, a redelivered task
whose attempt is over is acknowledged without running its handler, and a stale completion is ignored."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import nats
import security_harness
from plato_harness import PlatoClient

from cosmos.plato.v1 import events_pb2, workflow_pb2
from cosmos.protocol import inputs, subjects
from cosmos.sdk import StepContext, Worker, WorkerConfig

WS = workflow_pb2.WorkflowState
SLOW = """\
workflow:
  id: slow-step
  rules:
    - when: workflow.started
      do: [slow]
"""
TIMED = """\
workflow:
  id: timed-step
  steps:
    stuck:
      timeout: {startToClose: 2s}
      retry: {max: 2, initialInterval: 1s}
  rules:
    - when: workflow.started
      do: [stuck]
"""


async def queue_settled(nats_url: str, queue: str, timeout: float = 60) -> None:
    """Until the queue's consumer has nothing pending or unacknowledged."""
    nc = await nats.connect(nats_url, **security_harness.nats_options())
    try:
        js = nc.jetstream()
        for _ in range(int(timeout / 0.2)):
            info = await js.consumer_info(subjects.TASKS_STREAM, subjects.queue_consumer(queue))
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"queue {queue} still has work: {info}")
    finally:
        await nc.close()


async def test_a_handler_longer_than_ack_wait_runs_once(plato: PlatoClient, nats_url: str) -> None:
    await plato.register(SLOW)
    calls: Counter[str] = Counter()
    config = WorkerConfig(ack_wait=1.5)
    workers = [Worker(nats_url, config, tls=security_harness.worker_tls()) for _ in range(2)]

    async def slow(step: StepContext) -> dict[str, Any]:
        calls[step.idempotency_key] += 1
        await asyncio.sleep(5)  # more than three ack_waits, no heartbeat
        return {"done": True}

    stopping = asyncio.Event()
    for worker in workers:
        worker.handler("slow")(slow)
    running = [asyncio.create_task(w.run(stopping)) for w in workers]
    try:
        wf = await plato.wait(await plato.start("slow-step"), timeout=60)
        assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
        await queue_settled(nats_url, "slow")
    finally:
        stopping.set()
        await asyncio.gather(*running)
    assert list(calls.values()) == [1], calls  # the lease was kept: no second worker ran it


async def test_a_redelivered_task_of_a_finished_attempt_does_not_run_again(
    plato: PlatoClient, nats_url: str
) -> None:
    await plato.register(TIMED)
    calls: Counter[str] = Counter()
    release = asyncio.Event()

    async def stuck(step: StepContext) -> dict[str, Any]:
        calls[step.idempotency_key] += 1
        if step.attempt == 1:
            await release.wait()  # times out in Plato; attempt 2 completes the workflow
        return {"attempt": step.attempt}

    config = WorkerConfig(ack_wait=2.0)
    first = Worker(nats_url, config, tls=security_harness.worker_tls())
    first.handler("stuck")(stuck)
    stop_first = asyncio.Event()
    serving = asyncio.create_task(first.run(stop_first, finish_running=False))
    wf_id = await plato.start("timed-step")
    wf = await plato.wait(wf_id, timeout=60)
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    assert wf.steps[0].attempt == 2
    # The worker goes away with attempt 1's task unacknowledged: JetStream redelivers it.
    stop_first.set()
    await serving
    second = Worker(nats_url, config, tls=security_harness.worker_tls())
    second.handler("stuck")(stuck)
    stop_second = asyncio.Event()
    serving = asyncio.create_task(second.run(stop_second))
    try:
        await queue_settled(nats_url, "stuck")
    finally:
        stop_second.set()
        await serving
    assert calls == Counter({f"{wf_id}/{wf.steps[0].step_id}/1": 1, f"{wf_id}/{wf.steps[0].step_id}/2": 1})


async def test_a_completion_for_a_finished_step_is_acknowledged_and_ignored(
    plato: PlatoClient, nats_url: str, run_worker: Any
) -> None:
    await plato.register(SLOW)
    worker = Worker(nats_url, tls=security_harness.worker_tls())
    tasks: list[events_pb2.StepTask] = []

    @worker.handler("slow")
    async def quick(step: StepContext) -> dict[str, Any]:
        tasks.append(step.task)
        return {"n": 1}

    run_worker(worker)
    wf_id = await plato.start("slow-step")
    done = await plato.wait(wf_id, timeout=60)
    assert done.state == WS.WORKFLOW_STATE_COMPLETED
    (task,) = tasks
    # The same attempt reports again (a worker that crashed before its ack, say): a new message id.
    inp, _ = inputs.result(
        task.workflow_id, task.step_id, task.attempt, output={"n": 2}, task_token=task.task_token
    )
    nc = await nats.connect(nats_url, **security_harness.nats_options(security_harness.worker_tls()))
    try:
        await nc.jetstream().publish(
            subjects.report(wf_id), inp.SerializeToString(), headers={"Nats-Msg-Id": "again"}
        )
    finally:
        await nc.close()
    # Plato acknowledges it (the inbox, a work queue, empties) and changes nothing.
    probe = await nats.connect(nats_url, **security_harness.nats_options())
    try:
        js = probe.jetstream()
        for _ in range(300):
            info = await js.consumer_info(subjects.INBOX_STREAM, subjects.ENGINE_CONSUMER)
            if info.num_pending == 0 and info.num_ack_pending == 0 and info.num_redelivered == 0:
                break
            await asyncio.sleep(0.1)
        assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0), info
    finally:
        await probe.close()
    after = await plato.get(wf_id)
    assert after.state == WS.WORKFLOW_STATE_COMPLETED
    assert after.steps[0].output == done.steps[0].output and after.update_time == done.update_time
