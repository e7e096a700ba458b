"""An encode from s3:// to s3:// through the embedded stack (real SeaweedFS, NATS, Plato, Stratum,
agent, ffmpeg): the published HLS and DASH are fetched over HTTP with presigned URLs and decoded."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from encode_harness import embedded_stack, make_clip

from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.runtime import rpc_errors, s3
from cosmos.stack.embedded import EmbeddedStack

ES = encode_pb2.EncodeState


def media(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    async with embedded_stack(tmp_path / "data", s3=True) as running:
        yield running


@pytest.mark.slow  # about 25 s: a whole stack with S3, whose filer stops in 15 s
async def test_s3_to_s3_encode_plays_over_http(stack: EmbeddedStack, tmp_path: Path) -> None:
    assert stack.s3 is not None
    client = s3.S3Client(stack.s3.config)
    clip = tmp_path / "clip.mp4"
    make_clip(clip, seconds=4, size="320x240")
    await client.upload_file(clip, "s3://cosmos/default/sources/clip.mp4")

    async with stack.context().channel("optimus") as channel:
        encodes = encode_service_pb2_grpc.EncodeServiceStub(channel)
        # An unknown bucket, a missing object, a "..": refused at submit, naming the field (the local
        # admin may use every tenant's prefix; tenancy is tests/security/test_storage_roots_s3_unit.py).
        for change, field, reason in (
            (
                {"source_uri": "s3://elsewhere/default/clip.mp4"},
                "source_uri",
                "ERROR_REASON_OUTSIDE_STORAGE_ROOT",
            ),
            ({"source_uri": "s3://cosmos/default/nope.mp4"}, "source_uri", "ERROR_REASON_SOURCE_UNREADABLE"),
            ({"output_uri": "s3://cosmos/default/../x"}, "output_uri", "ERROR_REASON_OUTSIDE_STORAGE_ROOT"),
        ):
            base = {
                "source_uri": "s3://cosmos/default/sources/clip.mp4",
                "output_uri": "s3://cosmos/default/o",
            }
            bad = encode_service_pb2.SubmitEncodeRequest(profiles=["360p"], **{**base, **change})  # type: ignore[arg-type]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await encodes.SubmitEncode(bad)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, change
            info, violations = rpc_errors.details_of(caught.value)
            assert info is not None and info.reason == reason, change
            assert [v.field for v in violations] == [field], change

        # A prefix holding someone else's objects: refused at submit, not after the encode.
        await client.put_bytes("s3://cosmos/default/taken/notes.txt", b"mine")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await encodes.SubmitEncode(
                encode_service_pb2.SubmitEncodeRequest(
                    source_uri="s3://cosmos/default/sources/clip.mp4",
                    output_uri="s3://cosmos/default/taken",
                    profiles=["360p"],
                )
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info, _ = rpc_errors.details_of(caught.value)
        assert info is not None and info.reason == "ERROR_REASON_OUTPUT_EXISTS"

        reply = await encodes.SubmitEncode(
            encode_service_pb2.SubmitEncodeRequest(
                source_uri="s3://cosmos/default/sources/clip.mp4",
                output_uri="s3://cosmos/default/published/clip",
                profiles=["360p", "540p"],
            )
        )

        async def follow() -> encode_pb2.Encode:
            last = encode_pb2.Encode()
            async for r in encodes.WatchEncode(
                encode_service_pb2.WatchEncodeRequest(encode_id=reply.encode.encode_id)
            ):
                last = r.encode
            return last

        done = await asyncio.wait_for(follow(), 240)
    assert done.state == ES.ENCODE_STATE_SUCCEEDED, done.error_message
    assert done.manifests.hls_master_uri == "s3://cosmos/default/published/clip/master.m3u8"
    assert done.manifests.dash_mpd_uri == "s3://cosmos/default/published/clip/manifest.mpd"

    fetched = tmp_path / "fetched"
    names = await client.fetch_over_http("s3://cosmos/default/published/clip", fetched)
    assert "master.m3u8" in names and "manifest.mpd" in names
    media(
        "verify", "--hls", str(fetched / "master.m3u8"), "--mpd", str(fetched / "manifest.mpd"),
        "--expect-duration", "4",
    )  # fmt: skip
