"""The media tool end to end, as the workflow runs it: one ``python -m cosmos.optimus.media`` process per
step, results through ``$COSMOS_RESULT_FILE``, real ffmpeg on a tiny clip (6 s, 320x240, with audio)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cosmos.optimus.media.ffmpeg import ffmpeg_exe
from cosmos.optimus.media.probe import probe

SECONDS = 6.0
FPS = 24.0
PROFILES = ("360p", "540p")
MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"


@dataclass
class Done:
    """A finished media-tool process."""

    code: int
    result: dict[str, Any]
    stdout: str
    stderr: str


def media(tmp: Path, *args: str, env: dict[str, str] | None = None, **popen: Any) -> Done:
    """Run one media-tool command with ``COSMOS_RESULT_FILE`` set, like a Stratum job."""
    result_file = tmp / f"result-{os.getpid()}-{args[0]}.json"
    result_file.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_PROGRESS")}
    full_env = {**base, "COSMOS_RESULT_FILE": str(result_file), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
        **popen,
    )
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return Done(proc.returncode, result, proc.stdout, proc.stderr)


def ok(tmp: Path, *args: str) -> dict[str, Any]:
    done = media(tmp, *args)
    assert done.code == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("COSMOS_RESULT ")
    assert json.loads(last.removeprefix("COSMOS_RESULT ")) == done.result
    return done.result


@dataclass
class Pipeline:
    """Every step's result, from one run of the whole pipeline."""

    root: Path
    source: dict[str, Any]
    probe: dict[str, Any]
    split: dict[str, Any]
    encodes: list[dict[str, Any]]
    renditions: list[dict[str, Any]]
    qualities: list[dict[str, Any]]
    package: dict[str, Any]
    publish: dict[str, Any]
    verify: dict[str, Any]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("media")
    src = root / "source.mp4"
    clip = ok(
        root,
        "make-test-clip",
        "--out",
        str(src),
        "--seconds",
        f"{SECONDS:g}",
        "--size",
        "320x240",
        "--fps",
        f"{FPS:g}",
    )
    probe = ok(root, "probe", "--source", str(src))
    split = ok(root, "split", "--source", str(src), "--work", str(root / "chunks"), "--chunk-seconds", "2")
    # One encode per chunk for every profile, measuring its output on the way (sampled, the default).
    encodes = [
        ok(
            root,
            "encode",
            "--chunk",
            chunk["path"],
            "--profiles",
            ",".join(PROFILES),
            "--out-dir",
            str(root / "encoded"),
            "--start",
            str(chunk["start"]),
            "--threads",
            "1",
            # What split knows, as the workflow passes it: the chunk is not probed again.
            "--duration",
            str(chunk["duration"]),
            "--fps",
            str(split["fps"]),
            "--size",
            f"{split['width']}x{split['height']}",
        )
        for chunk in split["chunks"]
    ]
    # The workflow passes every chunk's encode result; a rendition without "index" must still work.
    all_encodes = json.loads(json.dumps(encodes))
    del all_encodes[1]["renditions"][0]["index"]
    # The workflow's way: the chunk results kept next to the encoded chunks (--encoded, --count); and
    # the other way, every result passed in (--inputs).
    renditions = [
        ok(
            root,
            "assemble",
            "--profile",
            PROFILES[0],
            "--out",
            str(root / "renditions" / f"{PROFILES[0]}.mp4"),
            "--encoded",
            str(root / "encoded"),
            "--count",
            str(split["count"]),
        ),
        ok(
            root,
            "assemble",
            "--profile",
            PROFILES[1],
            "--out",
            str(root / "renditions" / f"{PROFILES[1]}.mp4"),
            "--inputs",
            json.dumps(all_encodes),
        ),
    ]
    # The standalone measurement of every frame, for comparison with the encoder's own.
    qualities = [
        ok(
            root,
            "quality",
            "--reference",
            e["chunk"],
            "--distorted",
            r["path"],
            "--profile",
            r["profile"],
            "--index",
            str(e["index"]),
        )
        for e in encodes
        for r in e["renditions"]
    ]
    audio = ok(root, "audio", "--source", str(src), "--out", str(root / "audio" / "audio.mp4"))
    package = ok(
        root,
        "package",
        "--source",
        str(src),
        "--audio",
        audio["path"],
        "--renditions",
        json.dumps(renditions),
        "--out",
        str(root / "package"),
    )
    publish = ok(
        root, "publish", "--from", str(root / "package"), "--to", (root / "published" / "title").as_uri()
    )
    published = root / "published" / "title"
    verify = ok(
        root,
        "verify",
        "--hls",
        str(published / "master.m3u8"),
        "--mpd",
        str(published / "manifest.mpd"),
        "--expect-duration",
        str(probe["duration"]),
    )
    assert clip["duration"] == pytest.approx(SECONDS)
    return Pipeline(root, clip, probe, split, encodes, renditions, qualities, package, publish, verify)


def test_probe_describes_the_source(pipeline: Pipeline) -> None:
    p = pipeline.probe
    assert (p["width"], p["height"], p["fps"]) == (320, 240, FPS)
    assert p["video_codec"] == "h264" and p["has_audio"] and p["audio_codec"] == "aac"
    assert p["duration"] == pytest.approx(SECONDS) and p["frames"] == int(SECONDS * FPS)
    assert p["bitrate"] > 0


def test_chunks_tile_the_source(pipeline: Pipeline) -> None:
    chunks = pipeline.split["chunks"]
    assert [c["index"] for c in chunks] == list(range(len(chunks))) and len(chunks) == 3
    assert sum(c["duration"] for c in chunks) == pytest.approx(pipeline.probe["duration"], abs=1 / FPS)
    assert pipeline.split["duration"] == pytest.approx(SECONDS, abs=1 / FPS)
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt["start"] == pytest.approx(prev["start"] + prev["duration"])
    for c in chunks:
        assert Path(c["path"]).is_absolute() and Path(c["path"]).is_file()


def test_max_chunks_lengthens_the_chunks_of_a_long_source(pipeline: Pipeline, tmp_path: Path) -> None:
    source = pipeline.probe["path"]
    split = ok(tmp_path, "split", "--source", source, "--work", str(tmp_path / "c"), "--chunk-seconds", "2",
               "--max-chunks", "2")  # fmt: skip
    # 6 s into at most 2 chunks: whole 2 s GOPs, so 4 s + 2 s.
    assert split["chunk_seconds"] == 4 and split["count"] == 2
    assert [c["duration"] for c in split["chunks"]] == pytest.approx([4, 2], abs=1 / FPS)
    assert split["duration"] == pytest.approx(SECONDS, abs=1 / FPS)


def chunk_renditions(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [r for e in pipeline.encodes for r in e["renditions"]]


def test_encodes_follow_the_profile(pipeline: Pipeline) -> None:
    assert [e["index"] for e in pipeline.encodes] == [0, 1, 2]
    for e in pipeline.encodes:
        assert [r["profile"] for r in e["renditions"]] == list(PROFILES) and e["quality"] == "sampled"
    for r in chunk_renditions(pipeline):
        info = probe(r["path"])
        assert info.height == {"360p": 360, "540p": 540}[r["profile"]] and info.width % 2 == 0
        assert r["bytes"] == Path(r["path"]).stat().st_size and r["bitrate"] > 0
        # Addressed by content: chunk_NNNNN.<key>.mp4 (cosmos.optimus.media.resume).
        name = f"chunk_{r['index']:05d}.{r['key']}.mp4"
        assert Path(r["path"]) == pipeline.root / "encoded" / r["profile"] / name
        assert info.duration == pytest.approx(2.0, abs=1 / FPS) and info.video_codec == "h264"
        # GOP = 2 s: a 2 s chunk holds exactly one keyframe, the first frame.
        assert keyframe_times(Path(r["path"])) == [0.0]


def test_sampled_quality_follows_every_frame_quality(pipeline: Pipeline) -> None:
    # Stride at 24 fps with a 48-frame GOP: the first stride from 24 up sharing no factor with 48.
    stride = 25
    full = {(q["index"], q["profile"]): q for q in pipeline.qualities}
    for e, chunk in zip(pipeline.encodes, pipeline.split["chunks"], strict=True):
        first = round(chunk["start"] * FPS)
        sampled = [n for n in range(chunk["frames"]) if (n + first) % stride == 0]
        for r in e["renditions"]:
            q = full[(e["index"], r["profile"])]
            assert r["quality_frames"] == len(sampled) > 0, r
            assert 50 < r["vmaf"] <= 100 and r["psnr"] > 25, r
            assert r["vmaf"] == pytest.approx(q["vmaf"], abs=6), (r, q)


def encode_alone(tmp: Path, chunk: str, profiles: str, quality: str) -> dict[str, Any]:
    """``encode`` of one chunk into ``tmp/enc``, probing it itself (no facts from split)."""
    return ok(tmp, "encode", "--chunk", chunk, "--profiles", profiles, "--out-dir", str(tmp / "enc"),
              "--quality", quality)  # fmt: skip


def test_measuring_in_the_encoder_equals_measuring_the_file(pipeline: Pipeline, tmp_path: Path) -> None:
    # Same frames, paired the same way: the loopback-decoder measurement of every frame must agree
    # with decoding the written file and measuring it separately.
    chunk = pipeline.split["chunks"][1]
    done = encode_alone(tmp_path, chunk["path"], "360p", "full")
    (r,) = done["renditions"]
    alone = ok(
        tmp_path, "quality", "--reference", chunk["path"], "--distorted", r["path"], "--profile", "360p"
    )
    assert r["quality_frames"] == alone["quality_frames"] == chunk["frames"]
    assert r["vmaf"] == pytest.approx(alone["vmaf"], abs=0.01)
    assert r["psnr"] == pytest.approx(alone["psnr"], abs=0.01)


def test_quality_off_measures_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    chunk = pipeline.split["chunks"][0]
    done = encode_alone(tmp_path, chunk["path"], '["360p", "540p"]', "off")
    assert done["quality"] == "off"
    for r in done["renditions"]:
        assert "vmaf" not in r and "quality_frames" not in r and Path(r["path"]).is_file()


def test_renditions_are_assembled_in_order(pipeline: Pipeline) -> None:
    for r in pipeline.renditions:
        mine = [c for c in chunk_renditions(pipeline) if c["profile"] == r["profile"]]
        assert r["quality_chunks"] == 3 and r["quality_frames"] == sum(c["quality_frames"] for c in mine)
        assert 50 < r["vmaf"] <= 100 and r["psnr"] > 25
        assert r["duration"] == pytest.approx(SECONDS, abs=1 / FPS)
        assert r["frames"] == int(SECONDS * FPS) and r["bitrate"] > 0
        assert keyframe_times(Path(r["path"])) == pytest.approx([0.0, 2.0, 4.0])


def test_quality_is_sane(pipeline: Pipeline) -> None:
    for q in pipeline.qualities:
        assert 50 < q["vmaf"] <= 100, q
        assert q["psnr"] > 25, q
        assert q["frames"] == q["quality_frames"] == 48 and q["index"] in (0, 1, 2)


def test_package_layout_and_result(pipeline: Pipeline) -> None:
    pkg = pipeline.package
    out = Path(pkg["dash_mpd"]).parent
    assert Path(pkg["hls_master"]) == out / "master.m3u8"
    assert [r["profile"] for r in pkg["renditions"]] == list(PROFILES)
    for r in pkg["renditions"]:
        assert Path(r["playlist"]).is_file()
        assert 50 < r["vmaf"] <= 100 and r["psnr"] > 25 and r["quality_chunks"] == 3
        mine = [q for q in chunk_renditions(pipeline) if q["profile"] == r["profile"]]
        frames = sum(q["quality_frames"] for q in mine)
        assert r["quality_frames"] == frames
        assert r["vmaf"] == pytest.approx(
            sum(q["vmaf"] * q["quality_frames"] for q in mine) / frames, abs=0.01
        )
    assert pkg["audio"] is not None and pkg["audio"]["codec"] == "aac"
    assert pkg["audio"]["codecs"] == "mp4a.40.2"  # the audio step's AAC-LC, copied in
    assert not list(out.parent.glob(".package.*")), "temporary directories left behind"


def test_master_playlist_lists_every_rendition(pipeline: Pipeline) -> None:
    master = Path(pipeline.publish["hls_master_uri"].removeprefix("file://"))
    text = master.read_text()
    infs = [ln for ln in text.splitlines() if ln.startswith("#EXT-X-STREAM-INF:")]
    assert len(infs) == len(PROFILES)
    for line, r in zip(infs, pipeline.package["renditions"], strict=True):
        assert "BANDWIDTH=" in line and f"RESOLUTION={r['width']}x{r['height']}" in line
        assert 'CODECS="avc1.' in line and "mp4a.40.2" in line
    assert text.count("TYPE=AUDIO") == 1


def test_mpd_lists_renditions_and_one_audio_set(pipeline: Pipeline) -> None:
    mpd = Path(pipeline.publish["dash_mpd_uri"].removeprefix("file://"))
    root = ET.parse(mpd).getroot()
    sets = list(root.iter(f"{MPD_NS}AdaptationSet"))
    video = [s for s in sets if s.get("contentType") == "video"]
    audio = [s for s in sets if s.get("contentType") == "audio"]
    assert len(video) == 1 and len(audio) == 1
    reps = list(video[0].iter(f"{MPD_NS}Representation"))
    assert [(int(r.get("width", 0)), int(r.get("height", 0))) for r in reps] == [
        (r["width"], r["height"]) for r in pipeline.package["renditions"]
    ]
    assert len(list(audio[0].iter(f"{MPD_NS}Representation"))) == 1


def test_audio_is_encoded_once_and_shared(pipeline: Pipeline) -> None:
    out = Path(pipeline.publish["dash_mpd_uri"].removeprefix("file://")).parent
    audio_id = pipeline.package["audio"]["representation"]
    playlist = out / f"media_{audio_id}.m3u8"
    hls_segments = [ln for ln in playlist.read_text().splitlines() if ln and not ln.startswith("#")]
    # HLS's audio playlist points at the very files the MPD's audio SegmentTemplate names.
    assert hls_segments == sorted(p.name for p in out.glob(f"seg-{audio_id}-*.m4s"))
    assert (out / f"init-{audio_id}.m4s").is_file()
    inits = sorted(out.glob("init-*.m4s"))
    assert len(inits) == len(PROFILES) + 1  # one per video rendition, one audio


def test_published_tree_and_verify(pipeline: Pipeline) -> None:
    pub = pipeline.publish
    assert pub["hls_master_uri"].startswith("file:///") and pub["dash_mpd_uri"].endswith("/manifest.mpd")
    assert pub["files"] == pipeline.package["files"] and pub["bytes"] == pipeline.package["bytes"]
    v = pipeline.verify
    assert v["ok"] is True and v["renditions"] == len(PROFILES) and v["audio"] is True
    for d in v["hls_durations"] + v["dash_durations"]:
        assert d == pytest.approx(SECONDS, abs=1 / FPS)


def test_rerun_is_idempotent(pipeline: Pipeline) -> None:
    root = pipeline.root
    again = ok(
        root, "publish", "--from", str(root / "package"), "--to", (root / "published" / "title").as_uri()
    )
    assert again == pipeline.publish
    e = pipeline.encodes[0]
    args = ["--chunk", e["chunk"], "--profiles", ",".join(PROFILES), "--out-dir", str(root / "encoded")]
    redo = ok(root, "encode", *args, "--threads", "1")  # this time probing the chunk
    # The same content again: the chunk's files are reused (verified), with the same results.
    assert redo == {**e, "reused": True}


def test_progress_lines_on_the_channel(pipeline: Pipeline, tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    try:
        chunk = pipeline.split["chunks"][0]["path"]
        done = media(
            tmp_path,
            "encode",
            "--chunk",
            chunk,
            "--profiles",
            "360p",
            "--out-dir",
            str(tmp_path / "enc"),
            env={"COSMOS_PROGRESS_FD": str(write_fd)},
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        write_fd = -1
        assert done.code == 0, done.stderr
        with os.fdopen(read_fd, "rb") as f:
            read_fd = -1
            lines = [json.loads(ln) for ln in f.read().splitlines()]
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    assert lines, "no progress lines"
    assert all(isinstance(ln, dict) for ln in lines)
    assert lines[-1]["percent"] == 100
    assert any(ln.get("message") == "encoding 360p" for ln in lines)


def test_verify_rejects_a_wrong_duration(pipeline: Pipeline, tmp_path: Path) -> None:
    pub = Path(pipeline.publish["dash_mpd_uri"].removeprefix("file://")).parent
    done = media(
        tmp_path,
        "verify",
        "--hls",
        str(pub / "master.m3u8"),
        "--mpd",
        str(pub / "manifest.mpd"),
        "--expect-duration",
        "7",
    )
    assert done.code == 1 and "expected 7.000s within one frame" in done.stderr
    assert done.result == {}


def keyframe_times(path: Path) -> list[float]:
    """Presentation times of the keyframes of the first video stream (packet flags, no decode)."""
    out = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tb = 1.0
    times = []
    for line in out.splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            tb = int(num) / int(den)
        elif line and not line.startswith("#"):
            parts = [p.strip() for p in line.split(",")]
            # framecrc prints "F=0x.." only when the flags differ from "keyframe" (0x1).
            flags = [int(p[2:], 16) for p in parts[6:] if p.startswith("F=")]
            if not flags or flags[0] & 1:
                times.append(round(int(parts[2]) * tb, 6))
    return sorted(times)


def test_audio_of_a_silent_source_is_none(pipeline: Pipeline, tmp_path: Path) -> None:
    chunk = pipeline.split["chunks"][0]["path"]  # chunks are video only
    assert ok(tmp_path, "audio", "--source", chunk, "--out", str(tmp_path / "a.mp4"))["path"] == ""
    assert not (tmp_path / "a.mp4").exists()


def test_assemble_names_missing_chunk_results(pipeline: Pipeline, tmp_path: Path) -> None:
    encoded = pipeline.root / "encoded"
    args = ["--profile", "360p", "--out", str(tmp_path / "r.mp4"), "--encoded", str(encoded)]
    done = media(tmp_path, "assemble", *args, "--count", "5")  # the split made 3
    assert done.code == 1 and "profile '360p' is missing chunk(s) [3, 4]" in done.stderr
    done = media(tmp_path, "assemble", *args)
    assert done.code == 2 and "--encoded DIR with --count N" in done.stderr


def test_portable_encodes_copied_out_per_job_are_assembled(pipeline: Pipeline, tmp_path: Path) -> None:
    # As in the worker image: each chunk encoded in its own work dir (cwd) with relative paths,
    # --portable; its out/ copied to <encoded>/jobs/<index>/<group>, which assemble --encoded reads.
    encoded = tmp_path / "encoded"
    for chunk in pipeline.split["chunks"]:
        work = tmp_path / f"job-{chunk['index']}"
        work.mkdir()
        os.link(chunk["path"], work / "chunk.mp4")
        args = ["encode", "--portable", "--chunk", "chunk.mp4", "--profiles", "360p", "--out-dir", "out",
                "--index", str(chunk["index"]), "--quality", "off", "--source", "/gone/t.mp4"]  # fmt: skip
        done = media(work, *args, cwd=work)
        assert done.code == 0, done.stderr
        (r,) = done.result["renditions"]
        assert r["path"] == f"chunk_{chunk['index']:05d}.{r['key']}.mp4"  # relative to its result file
        assert json.loads((work / "out" / "360p" / f"chunk_{chunk['index']:05d}.json").read_text()) == r
        # Readable beyond its owner: the agent's copy keeps the modes, and may be root's.
        modes = {p.stat().st_mode & 0o777 for p in [work / "out", *(work / "out").rglob("*")]}
        assert modes == {0o755, 0o644}
        # Keyed by the chunk (the source is not reachable in a container): the same chunk, the same key.
        again = media(work, *args, cwd=work)
        assert again.code == 0 and again.result.get("reused") is True, again.stderr
        copied = encoded / "jobs" / str(chunk["index"]) / "cpu"  # what the agent's job output does
        copied.parent.mkdir(parents=True)
        (work / "out").rename(copied)
    out = tmp_path / "360p.mp4"
    assembled = ok(tmp_path, "assemble", "--profile", "360p", "--out", str(out), "--encoded", str(encoded),
                   "--count", str(pipeline.split["count"]))  # fmt: skip
    assert assembled["chunks"] == pipeline.split["count"]
    assert assembled["duration"] == pytest.approx(SECONDS, abs=1 / FPS)
