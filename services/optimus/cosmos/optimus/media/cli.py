"""``python -m cosmos.optimus.media <command>``: one pipeline step per process, run as a Stratum job.

Every command writes its result as one JSON object to ``$COSMOS_RESULT_FILE`` (when set) and prints it
as the last stdout line, prefixed ``COSMOS_RESULT ``; progress goes to the Stratum progress channel.
Failures exit non-zero with one line on stderr (2: missing or unusable input or bad usage, 1: anything
else, including ffmpeg failures with ffmpeg's last stderr lines), and declare their failure class in
``$COSMOS_FAILURE_FILE`` (when set): a corrupt or truncated source, an unknown codec, bad input or a
full disk is permanent (not retried), anything else transient.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cosmos.optimus import profiles
from cosmos.optimus.media.encode import ChunkFacts
from cosmos.optimus.media.ffmpeg import InputError, MediaError, Progress
from cosmos.optimus.media.files import replacing
from cosmos.optimus.media.quality import QualityMode

__all__ = ["main", "parser"]

RESULT_PREFIX = "COSMOS_RESULT "


def parser() -> argparse.ArgumentParser:
    """The command-line interface (see docs/encoding.md)."""
    p = argparse.ArgumentParser(
        prog="python -m cosmos.optimus.media", description="Cosmos media tool: one encoding-pipeline step."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    c = sub.add_parser("probe", help="describe a source file")
    c.add_argument("--source", required=True)

    c = sub.add_parser("split", help="split a source into keyframe-aligned video-only chunks")
    c.add_argument("--source", required=True)
    c.add_argument("--work", required=True, help="directory for the chunks")
    c.add_argument("--chunk-seconds", type=float, default=10.0)
    c.add_argument("--max-chunks", type=int, default=0, help="longer chunks past this many (0: no limit)")

    c = sub.add_parser("encode", help="encode one chunk into several profiles and measure them")
    c.add_argument("--chunk", required=True)
    c.add_argument("--profiles", required=True, help="profile names: a JSON list or comma-separated")
    c.add_argument("--out-dir", required=True, help="writes <out-dir>/<profile>/chunk_NNNNN.mp4")
    c.add_argument("--index", type=int, default=None, help="chunk number (default: from the file name)")
    c.add_argument("--start", type=float, default=0.0, help="seconds into the title (frame numbering)")
    c.add_argument("--quality", choices=[m.value for m in QualityMode], default=QualityMode.SAMPLED.value)
    c.add_argument("--threads", type=int, default=0, help="threads per encoder and decoder (0: ffmpeg's)")
    # The chunk's facts from split; with all three the chunk is not probed again.
    c.add_argument("--duration", type=float, default=None, help="the chunk's duration in seconds")
    c.add_argument("--fps", type=float, default=None, help="the chunk's frame rate")
    c.add_argument("--size", default=None, help="the chunk's frame size, WIDTHxHEIGHT")
    c.add_argument("--source", default="", help="the title the chunk was cut from (named when corrupt)")
    c.add_argument(
        "--portable",
        action="store_true",
        help="for a container job: result paths relative to the result file; content key from the chunk",
    )

    c = sub.add_parser("verify-chunk", help="check that an encoded chunk decodes whole, to its duration")
    c.add_argument("--path", required=True)
    c.add_argument("--duration", type=float, required=True, help="the duration it must decode to")

    c = sub.add_parser("assemble", help="concatenate a profile's encoded chunks into one rendition")
    c.add_argument("--profile", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--inputs", default=None, help="JSON list of encode results (or @file)")
    c.add_argument("--encoded", default=None, help="or: the encode's --out-dir, read with --count")
    c.add_argument("--count", type=int, default=None, help="number of chunks (with --encoded)")

    c = sub.add_parser("quality", help="VMAF and PSNR of an encoded chunk against its source chunk")
    c.add_argument("--reference", required=True)
    c.add_argument("--distorted", required=True)
    c.add_argument("--profile", required=True)
    c.add_argument("--index", type=int, default=None)
    c.add_argument("--mode", choices=["full", "sampled"], default="full")
    c.add_argument("--first-frame", type=int, default=0, help="frame number of the first frame (sampling)")

    c = sub.add_parser("audio", help="encode the source's audio once (AAC), for packaging")
    c.add_argument("--source", required=True)
    c.add_argument("--out", required=True)

    c = sub.add_parser("package", help="package renditions as HLS and DASH (fMP4/CMAF)")
    c.add_argument("--source", required=True, help="the source (its audio is encoded unless --audio)")
    c.add_argument("--audio", default=None, help="the audio step's AAC file (copied); '' for no audio")
    c.add_argument("--renditions", required=True, help="JSON list of assemble results (or @file)")
    c.add_argument("--qualities", default="[]", help="JSON list of encode or quality results (or @file)")
    c.add_argument("--out", required=True)
    c.add_argument("--segment-seconds", type=float, default=2.0)

    c = sub.add_parser("publish", help="copy a packaged tree to its destination (file:// only)")
    c.add_argument("--from", dest="src", required=True)
    c.add_argument("--to", required=True)
    c.add_argument(
        "--overwrite",
        nargs="?",
        const="true",
        default="false",
        type=_boolean,
        help="replace an earlier Cosmos publish there (--overwrite, or --overwrite=true|false)",
    )
    c.add_argument(
        "--within", default="", help="refuse a destination that is not (or no longer) inside this directory"
    )

    c = sub.add_parser("verify", help="check the HLS and DASH manifests and decode them fully")
    c.add_argument("--hls", required=True)
    c.add_argument("--mpd", required=True)
    c.add_argument("--expect-duration", type=float, required=True)

    c = sub.add_parser("clean", help="remove an encode's scratch directory (inside --within)")
    c.add_argument("--work", required=True, help="the encode's scratch directory")
    c.add_argument("--within", required=True, help="the tenant's scratch area it must lie in")
    c.add_argument(
        "--keep-resumable",
        action="store_true",
        help="remove only partial files; keep finished outputs for a retry of the encode (after a failure)",
    )

    c = sub.add_parser("make-test-clip", help="write a synthetic test clip (moving video, sine audio)")
    c.add_argument("--out", required=True)
    c.add_argument("--seconds", type=float, default=20.0)
    c.add_argument("--size", default="1920x1080")
    c.add_argument("--fps", type=float, default=24.0)

    sub.add_parser("profiles", help="list the profile catalog")
    return p


def _boolean(value: str) -> bool:
    """``true``/``false`` as a workflow template renders a boolean (also 1/0, yes/no)."""
    text = value.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _json_list(value: str, flag: str) -> list[Any]:
    from cosmos.optimus.media.assemble import load_json_arg

    data = load_json_arg(value, flag)
    if not isinstance(data, list):
        raise MediaError(f"{flag} must be a JSON list")
    return data


def _names(value: str) -> list[str]:
    """Profile names given as a JSON list (what a workflow template renders) or ``a,b,c``."""
    if value.lstrip().startswith("["):
        names = _json_list(value, "--profiles")
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
    return [str(n) for n in names]


def _facts(args: argparse.Namespace) -> ChunkFacts | None:
    """The chunk's facts when the caller passed all of them (the workflow does, from ``split``)."""
    if args.duration is None or args.fps is None or not args.size:
        return None
    width, sep, height = str(args.size).partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise InputError(f"--size must be WIDTHxHEIGHT, got {args.size!r}")
    return ChunkFacts(args.duration, args.fps, int(width), int(height))


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Execute one parsed command and return its result object."""
    cmd = args.command
    if cmd == "probe":
        from cosmos.optimus.media.probe import probe

        return probe(args.source).to_dict()
    if cmd == "split":
        from cosmos.optimus.media.chunks import split

        return split(args.source, args.work, args.chunk_seconds, progress, args.max_chunks)
    if cmd == "encode":
        from cosmos.optimus.media.encode import encode_chunk

        return encode_chunk(
            args.chunk,
            _names(args.profiles),
            args.out_dir,
            progress,
            index=args.index,
            start=args.start,
            quality=QualityMode(args.quality),
            threads=args.threads,
            known=_facts(args),
            source=args.source,
            portable=args.portable,
        )
    if cmd == "verify-chunk":
        from cosmos.optimus.media.integrity import verify_chunk

        return verify_chunk(args.path, args.duration)
    if cmd == "assemble":
        from cosmos.optimus.media.assemble import assemble, chunk_results

        if (args.inputs is None) == (args.encoded is None) or (
            args.encoded is not None and args.count is None
        ):
            raise InputError("assemble takes --inputs JSON, or --encoded DIR with --count N")
        if args.inputs is not None:
            inputs = _json_list(args.inputs, "--inputs")
        else:
            inputs = chunk_results(args.encoded, args.profile, args.count)
        return assemble(args.profile, args.out, inputs, progress)
    if cmd == "quality":
        from cosmos.optimus.media.quality import quality

        return quality(
            args.reference,
            args.distorted,
            args.profile,
            args.index,
            progress,
            mode=QualityMode(args.mode),
            first_frame=args.first_frame,
        )
    if cmd == "audio":
        from cosmos.optimus.media.package import encode_audio

        return encode_audio(args.source, args.out, progress)
    if cmd == "package":
        from cosmos.optimus.media.package import package

        return package(
            args.source,
            _json_list(args.renditions, "--renditions"),
            _json_list(args.qualities, "--qualities"),
            args.out,
            args.segment_seconds,
            progress,
            audio_file=args.audio,
        )
    if cmd == "publish":
        from cosmos.optimus.media.publish import publish

        return publish(args.src, args.to, progress, overwrite=args.overwrite, within=args.within or None)
    if cmd == "verify":
        from cosmos.optimus.media.verify import verify

        return verify(args.hls, args.mpd, args.expect_duration, progress)
    if cmd == "clean":
        from cosmos.optimus.media.scratch import clean

        return clean(args.work, args.within, args.keep_resumable)
    if cmd == "make-test-clip":
        from cosmos.optimus.media.testclip import make_test_clip

        return make_test_clip(args.out, args.seconds, args.size, args.fps, progress)
    if cmd == "profiles":
        return {"profiles": profiles.catalog(), "ladders": {k: list(v) for k, v in profiles.LADDERS.items()}}
    raise MediaError(f"unknown command {cmd!r}")  # pragma: no cover - argparse rejects it first


def write_result(result: dict[str, Any]) -> None:
    """Store the result in ``$COSMOS_RESULT_FILE`` (if set) and print it as the last stdout line."""
    text = json.dumps(result, separators=(",", ":"), sort_keys=False)
    path = os.environ.get("COSMOS_RESULT_FILE")
    if path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with replacing(target) as tmp:
            tmp.write_text(text + "\n")
    sys.stdout.write(RESULT_PREFIX + text + "\n")
    sys.stdout.flush()


def write_failure(code: str, permanent: bool, message: str) -> None:
    """Declare why the command failed in ``$COSMOS_FAILURE_FILE`` (if set): Stratum's failure class
    (a permanent failure is not retried) and a stable code; never raises."""
    path = os.environ.get("COSMOS_FAILURE_FILE")
    if not path:
        return
    text = json.dumps(
        {"class": "permanent" if permanent else "transient", "code": code, "message": message[:2000]}
    )
    try:
        with replacing(Path(path)) as tmp:
            tmp.write_text(text + "\n")
    except OSError:
        pass  # a full disk may refuse even this; the agent then sees the stderr line


def _fail(command: str, message: str, code: str, permanent: bool, exit_code: int) -> int:
    print(f"error: {command}: {message}", file=sys.stderr)
    write_failure(code, permanent, message)
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parser().parse_args(argv)
    progress = Progress.from_env()
    try:
        result = run(args, progress)
    except MediaError as exc:
        return _fail(args.command, str(exc), exc.code, exc.permanent, exc.exit_code)
    except profiles.UnknownProfileError as exc:
        return _fail(args.command, str(exc), "INVALID_ARGUMENT", True, 2)
    except OSError as exc:
        # A full disk fails the same way on a retry; another I/O error may not.
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {exc.filename}" if exc.filename else ""
            return _fail(args.command, f"disk full{where}: {exc.strerror}", "NO_SPACE", True, 1)
        return _fail(args.command, f"I/O error: {exc}", "IO_ERROR", False, 1)
    except KeyboardInterrupt:
        print(f"error: {args.command}: interrupted", file=sys.stderr)
        return 130
    progress.span(0, 100).report(force=True, percent=100.0, eta_seconds=0.0, message="done")
    write_result(result)
    return 0
