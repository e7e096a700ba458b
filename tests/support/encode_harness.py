"""Encode tests' shared set-up: a test clip made by the media tool, and the embedded stack on free ports."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg

from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.runtime.config import free_port
from cosmos.stack.embedded import EmbeddedStack, StackConfig


def make_clip(path: Path, *, seconds: int, size: str, fps: int = 24) -> Path:
    """A synthetic clip with audio at ``path`` (``cosmos.optimus.media make-test-clip``)."""
    done = subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", "make-test-clip", "--out", str(path),
         "--seconds", str(seconds), "--size", size, "--fps", str(fps)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return path


def embedded_stack(data_dir: Path, *, s3: bool = False, metrics: bool = False) -> EmbeddedStack:
    """The whole embedded stack (secure, with its local agent) on free ports, its data in ``data_dir``;
    with ``s3``, its S3 server too; with ``metrics``, every component's metrics port (free ports)."""
    ports = (
        {f"{name}_metrics_port": free_port() for name in ("optimus", "plato", "stratum", "agent")}
        if metrics
        else {}
    )
    return EmbeddedStack(
        StackConfig(
            optimus_port=free_port(),
            plato_port=free_port(),
            stratum_port=free_port(),
            nats_port=free_port(),
            s3=s3,
            s3_port=free_port() if s3 else 0,
            data_dir=data_dir,
            token_port_offset=0,
            **ports,  # type: ignore[arg-type]
        )
    )


def damaged_video(clip: Path, dest: Path) -> Path:
    """``clip``'s video alone (as a chunk is), with two runs of bytes in it overwritten: its index
    stays intact, so it probes as whole, but frames do not decode.

    Video only, so the runs always land in video samples: ffmpeg interleaves a clip's audio and video
    in whatever order its threads deliver them, so in a clip with audio a fixed offset is sometimes
    audio, which decodes without an error.
    """
    whole = dest.with_name(f"whole-{dest.name}")
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(clip), "-map", "0:v", "-c", "copy",
         "-movflags", "+faststart", str(whole)],
        check=True,
    )  # fmt: skip
    data = bytearray(whole.read_bytes())
    for start in (len(data) // 3, 2 * len(data) // 3):
        for i in range(start, start + 4000, 7):
            data[i] = (data[i] * 31 + 17) % 256
    dest.write_bytes(bytes(data))
    whole.unlink()
    return dest


async def finished(
    stub: encode_service_pb2_grpc.EncodeServiceAsyncStub, encode_id: str, timeout: float = 300
) -> encode_pb2.Encode:
    """The encode as it ended, followed with WatchEncode (which ends at a terminal state)."""

    async def follow() -> encode_pb2.Encode:
        last = None
        async for reply in stub.WatchEncode(encode_service_pb2.WatchEncodeRequest(encode_id=encode_id)):
            last = reply.encode
        assert last is not None
        return last

    return await asyncio.wait_for(follow(), timeout)
