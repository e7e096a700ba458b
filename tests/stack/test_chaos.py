"""Chaos: 20 encodes and 100 workflows run to their end while Plato, Stratum, Optimus, the agent and
nats-server are killed (``kill -9``) at random and restarted by the stack's supervisor, as ``cosmos up``
does. Every workflow ends COMPLETED with each step completion applied once; no encode fails.

Slow (a few minutes on 2 cores): ``make test`` and CI run it; ``make test-fast`` leaves it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import Counter
from pathlib import Path

import pytest
from stack_workload import (
    DEFINITION,
    chaos_worker,
    check_encodes,
    check_histories,
    finals,
    run_encode,
    run_workflow,
)

from cosmos.optimus.media.ffmpeg import Progress
from cosmos.optimus.media.testclip import make_test_clip
from cosmos.optimus.v1 import encode_service_pb2_grpc
from cosmos.plato.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime.config import free_port
from cosmos.stack import credentials
from cosmos.stack.children import Child
from cosmos.stack.embedded import EmbeddedStack, StackConfig
from cosmos.stack.supervisor import RestartPolicy, Supervisor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ENCODES = 20
WORKFLOWS = 100
VICTIMS = ("plato", "stratum", "optimus", "agent", "nats")


async def chaos(stack: EmbeddedStack, done: asyncio.Event, rng: random.Random, kills: Counter[str]) -> None:
    """Kill a component every few seconds, each of them in turn in a shuffled order, until ``done``."""
    order: list[str] = []
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), rng.uniform(3.0, 7.0))
            return
        if not order:
            order = list(VICTIMS)
            rng.shuffle(order)
        name = order.pop()
        (child,) = [c for c in stack.children if c.name == name]
        if child.exited() is None:  # still down from an earlier kill: its turn passes
            os.kill(child.pid, signal.SIGKILL)
            kills[name] += 1


async def all_running(stack: EmbeddedStack, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.2)):
        if all(child.exited() is None for child in stack.children):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not restarted: {[c.name for c in stack.children if c.exited() is not None]}")


async def test_encodes_and_workflows_complete_while_every_component_is_killed_at_random(
    tmp_path: Path,
) -> None:
    rng = random.Random(int(os.environ.get("COSMOS_CHAOS_SEED", "20261205")))
    cfg = StackConfig(
        optimus_port=free_port(), plato_port=free_port(), stratum_port=free_port(), nats_port=free_port(),
        data_dir=tmp_path / "data", token_port_offset=0, log_level="warning",
    )  # fmt: skip
    area = cfg.storage_dir / credentials.ADMIN_TENANT
    area.mkdir(parents=True, exist_ok=True)
    clip = area / "chaos-source.mp4"
    await asyncio.to_thread(make_test_clip, str(clip), 4.0, "320x180", 24.0, Progress())
    kills: Counter[str] = Counter()
    restarts: list[str] = []
    async with EmbeddedStack(cfg) as stack:

        def started(child: Child) -> None:
            stack.restarted(child)
            restarts.append(child.name)

        stopping, done = asyncio.Event(), asyncio.Event()
        policy = RestartPolicy(initial_backoff=0.5, max_backoff=2.0, healthy_after=5.0)
        supervising = asyncio.create_task(
            Supervisor(stack.children, policy, on_started=started).run(stopping)
        )
        worker = chaos_worker(stack)
        working = asyncio.create_task(worker.run(stopping))
        context = stack.context()
        async with context.channel("plato") as plato_channel, context.channel("optimus") as optimus_channel:
            plato = workflow_service_pb2_grpc.WorkflowServiceStub(plato_channel)
            optimus = encode_service_pb2_grpc.EncodeServiceStub(optimus_channel)
            await plato.RegisterDefinition(
                workflow_service_pb2.RegisterDefinitionRequest(request_id="chaos-def", source_yaml=DEFINITION)
            )
            killing = asyncio.create_task(chaos(stack, done, rng, kills))
            out = area / "chaos-out"
            try:
                encodes, workflow_ids = await asyncio.wait_for(
                    asyncio.gather(
                        asyncio.gather(*(run_encode(optimus, clip, out, n) for n in range(ENCODES))),
                        asyncio.gather(*(run_workflow(plato, n) for n in range(WORKFLOWS))),
                    ),
                    timeout=600,
                )
            finally:
                done.set()
                await killing
            # Let the last restart finish before the histories are read.
            await all_running(stack)
            final, histories = await finals(plato, workflow_ids)
        stopping.set()
        await supervising
        with contextlib.suppress(Exception):
            await asyncio.wait_for(working, 30)

    print(f"kills: {dict(kills)}")  # shown with -rP
    # Every component was killed at least once and came back each time.
    assert set(kills) == set(VICTIMS), kills
    assert Counter(restarts) == kills, (restarts, kills)
    check_encodes(encodes, out)
    check_histories(final, histories)
