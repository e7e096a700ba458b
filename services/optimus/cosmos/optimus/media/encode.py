"""Encoding one chunk into every rendition of a ladder: the chunk's files and their results.

GOP alignment: every chunk starts with a keyframe (see :mod:`chunks`), and each encode restarts the
GOP there with a fixed length of 2 s worth of frames, closed, with scene-cut keyframes disabled. All
renditions therefore have keyframes at the same instants, and the packager can cut every rendition at
the same points (segment-aligned ABR).

Assembling a rendition from its encoded chunks is :mod:`cosmos.optimus.media.assemble`'s.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmos.optimus import profiles
from cosmos.optimus.media import resume
from cosmos.optimus.media.chunks import chunk_index, gop_frames
from cosmos.optimus.media.ffmpeg import (
    CorruptMedia,
    FfmpegError,
    MediaError,
    Progress,
    run_ffmpeg,
    stderr_tail,
)
from cosmos.optimus.media.files import replacing, write_json
from cosmos.optimus.media.probe import MediaInfo, probe, require_file
from cosmos.optimus.media.quality import (
    QualityMode,
    measure_chains,
    measure_outputs,
    parse_measurements,
    sample_stride,
)

__all__ = ["ChunkFacts", "chunk_output", "encode_chunk", "gop_args", "result_path", "scale_filter"]


def gop_args(profile: profiles.Profile, fps: float) -> list[str]:
    """Encoder options for a fixed, closed GOP (:func:`chunks.gop_frames`) without scene-cut keyframes."""
    g = gop_frames(fps)
    common = ["-g", str(g), "-keyint_min", str(g)]
    if profile.encoder == "libx264":
        return [*common, "-sc_threshold", "0", "-flags", "+cgop"]
    if profile.encoder == "libx265":
        return [*common, "-x265-params", f"keyint={g}:min-keyint={g}:scenecut=0:open-gop=0:log-level=error"]
    if profile.encoder == "libsvtav1":
        return [*common, "-svtav1-params", "scd=0:irefresh-type=2"]
    if profile.encoder.endswith("_nvenc"):
        return [*common, "-no-scenecut", "1", "-forced-idr", "1", "-strict_gop", "1"]
    return [*common, "-sc_threshold", "0"]


def scale_filter(profile: profiles.Profile) -> str:
    """Fit the frame into the profile's box keeping the aspect ratio; even sizes; timestamps from 0."""
    return (
        f"scale=w={profile.width}:h={profile.height}:force_original_aspect_ratio=decrease"
        ":force_divisible_by=2:flags=bicubic,setsar=1,setpts=PTS-STARTPTS,format=yuv420p"
    )


@dataclass(frozen=True)
class ChunkFacts:
    """What the chunk encoder needs to know about its chunk (from ``split``, or a probe)."""

    duration: float
    fps: float
    width: int
    height: int

    @classmethod
    def of(cls, info: MediaInfo) -> ChunkFacts:
        return cls(info.duration, info.fps, info.width, info.height)


def chunk_output(out_dir: str | Path, profile: str, index: int, key: str = "") -> Path:
    """Where chunk ``index`` of ``profile`` goes: ``<out_dir>/<profile>/chunk_NNNNN.<key>.mp4``, named
    by the content key (:mod:`cosmos.optimus.media.resume`); without a key ``chunk_NNNNN.mp4``, whose
    ``.json`` sibling is the chunk's result (:func:`result_path`)."""
    name = f"chunk_{index:05d}.{key}.mp4" if key else f"chunk_{index:05d}.mp4"
    return Path(out_dir).absolute() / profile / name


def encode_chunk(
    chunk: str,
    profile_names: Sequence[str],
    out_dir: str,
    progress: Progress,
    *,
    index: int | None = None,
    start: float = 0.0,
    quality: QualityMode = QualityMode.SAMPLED,
    threads: int = 0,
    known: ChunkFacts | None = None,
    source: str = "",
    portable: bool = False,
) -> dict[str, Any]:
    """Encode one chunk into every profile of ``profile_names`` and measure the results, in one ffmpeg.

    The chunk is decoded once: a ``split`` feeds one scale + encoder chain per profile (as the
    hand-written ladder command does). Unless ``quality`` is off, each encoder's output is decoded
    again inside the same process (a loopback decoder, ``-dec``) and measured against the decoded
    source frames (:mod:`quality`), so measuring adds no second decode of the source. ``threads`` > 0
    caps each encoder and the decoder at that many threads (a chunk job reserves about one core:
    parallelism comes from running many chunks, which costs less CPU than x264's frame threads);
    0 lets ffmpeg decide. ``start`` (seconds into the title) numbers the frames for sampling.
    ``known``: the chunk's facts from ``split`` (saves probing it again). The chunk is decoded with
    ``-xerror``: a damaged frame fails the encode as :class:`CorruptMedia` naming ``source`` (the
    title the chunk was cut from) instead of encoding a concealed picture.

    ``portable``: for a job that sees only its work dir (a container job, the chunk staged into it,
    ``out_dir`` copied out afterwards): each result names its file relative to the result file
    (:func:`chunk_results` resolves it), and the content key is taken from the chunk (its size and
    modification time; ``source`` is not reachable there) instead of the source.
    """
    chosen = [profiles.get(n) for n in dict.fromkeys(profile_names)]
    if not chosen:
        raise MediaError("--profiles is empty")
    if index is None:
        index = chunk_index(chunk)
    if index is None:
        raise MediaError(f"--index is required: {chunk!r} is not named chunk_NNNNN")
    if known is None:
        info = probe(chunk, what="chunk", count_frames=False)
        facts, path = ChunkFacts.of(info), info.path
    else:
        facts, path = known, str(require_file(chunk, "chunk"))
    duration, fps = facts.duration, facts.fps
    resume.injected_fault(out_dir, index)
    key = resume.content_key(
        source="" if portable else source, chunk=path, index=index, start=start, duration=duration,
        fps=fps, chosen=chosen, gop=[gop_args(p, fps) for p in chosen], quality=quality.value,
    )  # fmt: skip
    outs = [chunk_output(out_dir, p.name, index, key) for p in chosen]
    results = [result_path(chunk_output(out_dir, p.name, index)) for p in chosen]
    named = [o.name if portable else str(o) for o in outs]  # what each result records as its path
    done = resume.reusable(outs, results, key, duration, named)
    if done is not None:  # encoded from this very content before, and whole: not encoded again
        return {"index": index, "chunk": path, "duration": duration, "quality": quality.value,
                "renditions": done, "reused": True}  # fmt: skip
    for o in outs:
        o.parent.mkdir(parents=True, exist_ok=True)
    files = contextlib.ExitStack()
    tmps = [files.enter_context(replacing(o)) for o in outs]
    n = len(chosen)
    graph = "[0:v:0]" + (f"split={n}" + "".join(f"[s{i}]" for i in range(n)) if n > 1 else "null[s0]")
    chains = [graph] + [f"[s{i}]{scale_filter(p)}[v{i}]" for i, p in enumerate(chosen)]
    thread_args = ["-threads", str(threads)] if threads > 0 else []
    args = ["-xerror", *thread_args, "-i", path, "-filter_complex", ";".join(chains)]
    for i, (p, tmp) in enumerate(zip(chosen, tmps, strict=True)):
        args += ["-map", f"[v{i}]", "-an", "-sn", "-dn", "-pix_fmt", "yuv420p", *p.args]
        args += [*gop_args(p, fps)]
        if not p.requires_gpu:
            args += thread_args
        args += ["-f", "mp4", str(tmp)]
    names = ", ".join(p.name for p in chosen)
    what = f"encoding {path} with profile(s) {names}"
    if any(p.requires_gpu for p in chosen):
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        what += f" (needs an NVIDIA GPU with NVENC; CUDA_VISIBLE_DEVICES={gpus!r})"
    with tempfile.TemporaryDirectory(prefix="cosmos-vmaf-") as tmp_dir:
        logs = [Path(tmp_dir) / f"vmaf-{i}.json" for i in range(n)]
        if quality is not QualityMode.OFF:
            measure, labels = measure_chains(
                "[0:v:0]",
                [f"[dec:{i}]" for i in range(n)],
                width=facts.width,
                height=facts.height,
                stride=sample_stride(quality, fps),
                first_frame=round(start * (fps or 24.0)),
                logs=logs,
                threads=threads,
            )
            for i in range(n):
                args += [*thread_args, "-dec", f"{i}:0"]
            args += ["-filter_complex", ";".join(measure), *measure_outputs(labels)]
        with files:  # every output renamed into place only if ffmpeg succeeded
            try:
                run = run_ffmpeg(
                    args,
                    what=what,
                    progress=progress,
                    duration=duration,
                    message=f"encoding {names}",
                    loglevel="info" if quality is not QualityMode.OFF else "warning",
                )
            except FfmpegError as exc:
                if exc.code != "CORRUPT_INPUT":
                    raise
                title = (
                    f"source {source} is corrupt: chunk {index}" if source else f"chunk {path} is corrupt:"
                )
                raise CorruptMedia(
                    f"{title} ({path}) does not decode: {stderr_tail(exc.stderr, 2)}"
                ) from None
        measured = parse_measurements(run.stderr, logs) if quality is not QualityMode.OFF else []
    renditions = []
    for i, (p, out, name) in enumerate(zip(chosen, outs, named, strict=True)):
        size = out.stat().st_size
        rendition: dict[str, Any] = {
            "profile": p.name,
            "index": index,
            "key": key,
            "path": name,
            "bytes": size,
            "duration": duration,
            "bitrate": int(size * 8 / duration) if duration else 0,
        }
        if measured:
            rendition.update(measured[i].to_dict())
        write_json(result_path(chunk_output(out_dir, p.name, index)), rendition)
        renditions.append(rendition)
    if portable:
        _readable_tree(Path(out_dir).absolute())
    return {
        "index": index,
        "chunk": path,
        "duration": duration,
        "quality": quality.value,
        "renditions": renditions,
    }


def _readable_tree(top: Path) -> None:
    """Make ``top`` readable beyond its owner (directories 0755, files 0644). A portable encode's
    ``out`` is copied out by the agent, which keeps the modes; as root, the agent owns the copy, and
    the tenant's later jobs (assemble) read it as others. The tenant's area above it stays private."""
    for dirpath, _, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def result_path(chunk_file: Path) -> Path:
    """The result kept next to an encoded chunk (``chunk_NNNNN.json``): what ``assemble --encoded`` reads,
    so no step has to pass every chunk's result on its command line (a long title has thousands)."""
    return chunk_file.with_suffix(".json")
