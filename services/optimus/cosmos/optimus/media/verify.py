"""Verifying a package: manifests well-formed, and every rendition decodes to the expected duration.

Checks, in order (the first failure ends the run with exit 1 and the reason):

1. the HLS master lists at least one variant, each with ``BANDWIDTH`` and ``RESOLUTION``, whose media
   playlist exists; at most one audio rendition group entry;
2. the MPD parses and lists as many video representations as the master has variants, and at most one
   audio representation;
3. ffmpeg decodes each manifest completely (``-f null``), with no decode errors, and every video
   stream's duration (decoded frames / frame rate) is within one frame of ``--expect-duration``; the
   audio stream, if any, within 0.2 s in HLS, and in DASH made of the same number of packets as in HLS
   (ffmpeg's DASH demuxer re-applies the AAC encoder delay at every segment, dropping 1024 samples per
   segment boundary on decode, so decoded DASH audio is not a fair measure of the stored audio).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cosmos.optimus.media.ffmpeg import InputError, MediaError, Progress, run_ffmpeg
from cosmos.optimus.media.package import parse_mpd

__all__ = ["DecodedStream", "VerifyError", "decode_manifest", "parse_master", "verify"]

AUDIO_TOLERANCE = 0.2
_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
_STREAM = re.compile(r"Stream #0:(\d+)\S*: (Video|Audio): (.*)")
_INPUT_STATS = re.compile(
    r"Input stream #0:(\d+) \((video|audio)\): (\d+) packets read .*?; (\d+) frames decoded;"
    r" (\d+) decode errors(?: \((\d+) samples\))?"
)
_SIZE = re.compile(r"\b(\d{2,5})x(\d{2,5})\b")
_FPS = re.compile(r"([\d.]+) fps")
_RATE = re.compile(r"(\d+) Hz")


class VerifyError(MediaError):
    """The package failed a check (exit 1)."""


@dataclass
class DecodedStream:
    """One stream of a fully decoded manifest."""

    index: int
    kind: str  # "video" or "audio"
    frames: int
    errors: int
    packets: int = 0
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    sample_rate: int | None = None
    samples: int | None = None

    @property
    def duration(self) -> float:
        if self.kind == "audio":
            return (self.samples or 0) / self.sample_rate if self.sample_rate else 0.0
        return self.frames / self.fps if self.fps else 0.0


def _local(path_or_uri: str, what: str) -> Path:
    if "://" in path_or_uri:
        parsed = urlparse(path_or_uri)
        if parsed.scheme != "file":
            raise InputError(f"{what}: only local paths and file:// URIs can be verified: {path_or_uri!r}")
        path = Path(unquote(parsed.path))
    else:
        path = Path(path_or_uri).absolute()
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    return path


def parse_master(path: Path) -> tuple[list[dict[str, str]], int]:
    """The variants of an HLS master playlist (attributes plus ``URI``) and its number of audio entries."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    if not lines or lines[0] != "#EXTM3U":
        raise VerifyError(f"{path} is not an M3U8 playlist")
    variants: list[dict[str, str]] = []
    audio = 0
    pending: dict[str, str] | None = None
    for line in lines[1:]:
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = {k: v.strip('"') for k, v in _ATTR.findall(line.split(":", 1)[1])}
        elif line.startswith("#EXT-X-MEDIA:") and "TYPE=AUDIO" in line:
            audio += 1
        elif line and not line.startswith("#") and pending is not None:
            pending["URI"] = line
            variants.append(pending)
            pending = None
    return variants, audio


def decode_manifest(path: Path, *, progress: Progress, duration: float, what: str) -> list[DecodedStream]:
    """Decode every stream of ``path`` (HLS or DASH) to null; per-stream frame and error counts."""
    run = run_ffmpeg(
        ["-i", str(path), "-map", "0:v", "-map", "0:a?", "-f", "null", "-"],
        what=f"decoding {what} {path}",
        progress=progress,
        duration=duration,
        message=f"decoding {what}",
        loglevel="verbose",
    )
    head = run.stderr.split("Stream mapping:", 1)[0]
    streams: dict[int, DecodedStream] = {}
    info: dict[int, tuple[str, str]] = {}
    for m in _STREAM.finditer(head):
        info.setdefault(int(m.group(1)), (m.group(2).lower(), m.group(3)))
    for m in _INPUT_STATS.finditer(run.stderr):
        idx, kind = int(m.group(1)), m.group(2)
        s = DecodedStream(idx, kind, frames=int(m.group(4)), errors=int(m.group(5)), packets=int(m.group(3)))
        details = info.get(idx, (kind, ""))[1]
        if kind == "video":
            size, fps = _SIZE.search(details), _FPS.search(details)
            s.width, s.height = (int(size.group(1)), int(size.group(2))) if size else (None, None)
            s.fps = float(fps.group(1)) if fps else None
        else:
            rate = _RATE.search(details)
            s.sample_rate = int(rate.group(1)) if rate else None
            s.samples = int(m.group(6)) if m.group(6) else None
        streams[idx] = s
    return [streams[i] for i in sorted(streams)]


def _check_decoded(
    streams: list[DecodedStream], expected: float, what: str, variants: int, *, audio_samples: bool
) -> list[float]:
    video = [s for s in streams if s.kind == "video"]
    audio = [s for s in streams if s.kind == "audio"]
    if len(video) != variants:
        raise VerifyError(f"{what}: decoded {len(video)} video streams, the manifest lists {variants}")
    if len(audio) > 1:
        raise VerifyError(f"{what}: {len(audio)} audio streams decoded, expected at most one")
    for s in streams:
        if s.errors:
            raise VerifyError(f"{what}: stream #{s.index} ({s.kind}) had {s.errors} decode errors")
    durations = []
    for s in video:
        if not s.fps:
            raise VerifyError(f"{what}: cannot tell the frame rate of video stream #{s.index}")
        if abs(s.duration - expected) > 1.0 / s.fps + 1e-6:
            raise VerifyError(
                f"{what}: rendition {s.width}x{s.height} lasts {s.duration:.3f}s ({s.frames} frames at"
                f" {s.fps:g} fps), expected {expected:.3f}s within one frame"
            )
        durations.append(round(s.duration, 6))
    for s in audio:
        if audio_samples and s.sample_rate and abs(s.duration - expected) > AUDIO_TOLERANCE:
            raise VerifyError(f"{what}: audio lasts {s.duration:.3f}s, expected {expected:.3f}s")
    return durations


def verify(hls: str, mpd: str, expect_duration: float, progress: Progress) -> dict[str, Any]:
    """Run every check; returns a summary or raises :class:`VerifyError`."""
    master = _local(hls, "HLS master playlist")
    manifest = _local(mpd, "MPD")
    variants, hls_audio = parse_master(master)
    if not variants:
        raise VerifyError(f"{master} lists no variant streams")
    for v in variants:
        missing = [k for k in ("BANDWIDTH", "RESOLUTION") if not v.get(k)]
        if missing:
            raise VerifyError(f"variant {v.get('URI')} in {master} has no {' or '.join(missing)}")
        if not (master.parent / v["URI"]).is_file():
            raise VerifyError(f"variant playlist {v['URI']} of {master} does not exist")
    if hls_audio > 1:
        raise VerifyError(f"{master} lists {hls_audio} audio renditions, expected at most one")
    reps = parse_mpd(manifest)
    video_reps = [r for r in reps if r.content_type == "video"]
    audio_reps = [r for r in reps if r.content_type == "audio"]
    if len(video_reps) != len(variants):
        raise VerifyError(
            f"{manifest} lists {len(video_reps)} video representations, {master} {len(variants)} variants"
        )
    if len(audio_reps) > 1:
        raise VerifyError(f"{manifest} lists {len(audio_reps)} audio representations, expected at most one")
    hls_streams = decode_manifest(master, progress=progress.span(0, 50), duration=expect_duration, what="HLS")
    hls_durations = _check_decoded(hls_streams, expect_duration, "HLS", len(variants), audio_samples=True)
    dash_streams = decode_manifest(
        manifest, progress=progress.span(50, 100), duration=expect_duration, what="DASH"
    )
    dash_durations = _check_decoded(
        dash_streams, expect_duration, "DASH", len(video_reps), audio_samples=False
    )
    hls_audio_packets = [s.packets for s in hls_streams if s.kind == "audio"]
    dash_audio_packets = [s.packets for s in dash_streams if s.kind == "audio"]
    if hls_audio_packets != dash_audio_packets:
        raise VerifyError(
            f"audio differs between HLS ({hls_audio_packets} packets) and DASH ({dash_audio_packets} packets)"
        )
    return {
        "ok": True,
        "renditions": len(variants),
        "hls_variants": [
            {"uri": v["URI"], "bandwidth": int(v["BANDWIDTH"]), "resolution": v["RESOLUTION"]}
            for v in variants
        ],
        "dash_representations": [
            {"id": r.id, "bandwidth": r.bandwidth, "width": r.width, "height": r.height, "codecs": r.codecs}
            for r in video_reps
        ],
        "audio": bool(audio_reps) or hls_audio > 0,
        "hls_durations": hls_durations,
        "dash_durations": dash_durations,
        "expected_duration": expect_duration,
    }
