"""Replicas (``cosmos up --service-replicas 2``): two Plato, two Optimus and two Stratum processes
(one Stratum leads) share the work. ``kill -9`` of one of each, the leading Stratum among them, with
nothing restarted: every workflow and encode, started before the kills and after, still completes,
each step completion applied once, every package published.

Slow (a couple of minutes on 2 cores): ``make test`` and CI run it; ``make test-fast`` leaves it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
from stack_workload import (
    DEFINITION,
    chaos_worker,
    check_encodes,
    check_histories,
    finals,
    lost_step_completions,
    retried,
    run_encode,
    run_workflow,
)

from cosmos.optimus.media.ffmpeg import Progress
from cosmos.optimus.media.testclip import make_test_clip
from cosmos.optimus.v1 import encode_service_pb2_grpc
from cosmos.plato.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime.config import free_port
from cosmos.stack import credentials
from cosmos.stack.embedded import EmbeddedStack, StackConfig
from cosmos.stratum.v1 import pool_service_pb2, pool_service_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ENCODES = 4
WORKFLOWS = 30
KILLED = ("plato", "optimus", "stratum")  # the first replica of each; that Stratum leads


async def test_the_other_replicas_carry_on_when_one_of_each_service_is_killed(tmp_path: Path) -> None:
    # At debug each Plato logs every commit's step writes: the trail to read if a step is ever lost.
    cfg = StackConfig(
        optimus_port=free_port(), plato_port=free_port(), stratum_port=free_port(), nats_port=free_port(),
        data_dir=tmp_path / "data", token_port_offset=0, log_level="debug", service_replicas=2,
    )  # fmt: skip
    area = cfg.storage_dir / credentials.ADMIN_TENANT
    area.mkdir(parents=True, exist_ok=True)
    clip = area / "replicas-source.mp4"
    await asyncio.to_thread(make_test_clip, str(clip), 4.0, "320x180", 24.0, Progress())
    out = area / "replicas-out"
    async with EmbeddedStack(cfg) as stack:
        names = sorted(c.name for c in stack.children)
        assert names == sorted(["nats", "agent", *KILLED, *(f"{n}-2" for n in KILLED)]), names
        context = stack.context()
        assert context.endpoint("stratum") == cfg.target("stratum") and "," in cfg.target("stratum")
        stopping = asyncio.Event()
        working = asyncio.create_task(chaos_worker(stack).run(stopping))
        async with context.channel("plato") as plato_channel, context.channel("optimus") as optimus_channel:
            plato = workflow_service_pb2_grpc.WorkflowServiceStub(plato_channel)
            optimus = encode_service_pb2_grpc.EncodeServiceStub(optimus_channel)
            await plato.RegisterDefinition(
                workflow_service_pb2.RegisterDefinitionRequest(
                    request_id="replicas-def", source_yaml=DEFINITION
                )
            )
            half_e, half_w = ENCODES // 2, WORKFLOWS // 2
            encoding = [asyncio.create_task(run_encode(optimus, clip, out, n)) for n in range(half_e)]
            running = [asyncio.create_task(run_workflow(plato, n)) for n in range(half_w)]
            await asyncio.sleep(3.0)  # under way: jobs running, steps in flight
            for name in KILLED:
                (child,) = [c for c in stack.children if c.name == name]
                os.kill(child.pid, signal.SIGKILL)
            encoding += [
                asyncio.create_task(run_encode(optimus, clip, out, n)) for n in range(half_e, ENCODES)
            ]
            running += [asyncio.create_task(run_workflow(plato, n)) for n in range(half_w, WORKFLOWS)]
            try:
                encodes, workflow_ids = await asyncio.wait_for(
                    asyncio.gather(asyncio.gather(*encoding), asyncio.gather(*running)), timeout=300
                )
            except TimeoutError:
                lost = await lost_step_completions(plato, [f"chaos-{n:03d}" for n in range(WORKFLOWS)])
                # Named, so a stall says whether a completion was lost (a stale load once wrote an
                # older step record back: tests/plato/test_records_load.py).
                assert not lost, f"completed in the history but stored open: {lost}"
                raise
            final, histories = await finals(plato, workflow_ids)
            # The agent follows the new leader: it is READY there.
            async with context.channel("stratum") as stratum_channel:
                pool = pool_service_pb2_grpc.PoolServiceStub(stratum_channel)
                agents = await retried(
                    lambda: pool.ListAgents(pool_service_pb2.ListAgentsRequest(), timeout=10)
                )
                assert [a.agent_id for a in agents.agents] == [cfg.agent_id]
        stopping.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(working, 30)
    assert [c.name for c in stack.children] == []  # all stopped
    check_encodes(encodes, out)
    check_histories(final, histories)
