"""A failed encode resumed with its request_id and ``retry``: on the whole embedded stack (NATS,
Plato, Stratum, an agent, Optimus), one chunk made to fail on purpose (the media tool's fault
marker), then retried: the encode completes, and the chunks that had completed are not encoded
again (one Stratum job each, their files untouched)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from encode_harness import embedded_stack, finished, make_clip

from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.plato.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime import rpc_errors
from cosmos.stack.embedded import EmbeddedStack
from cosmos.stratum.v1 import job_service_pb2, job_service_pb2_grpc

ES = encode_pb2.EncodeState
REQUEST_ID = "resume-me"


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "source.mp4", seconds=12, size="320x240", fps=24)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    async with embedded_stack(tmp_path / "data") as running:
        yield running


async def submit(
    stub: encode_service_pb2_grpc.EncodeServiceAsyncStub, source: Path, out: Path, *, retry: bool = False
) -> encode_service_pb2.SubmitEncodeResponse:
    request = encode_service_pb2.SubmitEncodeRequest(
        request_id=REQUEST_ID, source_uri=source.as_uri(), profiles=["360p"], output_uri=out.as_uri(),
        quality=encode_pb2.QUALITY_MODE_OFF, retry=retry,
    )  # fmt: skip
    return await stub.SubmitEncode(request)


async def chunk_jobs(stack: EmbeddedStack) -> Counter[int]:
    """Stratum jobs run per chunk index (every attempt is a job of its own)."""
    async with stack.context().channel("stratum") as channel:
        listed = await job_service_pb2_grpc.JobServiceStub(channel).ListJobs(
            job_service_pb2.ListJobsRequest(page_size=1000)
        )
    counts: Counter[int] = Counter()
    for job in listed.jobs:
        argv = list(job.spec.argv)
        if "encode" in argv and "--index" in argv:
            counts[int(argv[argv.index("--index") + 1])] += 1
    return counts


async def attempts(stack: EmbeddedStack, encode_id: str) -> dict[str, int]:
    async with stack.context().channel("plato") as channel:
        wf = (
            await workflow_service_pb2_grpc.WorkflowServiceStub(channel).GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(workflow_id=encode_id)
            )
        ).workflow
    return {s.step_id: s.attempt for s in wf.steps}


async def test_a_failed_encode_retried_completes_without_encoding_its_completed_chunks_again(
    stack: EmbeddedStack, clip_file: Path
) -> None:
    area = stack.config.storage_dir / "default"
    area.mkdir(parents=True, exist_ok=True)
    source = area / "title.mp4"
    await asyncio.to_thread(source.write_bytes, await asyncio.to_thread(clip_file.read_bytes))
    out = area / "ladder"
    # The encode's id and scratch directory follow from the tenant and request id (cosmos.optimus.api);
    # the fault marker is put there before the encode starts, so chunk 1 fails every time it runs.
    encode_id = "enc-" + hashlib.sha256(f"default\n{REQUEST_ID}".encode()).hexdigest()[:24]
    work = stack.config.data_dir / "work" / "default" / encode_id
    marker = work / ".cosmos-fault" / "encode-1"
    marker.parent.mkdir(parents=True)
    marker.touch()
    for made in (work, marker.parent):
        os.chmod(made, 0o777)  # the jobs run as the tenant's uid and write their scratch here

    async with stack.context().channel("optimus") as channel:
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        first = await submit(stub, source, out)
        assert first.encode.encode_id == encode_id
        failed = await finished(stub, encode_id)
        assert failed.state == ES.ENCODE_STATE_FAILED, failed
        assert "fault injected" in failed.error_message, failed.error_message
        before = await chunk_jobs(stack)
        assert before == {0: 1, 1: 1, 2: 1}, before  # a permanent failure: not retried by the step

        # What the completed chunks made is kept for the retry, addressed by content.
        encoded = work / "encoded" / "360p"
        kept = {p.name: p.stat().st_mtime_ns for p in encoded.glob("chunk_*.mp4")}
        assert sorted(name[:11] for name in kept) == ["chunk_00000", "chunk_00002"], kept
        assert all(len(name.split(".")) == 3 for name in kept)  # chunk_NNNNN.<key>.mp4
        assert not list(work.rglob(".*.tmp-*"))

        # Without retry, the same request is the same (failed) encode.
        again = await submit(stub, source, out)
        assert again.deduplicated and not again.resumed and again.encode.state == ES.ENCODE_STATE_FAILED
        # retry and force exclude each other.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitEncode(
                encode_service_pb2.SubmitEncodeRequest(
                    request_id=REQUEST_ID,
                    source_uri=source.as_uri(),
                    output_uri=out.as_uri(),
                    retry=True,
                    force=True,
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in rpc_errors.details_of(caught.value)[1]] == ["retry"]

        marker.unlink()
        resumed = await submit(stub, source, out, retry=True)
        assert resumed.resumed and resumed.deduplicated and resumed.encode.encode_id == encode_id
        done = await finished(stub, encode_id)
        assert done.state == ES.ENCODE_STATE_SUCCEEDED, (done.failed_step, done.error_message)

        # A retry of the succeeded encode changes nothing.
        later = await submit(stub, source, out, retry=True)
        assert not later.resumed and later.encode.state == ES.ENCODE_STATE_SUCCEEDED

    assert (out / "master.m3u8").is_file()
    # Only the failed chunk ran again; the completed ones were neither rerun as steps nor re-encoded.
    assert await chunk_jobs(stack) == {0: 1, 1: 2, 2: 1}
    tries = await attempts(stack, encode_id)
    encodes = {k: v for k, v in tries.items() if k.startswith("encode[")}
    assert sorted(encodes.values()) == [1, 1, 2], tries
    # The successful end removes the scratch it had kept.
    assert not work.exists() or not any(work.rglob("*.mp4"))
