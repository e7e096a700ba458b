"""Encoding one chunk with one profile, and assembling a rendition from its encoded chunks.

GOP alignment: every chunk starts with a keyframe (see :mod:`chunks`), and each encode restarts the
GOP there with a fixed length of 2 s worth of frames, closed, with scene-cut keyframes disabled. All
renditions therefore have keyframes at the same instants, and the packager can cut every rendition at
the same points (segment-aligned ABR).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cosmos.optimus import profiles
from cosmos.optimus.media.chunks import chunk_index
from cosmos.optimus.media.ffmpeg import MediaError, Progress, run_ffmpeg
from cosmos.optimus.media.probe import probe, require_file

__all__ = ["GOP_SECONDS", "assemble", "encode", "gop_args", "load_json_arg"]

GOP_SECONDS = 2.0


def gop_args(profile: profiles.Profile, fps: float) -> list[str]:
    """Encoder options for a fixed, closed GOP of ``GOP_SECONDS`` at ``fps`` without scene-cut keyframes."""
    g = max(1, round(GOP_SECONDS * (fps or 24.0)))
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


def _tmp_for(out: Path) -> Path:
    return out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")


def _describe(path: Path, profile: str) -> dict[str, Any]:
    info = probe(path, what="output")
    size = path.stat().st_size
    return {
        "path": str(path),
        "bytes": size,
        "duration": info.duration,
        "width": info.width,
        "height": info.height,
        "bitrate": int(size * 8 / info.duration) if info.duration else 0,
        "frames": info.frames,
        "fps": info.fps,
        "codec": info.video_codec,
        "profile": profile,
    }


def encode(
    chunk: str, profile_name: str, out: str, duration: float | None, progress: Progress
) -> dict[str, Any]:
    """Encode ``chunk`` with ``profile_name`` into ``out`` (mp4, video only)."""
    profile = profiles.get(profile_name)
    info = probe(chunk, what="chunk", count_frames=duration is None)
    out_path = Path(out).absolute()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(out_path)
    what = f"encoding {info.path} with profile {profile.name}"
    if profile.requires_gpu:
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        what += f" (needs an NVIDIA GPU with NVENC; CUDA_VISIBLE_DEVICES={gpus!r})"
    try:
        run_ffmpeg(
            [
                "-i",
                info.path,
                "-map",
                "0:v:0",
                "-an",
                "-sn",
                "-dn",
                "-vf",
                scale_filter(profile),
                "-pix_fmt",
                "yuv420p",
                *profile.args,
                *gop_args(profile, info.fps),
                "-f",
                "mp4",
                str(tmp),
            ],
            what=what,
            progress=progress,
            duration=duration or info.duration,
            message=f"encoding {profile.name}",
        )
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    result = _describe(out_path, profile.name)
    index = chunk_index(chunk)
    if index is not None:
        result["index"] = index
    result["chunk"] = info.path
    return result


def load_json_arg(value: str, flag: str) -> Any:
    """A JSON flag value: inline JSON, or ``@path`` / a path to a file holding it (for long lists)."""
    text = value
    if value.startswith("@"):
        text = Path(value[1:]).read_text()
    elif not value.lstrip().startswith(("[", "{")) and Path(value).is_file():
        text = Path(value).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MediaError(f"{flag}: invalid JSON: {exc}") from None


def _concat_line(path: str) -> str:
    return "file '" + path.replace("'", "'\\''") + "'\n"


def assemble(profile_name: str, out: str, inputs: list[Any], progress: Progress) -> dict[str, Any]:
    """Concatenate the encoded chunks of ``profile_name`` in index order into one rendition (no re-encode)."""
    profiles.get(profile_name)
    if not isinstance(inputs, list):
        raise MediaError("--inputs must be a JSON list of encode results")
    by_index: dict[int, str] = {}
    seconds: dict[int, float] = {}
    for item in inputs:
        if not isinstance(item, dict) or "path" not in item:
            raise MediaError(f"--inputs: not an encode result: {item!r}")
        if item.get("profile", profile_name) != profile_name:
            continue
        index = item.get("index")
        if index is None:
            index = chunk_index(str(item["path"]))
        if index is None:
            raise MediaError(f"--inputs: no chunk index in {item!r} (field 'index' or a chunk_N file name)")
        by_index[int(index)] = str(item["path"])
        if isinstance(item.get("duration"), int | float):
            seconds[int(index)] = float(item["duration"])
    if not by_index:
        raise MediaError(f"--inputs: no encoded chunks for profile {profile_name!r}")
    indices = sorted(by_index)
    missing = sorted(set(range(indices[-1] + 1)) - set(indices))
    if missing:
        raise MediaError(f"--inputs: profile {profile_name!r} is missing chunk(s) {missing}")
    paths = [str(require_file(by_index[i], "encoded chunk")) for i in indices]
    out_path = Path(out).absolute()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    listing = out_path.with_name(f".{out_path.stem}.concat-{os.getpid()}.txt")
    listing.write_text("".join(_concat_line(p) for p in paths))
    tmp = _tmp_for(out_path)
    try:
        run_ffmpeg(
            [
                "-f",
                "concat",
                "-safe",
                "0",
                "-i",
                str(listing),
                "-map",
                "0:v:0",
                "-c",
                "copy",
                "-movflags",
                "+faststart",
                "-f",
                "mp4",
                str(tmp),
            ],
            what=f"assembling {profile_name}",
            progress=progress,
            duration=sum(seconds.values()) or None,
            message=f"assembling {profile_name}",
        )
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
        listing.unlink(missing_ok=True)
    result = _describe(out_path, profile_name)
    result["chunks"] = len(paths)
    return result
