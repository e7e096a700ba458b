"""The embedded stack on a 3-node NATS cluster (``cosmos up --nats-cluster 3``): everything at R3, and
an encode that loses a NATS node (kill -9) mid-run still succeeds; the node returns and catches up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import nats
import pytest

from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.protocol import subjects
from cosmos.runtime import jetstream
from cosmos.runtime.config import free_port
from cosmos.stack.children import Child
from cosmos.stack.embedded import EmbeddedStack, StackConfig

# About a minute each on 2 cores: `make test` and CI run them, `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

ES = encode_pb2.EncodeState


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    cfg = StackConfig(
        optimus_port=free_port(), plato_port=free_port(), stratum_port=free_port(), nats_port=free_port(),
        data_dir=tmp_path / "data", token_port_offset=0, nats_cluster=3,
    )  # fmt: skip
    async with EmbeddedStack(cfg) as running:
        yield running


def make_clip(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", "make-test-clip", "--out", str(path),
         "--seconds", "6", "--size", "640x360", "--fps", "24"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def nats_child(stack: EmbeddedStack, server_name: str) -> Child:
    return next(c for c in stack.children if c.name == server_name)


async def test_an_encode_survives_the_loss_of_a_nats_node_which_then_catches_up(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    assert [e.name for e in stack.endpoints if e.name.startswith("nats")] == ["nats", "nats-2", "nats-3"]
    assert stack.credentials is not None
    tls = jetstream.tls_options(stack.credentials.files("plato"))
    nc = await nats.connect(jetstream.servers(stack.config.nats_url), **tls)
    js = nc.jetstream()
    try:
        for stream in (
            subjects.TASKS_STREAM,
            f"KV_{subjects.WORKFLOWS_BUCKET}",
            f"OBJ_{subjects.BLOBS_BUCKET}",
        ):
            assert (await js.stream_info(stream)).config.num_replicas == 3, stream

        area = stack.config.storage_dir / "default"
        area.mkdir(parents=True, exist_ok=True)
        clip = area / "source.mp4"
        make_clip(clip)
        out = area / "ladder"
        async with stack.context().channel("optimus") as channel:
            encodes = encode_service_pb2_grpc.EncodeServiceStub(channel)
            request = encode_service_pb2.SubmitEncodeRequest(
                request_id="cluster-1",
                source_uri=clip.as_uri(),
                profiles=["360p", "540p"],
                output_uri=out.as_uri(),
            )
            encode_id = (await encodes.SubmitEncode(request)).encode.encode_id
            # Mid-encode: once some progress is reported, kill the node leading the task stream.
            async for reply in encodes.WatchEncode(
                encode_service_pb2.WatchEncodeRequest(encode_id=encode_id)
            ):
                if reply.encode.progress.percent > 0 or reply.encode.state in (
                    ES.ENCODE_STATE_SUCCEEDED, ES.ENCODE_STATE_FAILED
                ):  # fmt: skip
                    break
            info = await js.stream_info(subjects.TASKS_STREAM)
            assert info.cluster is not None and info.cluster.leader
            victim = nats_child(stack, info.cluster.leader)
            os.kill(victim.pid, signal.SIGKILL)
            await asyncio.wait_for(victim.process.wait(), 10)  # type: ignore[union-attr]

            async def finished() -> encode_pb2.Encode:
                while True:
                    try:
                        reply = await encodes.GetEncode(
                            encode_service_pb2.GetEncodeRequest(encode_id=encode_id)
                        )
                        if reply.encode.state in (ES.ENCODE_STATE_SUCCEEDED, ES.ENCODE_STATE_FAILED):
                            return reply.encode
                    except grpc.aio.AioRpcError as exc:  # UNAVAILABLE while NATS fails over: asked again
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                    await asyncio.sleep(0.5)

            done = await asyncio.wait_for(finished(), 240)
        assert done.state == ES.ENCODE_STATE_SUCCEEDED, (done.failed_step, done.error_message)
        assert [r.profile for r in done.renditions] == ["360p", "540p"]
        assert (out / "master.m3u8").is_file()

        # The node comes back on its store and catches up.
        await victim.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        for stream in (subjects.TASKS_STREAM, subjects.EVENTS_STREAM, f"KV_{subjects.WORKFLOWS_BUCKET}"):
            while True:
                info = await js.stream_info(stream)
                assert info.cluster is not None
                peers = {p.name: p for p in info.cluster.replicas or []}
                me = peers.get(victim.name)
                if info.cluster.leader == victim.name or (me is not None and me.current and not me.lag):
                    break
                assert loop.time() < deadline, f"{victim.name} not caught up on {stream}: {info.cluster}"
                await asyncio.sleep(0.25)
    finally:
        await nc.close()
