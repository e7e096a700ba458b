"""``cosmos demo``: the main job, end to end, on the embedded stack.

Generates a 20-second 1080p test clip with audio, starts the stack (same ports, data dir and
settings as ``cosmos up``, its S3 server included), uploads the clip to the embedded S3
(``s3://cosmos/default/demo/source.mp4``), encodes a 3-rendition ladder (1080p, 720p, 360p) from
``s3://`` to ``s3://`` with live progress, prints the renditions with their VMAF and PSNR and
presigned HTTP URLs of the manifests, fetches every published object over HTTP (presigned URLs),
verifies the HLS and DASH manifests (every rendition listed, both decode, durations match the
source), and stops the stack.

Each run publishes under a new prefix (``s3://cosmos/default/demo/<run>/``): publishing never
overwrites objects in S3. With ``--no-s3`` the demo runs on files in the local admin's storage area
(``<data-dir>/storage/default/demo/``), republishing with overwrite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
from rich.console import Console

from cosmos import errors
from cosmos.cli import encode, output, up
from cosmos.cli.console import make_console
from cosmos.runtime import logs, process, s3
from cosmos.stack import credentials
from cosmos.stack.embedded import EmbeddedStack, StackConfig

PROFILES = "1080p,720p,360p"
CLIP_SECONDS = 20


def media(*args: str) -> dict[str, object]:
    """Run the media tool and return its result (it prints ``COSMOS_RESULT {json}`` last)."""
    done = subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise errors.CosmosError(f"media {args[0]} failed: {done.stderr.strip()[-800:]}")
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith("COSMOS_RESULT "))
    result: dict[str, object] = json.loads(line.removeprefix("COSMOS_RESULT "))
    return result


async def run_demo(cfg: StackConfig, console: Console) -> int:
    """Clip, stack, encode, verify, stop; non-zero if any of it failed."""
    # The local admin's tenant directory: the agent gives it to the tenant's job uid, so the encode's
    # jobs (never root) can read the clip and publish beside it.
    work = (cfg.storage_dir / credentials.ADMIN_TENANT).absolute()
    clip = work / "demo-source.mp4"
    out = work / "demo"
    work.mkdir(parents=True, exist_ok=True)
    with console.status(f"generating a {CLIP_SECONDS}-second 1080p test clip with audio..."):
        await asyncio.to_thread(
            media, "make-test-clip", "--out", str(clip), "--seconds", str(CLIP_SECONDS), "--size", "1920x1080"
        )
    console.print(f"source: {clip}")
    with console.status("starting the embedded stack..."):
        stack = EmbeddedStack(cfg)
        await stack.start()
    try:
        console.print(up.endpoints_table(stack))
        if stack.s3 is not None:
            client = s3.S3Client(stack.context().s3_config())
            source_uri = "s3://cosmos/default/demo/source.mp4"
            out_uri = f"s3://cosmos/default/demo/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
            with console.status(f"uploading the clip to {source_uri}..."):
                await client.upload_file(clip, source_uri, content_type="video/mp4")
            console.print(f"uploaded: {source_uri}")
            argv = [source_uri, "--profiles", PROFILES, "--out", out_uri, "--force"]
        else:
            argv = [str(clip), "--profiles", PROFILES, "--out", str(out), "--force", "--overwrite"]
        try:
            code = await encode.run_encode(encode.parser().parse_args(argv), console, stack.context())
        except grpc.aio.AioRpcError as exc:  # the submission refused: one line, then stop the stack
            address = stack.context().endpoint("optimus")
            console.print(f"[red]encode not submitted[/red]: {output.rpc_error(exc, 'optimus', address)}")
            code = process.EXIT_FAILED
        if code == process.EXIT_OK and stack.s3 is not None:
            out = work / "demo-fetched" / out_uri.rsplit("/", 1)[-1]
            with console.status("fetching the published objects over HTTP (presigned URLs)..."):
                names = await client.fetch_over_http(out_uri, out)
            console.print(f"fetched {len(names)} objects of {out_uri} over HTTP into {out}")
        verified = code == process.EXIT_OK and await asyncio.to_thread(_verify, console, out)
    finally:
        codes = await stack.stop()
    console.print("stopped: " + ", ".join(f"{name} (exit {c})" for name, c in codes.items()))
    ok = verified and all(c == 0 for c in codes.values())
    console.print("[green]demo ok[/green]" if ok else "[red]demo failed[/red]")
    return process.EXIT_OK if ok else process.EXIT_FAILED


def _verify(console: Console, out: Path) -> bool:
    try:
        result = media(
            "verify", "--hls", str(out / "master.m3u8"), "--mpd", str(out / "manifest.mpd"),
            "--expect-duration", str(CLIP_SECONDS),
        )  # fmt: skip
    except errors.CosmosError as exc:
        console.print(f"[red]manifests did not verify[/red]: {exc}")
        return False
    console.print(
        f"verified: HLS master and DASH MPD list {result.get('renditions')} renditions, both decode, "
        "durations match the source"
    )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos demo``."""
    p = argparse.ArgumentParser(prog="cosmos demo", description="Run the main job on the embedded stack.")
    try:
        up.add_stack_arguments(p)
        args = p.parse_args(argv)
        logs.configure_logging("demo", level="warning", fmt="text")
        return asyncio.run(run_demo(up.stack_config(args), make_console()))
    except errors.CosmosError as exc:
        print(f"cosmos demo: {exc}", file=sys.stderr)
        return process.EXIT_FAILED
