"""Encodes on the whole embedded stack: scratch removed after success (after a failure only its partial
files: the rest is kept for a retry), a truncated or
corrupt source fails (permanently, naming it) instead of publishing a short ladder, and the same
source encodes fine afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from encode_harness import damaged_video, embedded_stack, make_clip

from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.plato.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.stack.embedded import EmbeddedStack

ES = encode_pb2.EncodeState


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "source.mp4", seconds=6, size="320x240", fps=24)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    async with embedded_stack(tmp_path / "data") as running:
        yield running


async def encode(stack: EmbeddedStack, source: Path, out: Path) -> encode_pb2.Encode:
    async with stack.context().channel("optimus") as channel:
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        request = encode_service_pb2.SubmitEncodeRequest(
            request_id=uuid.uuid4().hex, source_uri=source.as_uri(), profiles=["360p"],
            output_uri=out.as_uri(), quality=encode_pb2.QUALITY_MODE_OFF,
        )  # fmt: skip
        submitted = (await stub.SubmitEncode(request)).encode

        async def follow() -> encode_pb2.Encode:
            last = submitted
            async for reply in stub.WatchEncode(
                encode_service_pb2.WatchEncodeRequest(encode_id=submitted.encode_id)
            ):
                last = reply.encode
            return last

        return await asyncio.wait_for(follow(), 240)


async def attempts(stack: EmbeddedStack, encode_id: str) -> dict[str, int]:
    async with stack.context().channel("plato") as channel:
        wf = (
            await workflow_service_pb2_grpc.WorkflowServiceStub(channel).GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(workflow_id=encode_id)
            )
        ).workflow
    return {s.step_id: s.attempt for s in wf.steps}


def scratch_of(stack: EmbeddedStack, encode_id: str) -> Path:
    return stack.config.data_dir / "work" / "default" / encode_id


def agent_leftovers(stack: EmbeddedStack) -> list[Path]:
    """Job work dirs still on the agents (each attempt's own scratch)."""
    agents = stack.config.data_dir / "agents"
    return [p for p in agents.glob("*/*") if p.is_dir()] if agents.exists() else []


async def test_scratch_goes_and_a_truncated_source_fails_once_naming_it(
    stack: EmbeddedStack, clip_file: Path
) -> None:
    area = stack.config.storage_dir / "default"
    area.mkdir(parents=True, exist_ok=True)
    source = area / "title.mp4"
    data = await asyncio.to_thread(clip_file.read_bytes)

    # A truncated source: FAILED, not a short ladder; the probe is not retried; no scratch stays.
    source.write_bytes(data[: len(data) // 2])
    failed = await encode(stack, source, area / "out-1")
    assert failed.state == ES.ENCODE_STATE_FAILED, failed
    assert f"source {source} is truncated" in failed.error_message
    assert "not retryable" in failed.error_message
    tries = await attempts(stack, failed.encode_id)
    assert tries[failed.failed_step] == 1, tries  # the step declares retries: none were run
    assert not scratch_of(stack, failed.encode_id).exists()
    assert not (area / "out-1" / "master.m3u8").exists()

    # The same source, whole again: a new encode succeeds after the failure, and leaves no scratch.
    source.write_bytes(data)
    done = await encode(stack, source, area / "out-2")
    assert done.state == ES.ENCODE_STATE_SUCCEEDED, (done.failed_step, done.error_message)
    assert (area / "out-2" / "master.m3u8").is_file()
    assert not scratch_of(stack, done.encode_id).exists()
    assert list((stack.config.data_dir / "work" / "default").iterdir()) == []
    assert agent_leftovers(stack) == []


async def test_a_corrupt_source_fails_the_encode_naming_it(stack: EmbeddedStack, clip_file: Path) -> None:
    area = stack.config.storage_dir / "default"
    area.mkdir(parents=True, exist_ok=True)
    source = area / "damaged.mp4"
    await asyncio.to_thread(damaged_video, clip_file, source)
    failed = await encode(stack, source, area / "out")
    assert failed.state == ES.ENCODE_STATE_FAILED, failed
    assert f"source {source} is corrupt" in failed.error_message, failed.error_message
    tries = await attempts(stack, failed.encode_id)
    assert tries[failed.failed_step] == 1, tries
    # What the completed steps made stays for `cosmos encode --retry` (docs/encoding.md); nothing
    # half-written does.
    assert not list(scratch_of(stack, failed.encode_id).rglob(".*.tmp-*"))
    assert not (area / "out" / "master.m3u8").exists()
