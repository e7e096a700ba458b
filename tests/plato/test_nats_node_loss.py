"""A NATS node killed (kill -9) while Plato runs workflows on a 3-node JetStream cluster (R3): every
workflow completes, each step completion applied once, and the node, restarted, catches up."""

from __future__ import annotations

import asyncio
import functools
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
import pytest
import security_harness
from nats.js import JetStreamContext
from nats_cluster import NatsCluster
from plato_harness import TERMINAL, PlatoClient

from cosmos.plato.v1 import events_pb2, workflow_pb2, workflow_service_pb2_grpc
from cosmos.protocol import subjects
from cosmos.runtime import jetstream
from cosmos.sdk import StepContext, Worker

# About a minute each on 2 cores: `make test` and CI run them, `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

ET = events_pb2.WorkflowEventType
T = TypeVar("T")
FANOUT = """\
workflow:
  id: node-loss-fanout
  rules:
    - when: workflow.started
      do: [prepare]
    - when: prepare.completed
      do:
        - fanout: {for: each item in input.items, run: work}
    - when: all work.completed
      do: [finish]
"""
WORKFLOWS = 30
PLATO_STREAMS = (
    subjects.INBOX_STREAM,
    subjects.EVENTS_STREAM,
    subjects.TASKS_STREAM,
    f"KV_{subjects.WORKFLOWS_BUCKET}",
    f"KV_{subjects.STEPS_BUCKET}",
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    started = NatsCluster(tmp_path / "nats")
    started.start()
    yield started
    started.stop()


def counting_worker(nats_url: str, seen: Counter[str], busy: asyncio.Event) -> Worker:
    """Counts handler calls per idempotency key; sets ``busy`` once WORKFLOWS steps have run."""
    worker = Worker(nats_url, tls=security_harness.worker_tls())

    async def handle(step: StepContext) -> dict[str, Any]:
        seen[step.idempotency_key] += 1
        if sum(seen.values()) >= WORKFLOWS:
            busy.set()
        await asyncio.sleep(random.uniform(0.01, 0.1))
        return {"item": step.input.get("item")}

    for queue in ("prepare", "work", "finish"):
        worker.handler(queue)(handle)
    return worker


async def retrying(call: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    """``call`` as the API asks clients to: UNAVAILABLE (NATS failing over) is retried; mutations keep
    their request_id, so a retry takes effect at most once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def start(client: PlatoClient, items: list[str]) -> str:
    request_id = uuid.uuid4().hex
    return await retrying(lambda: client.start("node-loss-fanout", {"items": items}, request_id=request_id))


async def wait_done(client: PlatoClient, wf_id: str, timeout: float = 120) -> workflow_pb2.Workflow:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        wf = await retrying(lambda: client.get(wf_id))
        if wf.state in TERMINAL:
            return wf
        assert loop.time() < deadline, f"{wf_id} still {wf.state}"
        await asyncio.sleep(0.1)


async def leader_of(js: JetStreamContext, stream: str) -> str:
    info = await js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader, stream
    return info.cluster.leader


async def caught_up(js: JetStreamContext, stream: str, node: str, timeout: float = 60) -> None:
    """Until the leader reports ``node`` a current replica of ``stream`` with no lag."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await js.stream_info(stream)
        assert info.cluster is not None
        peers = {p.name: p for p in info.cluster.replicas or []}
        if info.cluster.leader == node or (node in peers and peers[node].current and not peers[node].lag):
            return
        assert loop.time() < deadline, f"{node} not caught up on {stream}: {info.cluster}"
        await asyncio.sleep(0.25)


async def test_workflows_complete_while_a_nats_node_is_killed_and_it_catches_up(
    cluster: NatsCluster,
    start_service: Callable[..., Any],
    run_worker: Callable[[Worker], None],
) -> None:
    url = cluster.url
    plato = start_service("plato", "--nats", url, "--replicas", "3")
    nc = await nats.connect(jetstream.servers(url), **security_harness.nats_options())
    js = nc.jetstream()
    seen: Counter[str] = Counter()
    try:
        for stream in PLATO_STREAMS:
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
        async with security_harness.channel(plato.target) as channel:
            client = PlatoClient(
                plato.target, url, channel, workflow_service_pb2_grpc.WorkflowServiceStub(channel)
            )
            await client.register(FANOUT)
            busy = asyncio.Event()
            run_worker(counting_worker(url, seen, busy))
            first = [
                await client.start("node-loss-fanout", {"items": ["a", "b", "c"]}) for _ in range(WORKFLOWS)
            ]
            # Mid-run: some workflows done, most not; kill the node leading the task stream, the one
            # every step goes through.
            await asyncio.wait_for(busy.wait(), 60)
            victim = await leader_of(js, subjects.TASKS_STREAM)
            cluster.node(victim).kill()
            # Started while the node is down: the survivors elect new leaders and carry on.
            second = [await start(client, ["d", "e", "f"]) for _ in range(10)]
            workflow_ids = first + second
            for wf_id in workflow_ids:
                wf = await wait_done(client, wf_id)
                assert wf.state == workflow_pb2.WORKFLOW_STATE_COMPLETED, (wf_id, wf.failure_reason)
            for wf_id in workflow_ids:
                events = await retrying(functools.partial(client.history, wf_id))
                assert [e.sequence for e in events] == list(range(1, len(events) + 1)), wf_id
                done = Counter(e.step_id for e in events if e.type == ET.WORKFLOW_EVENT_TYPE_STEP_COMPLETED)
                assert sorted(done) == ["finish", "prepare", "work[0]", "work[1]", "work[2]"], wf_id
                assert set(done.values()) == {1}, (wf_id, done)
                assert sum(e.type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED for e in events) == 1
        # Every step instance reached a handler; an ack lost with the node may hand one over twice
        # (at-least-once), but its completion was applied once (above).
        assert len(seen) == len(workflow_ids) * 5
        redelivered = sum(n - 1 for n in seen.values())
        assert redelivered <= len(seen) // 2, f"{redelivered} redeliveries: {seen.most_common(3)}"

        # The node returns on its old store and catches up with every stream it replicates.
        cluster.node(victim).start()
        for stream in PLATO_STREAMS:
            await caught_up(js, stream, victim)
        # Its copy is the leader's: ask it directly (a client connected only to it).
        solo = await nats.connect(cluster.node(victim).url, **security_harness.nats_options())
        try:
            direct = await solo.jetstream().stream_info(subjects.EVENTS_STREAM)
            leader = await js.stream_info(subjects.EVENTS_STREAM)
            assert direct.state.last_seq == leader.state.last_seq
            assert direct.state.messages == leader.state.messages
        finally:
            await solo.close()
    finally:
        await nc.close()
    assert plato.stop() == 0
