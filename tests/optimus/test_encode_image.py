"""An encode whose chunks run in the worker image (``SubmitEncodeRequest.image``), on the whole
embedded stack with real podman: the chunk encodes are container jobs (their Stratum specs carry the
image), every other step stays a host process, and the published HLS and DASH decode to the clip's
length. Skipped, with the reason, where podman cannot run containers. Also: an image that is not an
image reference is refused at submit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import podman_harness
import pytest
from encode_harness import embedded_stack, finished, make_clip

from cosmos import errors
from cosmos.optimus.api import image_problem
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.runtime import rpc_errors
from cosmos.security import job_policy
from cosmos.stack.embedded import EmbeddedStack
from cosmos.stratum.v1 import job_service_pb2, job_service_pb2_grpc

ES = encode_pb2.EncodeState


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    async with embedded_stack(tmp_path / "data") as running:
        yield running


def media(*args: str) -> None:
    command = [sys.executable, "-m", "cosmos.optimus.media", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.skipif(bool(why := podman_harness.podman_unusable()), reason=why)
async def test_an_encode_runs_its_chunks_in_the_worker_image(stack: EmbeddedStack, tmp_path: Path) -> None:
    image = await asyncio.to_thread(podman_harness.worker_image)
    area = stack.config.storage_dir / "default"
    area.mkdir(parents=True, exist_ok=True)
    source = await asyncio.to_thread(make_clip, area / "title.mp4", seconds=6, size="320x240", fps=24)
    out = area / "in-image"
    async with stack.context().channel("optimus") as channel:
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        request = encode_service_pb2.SubmitEncodeRequest(
            request_id="in-image", source_uri=source.as_uri(), profiles=["360p"],
            output_uri=out.as_uri(), quality=encode_pb2.QUALITY_MODE_OFF, image=image,
        )  # fmt: skip
        reply = await stub.SubmitEncode(request)
        done = await finished(stub, reply.encode.encode_id)
    assert done.state == ES.ENCODE_STATE_SUCCEEDED, (done.failed_step, done.error_message)

    async with stack.context().channel("stratum") as channel:
        listed = await job_service_pb2_grpc.JobServiceStub(channel).ListJobs(
            job_service_pb2.ListJobsRequest(page_size=1000)
        )
    chunk_jobs = [j for j in listed.jobs if "encode" in j.spec.argv and "--index" in j.spec.argv]
    assert len(chunk_jobs) == 2, [list(j.spec.argv) for j in chunk_jobs]  # 6 s in 4 s chunks
    assert {j.spec.image for j in chunk_jobs} == {image}
    others = [j for j in listed.jobs if j not in chunk_jobs]
    assert others and not any(j.spec.image for j in others)  # probe, split, assemble...: host processes

    media(
        "verify", "--hls", str(out / "master.m3u8"), "--mpd", str(out / "manifest.mpd"),
        "--expect-duration", "6",
    )  # fmt: skip
    # The clean-up (as the tenant) removed the scratch, what the agent copied back from the
    # containers included: it stores outputs as the uid the job ran as.
    scratch = area / ".cosmos-work" / done.encode_id
    assert not scratch.exists() or not any(p.is_file() for p in scratch.rglob("*")), sorted(
        str(p.relative_to(scratch)) for p in scratch.rglob("*")
    )


async def test_an_image_that_is_no_image_reference_is_refused(stack: EmbeddedStack) -> None:
    area = stack.config.storage_dir / "default"
    area.mkdir(parents=True, exist_ok=True)
    source = area / "title.mp4"
    source.write_bytes(b"not looked at: the image is refused first")
    async with stack.context().channel("optimus") as channel:
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        request = encode_service_pb2.SubmitEncodeRequest(
            request_id="bad-image", source_uri=source.as_uri(), profiles=["360p"],
            output_uri=(area / "out").as_uri(), image="--privileged",
        )  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitEncode(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in rpc_errors.details_of(caught.value)[1]] == ["image"]


def test_the_job_policy_decides_which_images_a_tenant_may_encode_in() -> None:
    policy = job_policy.JobPolicy.parse(
        {"tenants": {"acme": {"images": ["localhost/cosmos-worker:*"]}, "*": {"images": []}}}
    )
    assert image_problem("localhost/cosmos-worker:0.1.0", policy, "acme") is None
    refused = image_problem("docker.io/library/debian:12", policy, "acme")
    assert refused is not None and refused[0] == errors.Reason.ERROR_REASON_FORBIDDEN_EXECUTABLE, refused
    assert "allow-list" in refused[1]
    other = image_problem("localhost/cosmos-worker:0.1.0", policy, "globex")  # '*': no images
    assert other is not None and other[0] == errors.Reason.ERROR_REASON_FORBIDDEN_EXECUTABLE
    assert image_problem("localhost/cosmos-worker:0.1.0", None, "globex") is None  # no policy: any
    bad = image_problem("--privileged", None, "acme")
    assert bad is not None and bad[0] == errors.Reason.ERROR_REASON_INVALID_ARGUMENT
