"""Plato processes killed at random moments, and several Plato processes sharing the work."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import security_harness
from plato_harness import PlatoClient
from servers import wait_serving

from cosmos.plato.v1 import events_pb2, workflow_pb2, workflow_service_pb2_grpc
from cosmos.runtime.config import free_port
from cosmos.sdk import StepContext, Worker

ET = events_pb2.WorkflowEventType
FANOUT = """\
workflow:
  id: crash-fanout
  rules:
    - when: workflow.started
      do: [prepare]
    - when: prepare.completed
      do:
        - fanout: {for: each item in input.items, run: work}
    - when: all work.completed
      do: [finish]
"""


class PlatoProcess:
    started: ClassVar[list[PlatoProcess]] = []

    def __init__(self, nats_url: str, log: Path) -> None:
        self.target = f"127.0.0.1:{free_port()}"
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cosmos.cli",
                "plato",
                "--listen",
                self.target,
                "--nats",
                nats_url,
                *security_harness.service_args("plato"),
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        PlatoProcess.started.append(self)

    async def ready(self) -> None:
        await asyncio.to_thread(wait_serving, self.target, "", 30.0, self.proc)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._out.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._out.close()
        return code

    def finished_workflows(self) -> set[str]:
        ids = set()
        for line in self.log.read_text().splitlines():
            if line.startswith("{") and '"workflow finished"' in line:
                ids.add(json.loads(line)["workflow_id"])
        return ids

    def complaints(self, last: int = 15) -> list[str]:
        """The log's last warnings and errors (for a failing test's message)."""
        lines = [
            line for line in self.log.read_text().splitlines() if '"WARNING"' in line or '"ERROR"' in line
        ]
        return lines[-last:]


async def wait_all(
    client: PlatoClient, workflow_ids: list[str], processes: list[PlatoProcess], timeout: float = 120
) -> None:
    """Every workflow ended; if one does not, fail saying where it stands and what the servers logged."""
    for wf_id in workflow_ids:
        try:
            await client.wait(wf_id, timeout=timeout)
        except TimeoutError:
            wf = await client.get(wf_id)
            steps = [f"{s.step_id}#{s.attempt}:{workflow_pb2.StepState.Name(s.state)}" for s in wf.steps]
            logs = [line for p in processes for line in p.complaints()]
            pytest.fail(
                f"workflow {wf_id} still {workflow_pb2.WorkflowState.Name(wf.state)} after {timeout}s; "
                f"steps {steps}; server warnings:\n" + "\n".join(logs)
            )


@pytest.fixture(autouse=True)
def no_leftover_plato() -> Iterator[None]:
    yield
    while PlatoProcess.started:
        process = PlatoProcess.started.pop()
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def counting_worker(nats_url: str, seen: Counter[str]) -> Worker:
    worker = Worker(nats_url, tls=security_harness.worker_tls())

    async def handle(step: StepContext) -> dict[str, Any]:
        seen[step.idempotency_key] += 1
        await asyncio.sleep(random.uniform(0, 0.05))
        return {"item": step.input.get("item"), "attempt": step.attempt}

    for queue in ("prepare", "work", "finish"):
        worker.handler(queue)(handle)
    return worker


async def complete_history(
    client: PlatoClient, wf_id: str, timeout: float = 60
) -> list[events_pb2.WorkflowEvent]:
    """The history once it holds WORKFLOW_COMPLETED: a crash between saving the record and publishing
    its events leaves the history behind the record until the inputs are redelivered (ack_wait)."""

    async def poll() -> list[events_pb2.WorkflowEvent]:
        while True:
            events = await client.history(wf_id)
            if any(e.type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED for e in events):
                return events
            await asyncio.sleep(0.2)

    return await asyncio.wait_for(poll(), timeout)


async def check_histories(client: PlatoClient, workflow_ids: list[str]) -> None:
    for wf_id in workflow_ids:
        wf = await client.get(wf_id)
        assert wf.state == workflow_pb2.WORKFLOW_STATE_COMPLETED, (wf_id, wf.failure_reason)
        events = await complete_history(client, wf_id)
        # History is consistent: every sequence number exactly once, in order, no gaps.
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), wf_id
        completions = Counter(e.step_id for e in events if e.type == ET.WORKFLOW_EVENT_TYPE_STEP_COMPLETED)
        # No step's completion applied twice: each of the 5 step instances completed exactly once.
        assert sorted(completions) == ["finish", "prepare", "work[0]", "work[1]", "work[2]"], wf_id
        assert set(completions.values()) == {1}, (wf_id, completions)
        assert sum(e.type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED for e in events) == 1


@pytest.mark.slow
async def test_fifty_workflows_survive_repeated_kill_9_of_plato(
    nats_url: str, tmp_path: Path, run_worker: Callable[[Worker], None]
) -> None:
    rng = random.Random(7)
    plato = PlatoProcess(nats_url, tmp_path / "plato-0.log")
    await plato.ready()
    seen: Counter[str] = Counter()
    async with security_harness.channel(plato.target) as channel:
        client = PlatoClient(
            plato.target, nats_url, channel, workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        )
        await client.register(FANOUT)
        workflow_ids = [await client.start("crash-fanout", {"items": ["a", "b", "c"]}) for _ in range(50)]
    run_worker(counting_worker(nats_url, seen))

    for round_ in range(1, 5):
        await asyncio.sleep(rng.uniform(0.1, 0.8))
        plato.kill()
        plato = PlatoProcess(nats_url, tmp_path / f"plato-{round_}.log")
        await plato.ready()

    async with security_harness.channel(plato.target) as channel:
        client = PlatoClient(
            plato.target, nats_url, channel, workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        )
        await wait_all(client, workflow_ids, [plato])
        await check_histories(client, workflow_ids)
    assert plato.stop() == 0
    # At-least-once delivery may hand a task to a handler twice around a crash, but never a result twice.
    assert len(seen) == 50 * 5


async def test_two_plato_processes_share_the_work_and_never_double_advance(
    nats_url: str, tmp_path: Path, run_worker: Callable[[Worker], None]
) -> None:
    first = PlatoProcess(nats_url, tmp_path / "plato-a.log")
    second = PlatoProcess(nats_url, tmp_path / "plato-b.log")
    await first.ready()
    await second.ready()
    seen: Counter[str] = Counter()
    run_worker(counting_worker(nats_url, seen))
    async with security_harness.channel(first.target) as a, security_harness.channel(second.target) as b:
        clients = [
            PlatoClient(first.target, nats_url, a, workflow_service_pb2_grpc.WorkflowServiceStub(a)),
            PlatoClient(second.target, nats_url, b, workflow_service_pb2_grpc.WorkflowServiceStub(b)),
        ]
        await clients[0].register(FANOUT)
        workflow_ids = await asyncio.gather(
            *(clients[i % 2].start("crash-fanout", {"items": ["a", "b", "c"]}) for i in range(40))
        )
        await wait_all(clients[0], list(workflow_ids), [first, second])
        await check_histories(clients[1], list(workflow_ids))
    assert first.stop() == 0 and second.stop() == 0
    by_first, by_second = first.finished_workflows(), second.finished_workflows()
    assert by_first and by_second, "both processes advance workflows"
    assert not by_first & by_second
    assert by_first | by_second == set(workflow_ids)
