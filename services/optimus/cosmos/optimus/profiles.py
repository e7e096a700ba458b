"""The encoding profile catalog: one named rendition recipe per rung of an adaptive-bitrate ladder.

A :class:`Profile` says what a rendition looks like (frame size, codec) and how the media tool encodes
it (encoder, rate control, bitrate cap) and what a Stratum job needs to run it (``resources``, a
JobSpec-JSON ``Resources`` object). The media tool (``python -m cosmos.optimus.media``) looks profiles
up by name here; Optimus passes :meth:`Profile.to_dict` to the workflow as input.

Rate control is capped CRF everywhere: quality-targeted VBR (``-crf``) whose peaks are bounded by a
VBV model (``-maxrate``/``-bufsize = 2 x maxrate``), so easy content gets fewer bits and hard content
never exceeds the rung's documented bitrate. GOP structure (2 s, closed, no scene-cut keyframes) is not
part of a profile: the media tool adds it per chunk from the chunk's frame rate so that every rendition
of a title has keyframes at the same instants.

Chunk jobs: the ladder encodes each chunk of the source once per *group* of profiles, not once per
profile: :func:`groups` puts every software profile into one group (one job per chunk, decoding the
chunk once for all of them and running each encoder single-threaded, as the hand-written ladder
command does) and every NVENC profile into another (placed on a GPU agent). A software group reserves
one core (:data:`CHUNK_CPU_MILLIS`; parallelism comes from running many chunks at once, which costs
less CPU than encoder threads) and the sum of its profiles' memory; a GPU group one GPU.

Names: ``1080p``, ``720p``, ``540p``, ``360p`` (H.264, libx264), plus ``<rung>-hevc`` (libx265),
``<rung>-av1`` (libsvtav1) and ``<rung>-nvenc`` (h264_nvenc, needs an NVIDIA GPU).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2

from cosmos import errors

__all__ = [
    "CHUNK_CPU_MILLIS",
    "LADDERS",
    "Profile",
    "UnknownLadderError",
    "UnknownProfileError",
    "catalog",
    "get",
    "groups",
    "ladder_input",
    "names",
    "resolve",
]

_GIB = 1024**3
CHUNK_CPU_MILLIS = 1000
"""CPU a software chunk job reserves: one core (its encoders run one thread each)."""


class UnknownProfileError(errors.CosmosError, KeyError):
    """A profile name that is not in the catalog; the message lists the known names.

    Also a ``KeyError``, as a failed catalog lookup: Optimus' API catches ``KeyError`` from
    :func:`resolve` (either error) and names the offending field."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown profile {self.name!r}; known profiles: {', '.join(self.known)}"


class UnknownLadderError(errors.CosmosError, KeyError):
    """A ladder name that is not defined; the message lists the known ladders.

    Also a ``KeyError``, like :class:`UnknownProfileError`."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown ladder {self.name!r}; known ladders: {', '.join(self.known)}"


@dataclass(frozen=True)
class Profile:
    """One rendition recipe.

    ``width``/``height`` is the bounding box: the source is scaled to fit inside it keeping its aspect
    ratio (even dimensions), so a 16:9 source at ``720p`` becomes 1280x720 and a 4:3 one 960x720.
    ``args`` are the encoder's ffmpeg output options (codec, preset, rate control) without GOP options.
    """

    name: str
    width: int
    height: int
    codec: str  # "h264", "hevc" or "av1": the bitstream format
    encoder: str  # the ffmpeg encoder: "libx264", "libx265", "libsvtav1", "h264_nvenc"
    args: tuple[str, ...]
    max_bitrate: int  # bits per second: the VBV cap (-maxrate)
    bufsize: int  # bits: the VBV buffer (-bufsize)
    resources: dict[str, Any] = field(default_factory=dict)
    requires_gpu: bool = False
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the workflow input and the catalog listing)."""
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "codec": self.codec,
            "encoder": self.encoder,
            "args": list(self.args),
            "max_bitrate": self.max_bitrate,
            "bufsize": self.bufsize,
            "resources": _copy_resources(self.resources),
            "requires_gpu": self.requires_gpu,
            "description": self.description,
        }


def _copy_resources(resources: dict[str, Any]) -> dict[str, Any]:
    return {k: dict(v) if isinstance(v, dict) else v for k, v in resources.items()}


def _resources(cpu_millis: int, memory_gib: int, *, gpu: bool = False) -> dict[str, Any]:
    # JobSpec JSON (proto3 JSON mapping): int64 values are strings, field names lowerCamelCase.
    res: dict[str, Any] = {"cpuMillis": cpu_millis, "memoryBytes": str(memory_gib * _GIB)}
    if gpu:
        res["gpu"] = {"count": 1}
    return res


# rung -> (width, height, max bitrate in kb/s for H.264)
_RUNGS: dict[str, tuple[int, int, int]] = {
    "1080p": (1920, 1080, 5000),
    "720p": (1280, 720, 3000),
    "540p": (960, 540, 2000),
    "360p": (640, 360, 1000),
}
# CPU reservation per rung for software encoders (x264 threads scale with frame size).
_CPU_MILLIS = {"1080p": 2000, "720p": 1000, "540p": 1000, "360p": 1000}
_MEMORY_GIB = {"1080p": 2, "720p": 1, "540p": 1, "360p": 1}


def _h264(rung: str) -> Profile:
    w, h, kbps = _RUNGS[rung]
    return Profile(
        name=rung,
        width=w,
        height=h,
        codec="h264",
        encoder="libx264",
        args=(
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "high",
            "-crf",
            "23",
            "-maxrate",
            f"{kbps}k",
            "-bufsize",
            f"{2 * kbps}k",
        ),
        max_bitrate=kbps * 1000,
        bufsize=2 * kbps * 1000,
        resources=_resources(_CPU_MILLIS[rung], _MEMORY_GIB[rung]),
        description=f"H.264 High {w}x{h}, CRF 23 capped at {kbps / 1000:g} Mb/s, x264 veryfast",
    )


def _hevc(rung: str) -> Profile:
    w, h, h264_kbps = _RUNGS[rung]
    kbps = h264_kbps * 7 // 10  # HEVC needs ~30 % fewer bits for the same quality
    return Profile(
        name=f"{rung}-hevc",
        width=w,
        height=h,
        codec="hevc",
        encoder="libx265",
        args=(
            "-c:v",
            "libx265",
            "-preset",
            "faster",
            "-crf",
            "26",
            "-maxrate",
            f"{kbps}k",
            "-bufsize",
            f"{2 * kbps}k",
            "-tag:v",
            "hvc1",
        ),
        max_bitrate=kbps * 1000,
        bufsize=2 * kbps * 1000,
        resources=_resources(2 * _CPU_MILLIS[rung], 2 * _MEMORY_GIB[rung]),
        description=f"HEVC Main {w}x{h}, CRF 26 capped at {kbps / 1000:g} Mb/s, x265 faster",
    )


def _av1(rung: str) -> Profile:
    w, h, h264_kbps = _RUNGS[rung]
    kbps = h264_kbps * 6 // 10  # AV1 needs ~40 % fewer bits than H.264
    return Profile(
        name=f"{rung}-av1",
        width=w,
        height=h,
        codec="av1",
        encoder="libsvtav1",
        args=("-c:v", "libsvtav1", "-preset", "10", "-crf", "35", "-maxrate", f"{kbps}k"),
        max_bitrate=kbps * 1000,
        bufsize=2 * kbps * 1000,
        resources=_resources(2 * _CPU_MILLIS[rung], 2 * _MEMORY_GIB[rung]),
        description=f"AV1 Main {w}x{h}, CRF 35 capped at {kbps / 1000:g} Mb/s, SVT-AV1 preset 10",
    )


def _nvenc(rung: str) -> Profile:
    w, h, kbps = _RUNGS[rung]
    return Profile(
        name=f"{rung}-nvenc",
        width=w,
        height=h,
        codec="h264",
        encoder="h264_nvenc",
        args=(
            "-c:v",
            "h264_nvenc",
            "-preset",
            "p4",
            "-tune",
            "hq",
            "-profile:v",
            "high",
            "-rc",
            "vbr",
            "-cq",
            "23",
            "-b:v",
            "0",
            "-maxrate",
            f"{kbps}k",
            "-bufsize",
            f"{2 * kbps}k",
        ),
        max_bitrate=kbps * 1000,
        bufsize=2 * kbps * 1000,
        resources=_resources(500, 1, gpu=True),
        requires_gpu=True,
        description=f"H.264 High {w}x{h}, NVENC CQ 23 capped at {kbps / 1000:g} Mb/s (GPU)",
    )


def _build() -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    for make in (_h264, _hevc, _av1, _nvenc):
        for rung in _RUNGS:
            p = make(rung)
            profiles[p.name] = p
    return profiles


_CATALOG: dict[str, Profile] = _build()

LADDERS: dict[str, tuple[str, ...]] = {
    "default": ("1080p", "720p", "360p"),
    "full": ("1080p", "720p", "540p", "360p"),
}


def names() -> list[str]:
    """Every profile name, in catalog order (H.264 first, tallest rung first)."""
    return list(_CATALOG)


def get(name: str) -> Profile:
    """The profile called ``name``; :class:`UnknownProfileError` (a ``KeyError``) lists known names."""
    try:
        return _CATALOG[name]
    except KeyError:
        raise UnknownProfileError(name, _CATALOG) from None


def resolve(profiles: list[str] | None = None, ladder: str = "default") -> list[Profile]:
    """Profiles for a request: the explicit ``profiles`` (in order, duplicates dropped) when given,
    otherwise the named ``ladder``."""
    if profiles:
        chosen = list(dict.fromkeys(profiles))
    else:
        try:
            chosen = list(LADDERS[ladder or "default"])
        except KeyError:
            raise UnknownLadderError(ladder, LADDERS) from None
    return [get(n) for n in chosen]


def catalog() -> list[dict[str, Any]]:
    """The whole catalog as JSON-able dicts."""
    return [p.to_dict() for p in _CATALOG.values()]


def groups(chosen: Iterable[Profile]) -> list[dict[str, Any]]:
    """The chunk-job groups of a ladder (JSON-able, the workflow's fan-out input): software profiles
    together, NVENC profiles together; each with its profile names, Stratum resources and the threads
    per encoder the media tool uses (0: the encoder's own choice)."""
    members: dict[str, list[Profile]] = {}
    for p in chosen:
        members.setdefault("gpu" if p.requires_gpu else "cpu", []).append(p)
    result = []
    for name, ps in members.items():
        memory = sum(int(p.resources.get("memoryBytes") or 0) for p in ps)
        if name == "gpu":
            resources: dict[str, Any] = {"cpuMillis": 500, "memoryBytes": str(memory), "gpu": {"count": 1}}
            threads = 0
        else:
            resources = {"cpuMillis": CHUNK_CPU_MILLIS, "memoryBytes": str(memory)}
            threads = max(1, CHUNK_CPU_MILLIS // 1000)
        result.append(
            {"name": name, "profiles": [p.name for p in ps], "resources": resources, "threads": threads}
        )
    return result


@functools.lru_cache(maxsize=1024)
def ladder_input(names: tuple[str, ...]) -> tuple[dict[str, Any], struct_pb2.Struct]:
    """The ``profiles`` and ``groups`` of the workflow input for these (resolved) profile names, as a
    dict and as a ``Struct``, built once per ladder: the catalog is fixed, and converting the profile
    dicts is most of what building a submit's input costs. Shared: callers copy, never change them."""
    chosen = [get(name) for name in names]
    fields = {"profiles": [p.to_dict() for p in chosen], "groups": groups(chosen)}
    struct = struct_pb2.Struct()
    struct.update(fields)
    return fields, struct
