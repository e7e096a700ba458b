"""Packaging renditions as HLS and DASH over one set of fMP4 (CMAF-style) segments.

One ffmpeg run with the ``dash`` muxer copies every rendition's video (no re-encode) and the audio,
which is encoded to AAC **once** (by the ladder's ``audio`` step, :func:`encode_audio`, while the
video chunks encode; or here when no ``--audio`` is given), cuts everything into ``segment_seconds``
segments at the (aligned) keyframes, and writes the DASH manifest (``manifest.mpd``: one video and
one audio adaptation set, ``SegmentTemplate`` + ``SegmentTimeline``) plus HLS media playlists
(``media_<id>.m3u8``) over the same segment files. The HLS master playlist is then rewritten by
:func:`write_master` with peak ``BANDWIDTH`` (the largest segment bitrate, video + audio),
``AVERAGE-BANDWIDTH``, ``RESOLUTION``, ``FRAME-RATE`` and ``CODECS`` taken from the MPD.

Layout of the output directory::

    manifest.mpd            DASH
    master.m3u8             HLS master (one EXT-X-STREAM-INF per rendition, one audio group)
    media_<id>.m3u8         HLS media playlist of representation <id>
    init-<id>.m4s           initialization segment of representation <id>
    seg-<id>-<n>.m4s        media segment n (from 1) of representation <id>

The directory is built next to ``--out`` and swapped into place at the end, so a re-run replaces it.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from cosmos.optimus.media.assemble import flatten
from cosmos.optimus.media.ffmpeg import MediaError, Progress, run_ffmpeg
from cosmos.optimus.media.files import replacing
from cosmos.optimus.media.probe import probe, require_file
from cosmos.optimus.media.quality import aggregate

__all__ = [
    "AUDIO_BITRATE",
    "MPD_NS",
    "Representation",
    "encode_audio",
    "package",
    "parse_mpd",
    "write_master",
]

MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"
AUDIO_BITRATE = 128_000
MASTER = "master.m3u8"
MPD = "manifest.mpd"


@dataclass
class Representation:
    """One DASH representation as listed in the MPD."""

    id: str
    content_type: str  # "video" or "audio"
    codecs: str
    bandwidth: int
    width: int | None
    height: int | None
    frame_rate: float | None


def parse_mpd(path: Path) -> list[Representation]:
    """The representations of a (static, single-period) MPD."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise MediaError(f"cannot parse MPD {path}: {exc}") from None
    reps: list[Representation] = []
    for aset in root.iter(f"{MPD_NS}AdaptationSet"):
        for rep in aset.iter(f"{MPD_NS}Representation"):
            mime = rep.get("mimeType") or aset.get("mimeType") or ""
            ctype = aset.get("contentType") or mime.split("/")[0]
            rate = rep.get("frameRate") or aset.get("frameRate")
            reps.append(
                Representation(
                    id=rep.get("id", ""),
                    content_type=ctype,
                    codecs=rep.get("codecs") or aset.get("codecs") or "",
                    bandwidth=int(rep.get("bandwidth") or 0),
                    width=int(w) if (w := rep.get("width")) else None,
                    height=int(h) if (h := rep.get("height")) else None,
                    frame_rate=float(Fraction(rate)) if rate else None,
                )
            )
    return reps


def hevc_codecs(init_segment: Path) -> str | None:
    """The RFC 6381 ``hvc1.*`` codecs string from an init segment's ``hvcC`` box (ffmpeg's dash muxer
    leaves HEVC's ``codecs`` empty)."""
    data = init_segment.read_bytes()
    at = data.find(b"hvcC")
    if at < 0 or len(data) < at + 4 + 13:
        return None
    box = data[at + 4 : at + 4 + 13]
    space, tier, profile = box[1] >> 6, (box[1] >> 5) & 1, box[1] & 0x1F
    compat = int.from_bytes(box[2:6], "big")
    reversed_compat = int(f"{compat:032b}"[::-1], 2)
    constraints = list(box[6:12])
    while constraints and constraints[-1] == 0:
        constraints.pop()
    parts = [
        "hvc1",
        ("", "A", "B", "C")[space] + str(profile),
        f"{reversed_compat:X}",
        ("H" if tier else "L") + str(box[12]),
        *(f"{b:X}" for b in constraints),
    ]
    return ".".join(parts)


def fill_codecs(out_dir: Path, reps: list[Representation]) -> None:
    """Complete empty ``codecs`` attributes (HEVC) in the MPD and in ``reps`` from the init segments."""
    mpd = out_dir / MPD
    text = mpd.read_text()
    for rep in reps:
        if rep.codecs:
            continue
        codecs = hevc_codecs(out_dir / f"init-{rep.id}.m4s")
        if codecs is None:
            continue
        rep.codecs = codecs
        text = text.replace(
            f'<Representation id="{rep.id}" mimeType="video/mp4" codecs=""',
            f'<Representation id="{rep.id}" mimeType="video/mp4" codecs="{codecs}"',
        )
    mpd.write_text(text)


def playlist_rates(playlist: Path) -> tuple[int, int]:
    """(peak, average) bitrate of an HLS media playlist, from its segment files' sizes and EXTINFs."""
    lines = playlist.read_text().splitlines()
    segments: list[tuple[float, int]] = []
    init_bytes = 0
    duration: float | None = None
    for line in lines:
        line = line.strip()
        if line.startswith("#EXT-X-MAP:") and 'URI="' in line:
            init_bytes = (playlist.parent / line.split('URI="', 1)[1].split('"', 1)[0]).stat().st_size
        elif line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",", 1)[0])
        elif line and not line.startswith("#") and duration is not None:
            segments.append((duration, (playlist.parent / line).stat().st_size))
            duration = None
    if not segments:
        return 0, 0
    total = sum(d for d, _ in segments)
    longest = max(d for d, _ in segments)
    # A short trailing segment can show an inflated rate; judge peaks on full-length segments.
    full = [(d, b) for d, b in segments if d >= 0.5 * longest] or segments
    peak = max(b * 8 / d for d, b in full if d > 0)
    average = (init_bytes + sum(b for _, b in segments)) * 8 / total if total else 0
    return round(peak), round(average)


def write_master(out_dir: Path, video: list[Representation], audio: Representation | None) -> Path:
    """Write ``master.m3u8`` for the ``media_<id>.m3u8`` playlists the dash muxer produced."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    audio_peak = audio_avg = 0
    if audio is not None:
        audio_peak, audio_avg = playlist_rates(out_dir / f"media_{audio.id}.m3u8")
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,'
            f'CHANNELS="2",URI="media_{audio.id}.m3u8"'
        )
    for rep in video:
        peak, avg = playlist_rates(out_dir / f"media_{rep.id}.m3u8")
        attrs = [f"BANDWIDTH={peak + audio_peak}", f"AVERAGE-BANDWIDTH={avg + audio_avg}"]
        if rep.width and rep.height:
            attrs.append(f"RESOLUTION={rep.width}x{rep.height}")
        if rep.frame_rate:
            attrs.append(f"FRAME-RATE={rep.frame_rate:.3f}")
        codecs = [rep.codecs] + ([audio.codecs] if audio is not None and audio.codecs else [])
        attrs.append(f'CODECS="{",".join(c for c in codecs if c)}"')
        if audio is not None:
            attrs.append('AUDIO="audio"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), f"media_{rep.id}.m3u8"]
    master = out_dir / MASTER
    master.write_text("\n".join(lines) + "\n")
    return master


AUDIO_ARGS = ("-c:a", "aac", "-b:a", str(AUDIO_BITRATE), "-ac", "2", "-ar", "48000")
"""The one audio rendition: AAC-LC stereo, 48 kHz."""


def encode_audio(source: str, out: str, progress: Progress) -> dict[str, Any]:
    """Encode the source's first audio stream once (:data:`AUDIO_ARGS`) into ``out`` (mp4); a source
    without audio gives ``{"path": ""}``."""
    src = probe(source, count_frames=False)
    if not src.has_audio:
        return {"path": "", "source": src.path}
    out_path = Path(out).absolute()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out_path) as tmp:
        run_ffmpeg(
            ["-i", src.path, "-map", "0:a:0", "-vn", *AUDIO_ARGS, "-f", "mp4", str(tmp)],
            what=f"encoding the audio of {src.path}",
            progress=progress,
            duration=src.duration,
            message="encoding audio",
        )
    return {
        "path": str(out_path),
        "codec": "aac",
        "bitrate": AUDIO_BITRATE,
        "bytes": out_path.stat().st_size,
        "duration": src.duration,
        "source": src.path,
    }


def _swap_in(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def package(
    source: str,
    renditions: list[Any],
    qualities: list[Any],
    out: str,
    segment_seconds: float,
    progress: Progress,
    audio_file: str | None = None,
) -> dict[str, Any]:
    """Package ``renditions`` (assemble results) and the audio into HLS + DASH under ``out``.

    ``audio_file``: an AAC file from :func:`encode_audio` (copied), ``""`` for none, or ``None`` to encode
    the source's audio here."""
    if segment_seconds <= 0:
        raise MediaError(f"--segment-seconds must be positive, got {segment_seconds}")
    rends: dict[str, dict[str, Any]] = {}
    for r in renditions:
        if not isinstance(r, dict) or "path" not in r or "profile" not in r:
            raise MediaError(f"--renditions: not an assemble result: {r!r}")
        rends[str(r["profile"])] = r  # a repeated profile: the last result wins
    if not rends:
        raise MediaError("--renditions is empty")
    src = probe(source, count_frames=False)
    paths = [str(require_file(r["path"], f"rendition {name}")) for name, r in rends.items()]
    out_dir = Path(out).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    args: list[str] = []
    for p in paths:
        args += ["-i", p]
    copy_audio = audio_file is not None
    audio_in = audio_file if copy_audio else (src.path if src.has_audio else "")
    if audio_in:
        args += ["-i", str(require_file(audio_in, "--audio")) if copy_audio else audio_in]
    for i in range(len(paths)):
        args += ["-map", f"{i}:v:0"]
    sets = "id=0,streams=v"
    if audio_in:
        args += ["-map", f"{len(paths)}:a:0", *(["-c:a", "copy"] if copy_audio else AUDIO_ARGS)]
        sets += " id=1,streams=a"
    durations = [float(r.get("duration") or 0.0) for r in rends.values()]
    try:
        run_ffmpeg(
            [
                *args,
                "-c:v",
                "copy",
                "-f",
                "dash",
                "-seg_duration",
                f"{segment_seconds:g}",
                "-use_template",
                "1",
                "-use_timeline",
                "1",
                "-hls_playlist",
                "1",
                "-adaptation_sets",
                sets,
                "-init_seg_name",
                "init-$RepresentationID$.m4s",
                "-media_seg_name",
                "seg-$RepresentationID$-$Number%05d$.m4s",
                str(tmp / MPD),
            ],
            what="packaging HLS and DASH",
            progress=progress,
            duration=max(durations) if durations else src.duration,
            message="packaging",
        )
        reps = parse_mpd(tmp / MPD)
        fill_codecs(tmp, reps)
        video = [r for r in reps if r.content_type == "video"]
        audio_reps = [r for r in reps if r.content_type == "audio"]
        if len(video) != len(paths):
            raise MediaError(f"the MPD lists {len(video)} video representations, expected {len(paths)}")
        audio = audio_reps[0] if audio_reps else None
        write_master(tmp, video, audio)
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # Per chunk measurements (--qualities) when given; else what assemble aggregated per rendition.
    by_profile: dict[str, list[dict[str, Any]]] = {}
    for q in flatten(qualities, "--qualities"):
        if "profile" in q:
            by_profile.setdefault(str(q["profile"]), []).append(q)
    result_rends = []
    for (name, r), rep in zip(rends.items(), video, strict=True):
        if name in by_profile:
            scores = aggregate(by_profile[name])
        else:
            scores = {k: r.get(k) for k in ("vmaf", "psnr", "psnr_y", "quality_chunks", "quality_frames")}
        result_rends.append(
            {
                "profile": name,
                "width": rep.width or r.get("width"),
                "height": rep.height or r.get("height"),
                "bitrate": r.get("bitrate") or rep.bandwidth,
                "bytes": r.get("bytes"),
                "duration": r.get("duration"),
                "codecs": rep.codecs,
                **scores,
                "playlist": str(out_dir / f"media_{rep.id}.m3u8"),
                "representation": rep.id,
            }
        )
    audio_result: dict[str, Any] | None = None
    if audio is not None:
        audio_result = {
            "codec": "aac",
            "codecs": audio.codecs,
            "bitrate": AUDIO_BITRATE,
            "channels": 2,
            "sample_rate": 48000,
            "playlist": str(out_dir / f"media_{audio.id}.m3u8"),
            "representation": audio.id,
        }
    files = [f for f in out_dir.rglob("*") if f.is_file()]
    return {
        "hls_master": str(out_dir / MASTER),
        "dash_mpd": str(out_dir / MPD),
        "dir": str(out_dir),
        "renditions": result_rends,
        "audio": audio_result,
        "segment_seconds": segment_seconds,
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
    }
