"""``cosmos encode SOURCE --profiles 1080p,720p,360p --out DIR``: an adaptive-bitrate ladder, live.

Submits to Optimus, follows the encode with progress bars (overall and per rendition, with fps and
ETA), then prints the renditions (resolution, bitrate, size, VMAF, PSNR) and the manifest paths.
``-o json|yaml`` prints the final encode instead (``--json`` is ``-o json``). ``--detach`` prints the
encode id and returns at once; ``cosmos encode watch ID`` follows it later. Ctrl-C asks whether to cancel
the encode; a second Ctrl-C (at the prompt, or once the cancellation is asked) stops watching and
leaves the encode as it is (the watch, bars and Ctrl-C: :mod:`cosmos.cli.encode_watch`).

Files must lie in the caller's storage area, ``<root>/<tenant>/`` (see README, "Encoding a video").
When the context knows the root as a local directory (``cosmos up`` records it), a relative ``--out``
lands in that area, and a local source outside it is first copied to ``<root>/<tenant>/uploads/``;
the CLI prints both. ``--overwrite`` replaces an earlier Cosmos publish at ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import os
import shutil
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import grpc
import jwt
from rich.console import Console
from rich.table import Table

from cosmos import errors
from cosmos.cli import output, target
from cosmos.cli.console import make_console
from cosmos.cli.encode_watch import PROMPT_THREAD, Detached, watch_encode
from cosmos.client import keys
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.runtime import process, s3
from cosmos.security import pki, storage
from cosmos.security.context import Context

PREFIX = "COSMOS"
ES = encode_pb2.EncodeState


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos encode``."""
    p = argparse.ArgumentParser(
        prog="cosmos encode", description="Encode a video into an ABR ladder (HLS + DASH)."
    )
    p.add_argument("source", help="the video to encode (path or file:// URI)")
    p.add_argument("--profiles", default="", help="comma-separated profiles, e.g. 1080p,720p,360p")
    p.add_argument("--ladder", default="", help="a named ladder instead of --profiles (default, full)")
    p.add_argument("--out", required=True, help="directory (or file:// URI) the manifests are published to")
    p.add_argument("--priority", type=int, default=0, help="higher runs first on Stratum")
    p.add_argument(
        "--request-id",
        default="",
        help="idempotency key (a repeat returns the same encode); default: sha256 of the source, "
        "profiles and output (cosmos.client.keys), so the same encode submitted twice is one",
    )
    p.add_argument(
        "--force", action="store_true", help="start anew even if the same encode exists (a fresh request id)"
    )
    p.add_argument(
        "--retry",
        action="store_true",
        help="resume the FAILED or CANCELLED encode of this --request-id (or content) from its failed "
        "chunks, reusing the chunks that completed",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier Cosmos publish at --out (never files Cosmos did not write)",
    )
    p.add_argument(
        "--quality",
        choices=("sampled", "full", "off"),
        default="sampled",
        help="VMAF/PSNR on about one frame a second (default), every frame, or none",
    )
    p.add_argument(
        "--image",
        default="",
        help="run the chunk encodes in this container image (e.g. localhost/cosmos-worker:<version> from "
        "`make image`; agents with podman, image allowed for the tenant); default: host processes",
    )
    p.add_argument("--json", action="store_true", help="the same as -o json")
    output.add_output_argument(p)
    p.add_argument(
        "--detach",
        action="store_true",
        help="submit, print the encode id and return (follow it later: cosmos encode watch ID)",
    )
    target.add_arguments(p, "optimus")
    return p


def watch_parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos encode watch ID``."""
    p = argparse.ArgumentParser(
        prog="cosmos encode watch", description="Follow an encode (submitted earlier) to its end."
    )
    p.add_argument("encode_id", metavar="ID", help="the encode id (enc-...)")
    output.add_output_argument(p)
    target.add_arguments(p, "optimus")
    return p


QUALITY = {
    "sampled": encode_pb2.QUALITY_MODE_SAMPLED,
    "full": encode_pb2.QUALITY_MODE_FULL,
    "off": encode_pb2.QUALITY_MODE_OFF,
}


def _uri(text: str) -> str:
    return text if "://" in text else Path(text).absolute().as_uri()


def tenant_of(ctx: Context) -> str:
    """The tenant the context's credentials name (a certificate's O, a token's ``tenant`` claim)."""
    try:
        if ctx.cert:
            return pki.subject_of(pki.load_cert(Path(ctx.cert))).tenant or storage.DEFAULT_TENANT
        if ctx.token:
            claims = jwt.decode(ctx.token, options={"verify_signature": False})
            return str(claims.get("tenant") or storage.DEFAULT_TENANT)
    except (OSError, ValueError, errors.ConfigError, jwt.PyJWTError) as exc:
        raise errors.ConfigError(f"cannot tell the tenant of context {ctx.name!r}: {exc}") from exc
    return storage.DEFAULT_TENANT


def _local(text: str) -> Path | None:
    """The local path ``text`` names (a path or a file:// URI), or None for another scheme."""
    if "://" not in text:
        return Path(text)
    parts = urlsplit(text)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def place_files(source: str, out: str, ctx: Context) -> tuple[str, str, list[str]]:
    """The source and output URIs to submit, and what was done to get them: with a local storage
    root in the context, a relative ``out`` lies in ``<root>/<tenant>/`` and a local source outside
    that area is copied to ``<root>/<tenant>/uploads/<name>`` first (unless the same file is there)."""
    root = Path(ctx.storage_root) if ctx.storage_root else None
    if root is None or not root.is_dir():
        return _uri(source), _uri(out), []
    notes = []
    area = storage.tenant_area(root, tenant_of(ctx))
    if "://" not in out and not Path(out).is_absolute():
        out = str(area / out)
        notes.append(f"output: {out} (in your storage area)")
    local = _local(source)
    if local is not None and local.is_file() and not local.resolve().is_relative_to(area.resolve()):
        upload = area / "uploads" / local.name
        upload.parent.mkdir(parents=True, exist_ok=True)
        if not (upload.is_file() and filecmp.cmp(local, upload)):
            shutil.copy2(local, upload)
        notes.append(f"copied {local} into your storage area: {upload}")
        source = str(upload)
    return _uri(source), _uri(out), notes


def results_table(encode: encode_pb2.Encode) -> Table:
    """The renditions of a finished encode, for people."""
    table = Table(title=f"encode {encode.encode_id}", title_justify="left")
    for column in ("rendition", "resolution", "codec", "bitrate", "size", "VMAF", "PSNR"):
        table.add_column(column, justify="left" if column in ("rendition", "codec") else "right")
    for r in encode.renditions:
        table.add_row(
            r.profile,
            f"{r.width}x{r.height}",
            r.codec,
            f"{r.bitrate_bps / 1e6:.2f} Mb/s",
            f"{r.size_bytes / 1e6:.1f} MB",
            f"{r.vmaf:.1f}" if r.quality_frames else "-",
            f"{r.psnr:.1f} dB" if r.quality_frames else "-",
        )
    return table


def _format(args: argparse.Namespace) -> str:
    return "json" if getattr(args, "json", False) else str(getattr(args, "output", "table"))


def print_final(console: Console, final: encode_pb2.Encode, fmt: str, ctx: Context | None) -> int:
    """The finished encode as ``fmt``; the exit code it means."""
    if fmt == "table":
        _report(console, final, ctx)
    else:
        output.emit(output.to_data(final), fmt, lambda: [])
    return process.EXIT_OK if final.state == ES.ENCODE_STATE_SUCCEEDED else process.EXIT_FAILED


async def run_encode(args: argparse.Namespace, console: Console, ctx: Context | None = None) -> int:
    """Submit, follow, report (with the context ``ctx``, else the one the flags name)."""
    ctx = ctx or target.resolve(args, "optimus")
    fmt = _format(args)
    source_uri, output_uri, notes = await asyncio.to_thread(place_files, args.source, args.out, ctx)
    profiles = [p for p in args.profiles.split(",") if p]
    request_id = args.request_id
    if not request_id and not args.force:
        # The card's key (sha256 of source + profiles, with the output): the same encode submitted
        # twice is one. --force sends none, and Optimus then starts a new encode under a fresh id.
        request_id = keys.encode_request_id(
            source_uri,
            profiles,
            output_uri=output_uri,
            ladder=args.ladder,
            quality=args.quality,
            overwrite=args.overwrite,
            image=args.image,
        )
    async with ctx.channel("optimus") as channel:
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        request = encode_service_pb2.SubmitEncodeRequest(
            request_id=request_id,
            source_uri=source_uri,
            profiles=profiles,
            ladder=args.ladder,
            output_uri=output_uri,
            priority=args.priority,
            force=args.force,
            retry=args.retry,
            quality=QUALITY[args.quality],
            overwrite=args.overwrite,
            image=args.image,
        )
        reply = await stub.SubmitEncode(request)
        submitted = reply.encode
        for note in notes:
            # What was done on the side, said once the encode is accepted (a refusal is one line);
            # on stderr: stdout is the encode alone.
            print(note, file=sys.stderr)
        if getattr(args, "detach", False):
            if fmt == "table":
                print(submitted.encode_id)
                print(f"follow it: cosmos encode watch {submitted.encode_id}", file=sys.stderr)
            else:
                output.emit(output.to_data(submitted), fmt, lambda: [])
            return process.EXIT_OK
        if fmt == "table":
            resumed = " (resumed from its failed steps)" if reply.resumed else ""
            console.print(
                f"encode [bold]{submitted.encode_id}[/bold]: {', '.join(submitted.profiles)} -> {args.out}"
                + resumed,
                soft_wrap=True,
            )
        try:
            final = await watch_encode(stub, submitted.encode_id, console, fmt)
        except Detached:
            encode_id = submitted.encode_id
            print(f"stopped watching; {encode_id} goes on (cosmos encode watch {encode_id})", file=sys.stderr)
            return 130
    return print_final(console, final, fmt, ctx)


async def run_watch(args: argparse.Namespace, console: Console) -> int:
    """``cosmos encode watch ID``: follow an encode to its end, then report it."""
    ctx = target.resolve(args, "optimus")
    async with ctx.channel("optimus") as channel:
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        encode_id = args.encode_id
        await stub.GetEncode(encode_service_pb2.GetEncodeRequest(encode_id=encode_id))  # NOT_FOUND early
        try:
            final = await watch_encode(stub, encode_id, console, args.output)
        except Detached:
            print(f"stopped watching; {encode_id} goes on", file=sys.stderr)
            return 130
    return print_final(console, final, args.output, ctx)


def _report(console: Console, encode: encode_pb2.Encode, ctx: Context | None = None) -> None:
    state = ES.Name(encode.state).removeprefix("ENCODE_STATE_")
    if encode.state != ES.ENCODE_STATE_SUCCEEDED:
        console.print(
            f"[red]{state}[/red] {encode.failed_step}: {encode.error_message or encode.cancel_reason}"
        )
        return
    console.print(results_table(encode))
    console.print(f"HLS  {encode.manifests.hls_master_uri}\nDASH {encode.manifests.dash_mpd_uri}")
    if encode.manifests.hls_master_uri.startswith("s3://") and ctx is not None:
        # Objects are private: a presigned URL (1 h) per manifest; a player needs one per segment
        # too (or a public-read prefix), so `cosmos demo` fetches every object through its own.
        client = s3.S3Client(ctx.s3_config())
        # soft_wrap: a URL cut into lines cannot be copied.
        console.print(
            f"HLS  (presigned, 1 h) {client.presign(encode.manifests.hls_master_uri)}", soft_wrap=True
        )
        console.print(
            f"DASH (presigned, 1 h) {client.presign(encode.manifests.dash_mpd_uri)}", soft_wrap=True
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos encode`` and ``cosmos encode watch``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    watching = argv[:1] == ["watch"]
    args = watch_parser().parse_args(argv[1:]) if watching else parser().parse_args(argv)
    address = ""
    try:
        address = target.resolve(args, "optimus").endpoint("optimus")
        run = run_watch(args, make_console()) if watching else run_encode(args, make_console())
        code = asyncio.run(run)
        if any(t.name == PROMPT_THREAD and t.is_alive() for t in threading.enumerate()):
            # Stopped at the open question: its thread still reads the terminal, and the interpreter
            # cannot shut down cleanly under it. Everything is said; leave now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except errors.ConfigError as exc:
        output.fail("encode", str(exc))
        return process.EXIT_CONFIG
    except grpc.aio.AioRpcError as exc:
        output.fail("encode", output.rpc_error(exc, "optimus", address))
        return process.EXIT_FAILED
    except KeyboardInterrupt:
        return 130
