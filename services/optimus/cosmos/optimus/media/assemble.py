"""Assembling a rendition from its encoded chunks (``assemble``): the chunks' results, read from the
files the chunk encodes left (:func:`chunk_results`) or given as JSON, concatenated in index order
without a re-encode.

The chunk encodes and where their files and results lie are :mod:`cosmos.optimus.media.encode`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cosmos.optimus import profiles
from cosmos.optimus.media.chunks import chunk_index
from cosmos.optimus.media.encode import chunk_output, result_path
from cosmos.optimus.media.ffmpeg import MediaError, Progress, run_ffmpeg
from cosmos.optimus.media.files import replacing
from cosmos.optimus.media.probe import probe, require_file
from cosmos.optimus.media.quality import aggregate

__all__ = ["IMAGE_JOBS", "assemble", "chunk_results", "flatten", "load_json_arg"]


IMAGE_JOBS = "jobs"
"""Under an encode's ``--out-dir``: ``jobs/<index>/<group>/``, the ``out`` directory of each chunk
encode that ran in a container (``encode --portable``), copied there by the agent (a job output)."""


def _result_file(encoded: str, profile: str, index: int) -> Path:
    """Chunk ``index``'s result for ``profile``: ``<encoded>/<profile>/chunk_NNNNN.json`` (written in
    place by a host-process encode) or else ``<encoded>/jobs/<index>/<group>/<profile>/...`` (copied
    out of a container encode); the first when neither exists."""
    direct = result_path(chunk_output(encoded, profile, index))
    if direct.exists():
        return direct
    relative = direct.relative_to(Path(encoded).absolute())
    copied = sorted((Path(encoded).absolute() / IMAGE_JOBS / str(index)).glob(f"*/{relative}"))
    return copied[0] if copied else direct


def chunk_results(encoded: str, profile: str, count: int) -> list[dict[str, Any]]:
    """The results of chunks ``0..count-1`` of ``profile`` under ``encoded`` (see :data:`IMAGE_JOBS`
    and :func:`cosmos.optimus.media.encode.result_path`), each ``path`` made absolute (a portable
    result names its file relative to the result file)."""
    results: list[dict[str, Any]] = []
    missing: list[int] = []
    for i in range(count):
        path = _result_file(encoded, profile, i)
        try:
            result = json.loads(path.read_text())
        except FileNotFoundError:
            missing.append(i)
            continue
        except (OSError, ValueError) as exc:
            raise MediaError(f"--encoded: unreadable chunk result {path}: {exc}") from None
        if not isinstance(result, dict) or not isinstance(result.get("path"), str):
            raise MediaError(f"--encoded: {path} is not a chunk result")
        result["path"] = str(path.parent / result["path"])  # an absolute path stays as it is
        results.append(result)
    if missing:
        raise MediaError(f"--encoded: profile {profile!r} is missing chunk(s) {missing}")
    return results


def flatten(results: Sequence[Any], flag: str) -> list[dict[str, Any]]:
    """Per-rendition results from a list of step results: chunk-encode results (``renditions`` inside)
    are opened up, anything else with a ``profile`` is taken as it is."""
    items: list[dict[str, Any]] = []
    for item in results:
        if isinstance(item, dict) and isinstance(item.get("renditions"), list):
            items += [r for r in item["renditions"] if isinstance(r, dict)]
        elif isinstance(item, dict):
            items.append(item)
        else:
            raise MediaError(f"{flag}: not a result object: {item!r}")
    return items


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


def _concat_line(path: str) -> str:
    return "file '" + path.replace("'", "'\\''") + "'\n"


def assemble(profile_name: str, out: str, inputs: list[Any], progress: Progress) -> dict[str, Any]:
    """Concatenate the encoded chunks of ``profile_name`` in index order into one rendition (no
    re-encode); the result carries the rendition's quality aggregated over its chunks."""
    profiles.get(profile_name)
    if not isinstance(inputs, list):
        raise MediaError("--inputs must be a JSON list of encode results")
    by_index: dict[int, str] = {}
    seconds: dict[int, float] = {}
    mine = [i for i in flatten(inputs, "--inputs") if i.get("profile", profile_name) == profile_name]
    for item in mine:
        if "path" not in item:
            raise MediaError(f"--inputs: not an encode result: {item!r}")
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
    try:
        with replacing(out_path) as tmp:
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
    finally:
        listing.unlink(missing_ok=True)
    result = _describe(out_path, profile_name)
    result["chunks"] = len(paths)
    result.update(aggregate(mine))
    return result
