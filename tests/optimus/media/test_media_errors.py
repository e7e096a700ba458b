"""The media tool's failures: non-zero exit, one clear line on stderr, no result file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def media(tmp: Path, *args: str) -> tuple[int, str, Path]:
    result = tmp / "result.json"
    result.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_PROGRESS")}
    env["COSMOS_RESULT_FILE"] = str(result)
    proc = subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stderr, result


def test_missing_source_exits_2_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    code, err, result = media(tmp_path, "probe", "--source", str(missing))
    assert code == 2 and f"source not found: {missing}" in err
    assert len(err.strip().splitlines()) == 1 and not result.exists()


def test_not_a_video_exits_2(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    code, err, _ = media(tmp_path, "probe", "--source", str(text))
    assert code == 2 and "not a readable media file" in err and str(text) in err


def test_unknown_profile_lists_known_ones(tmp_path: Path) -> None:
    chunk = tmp_path / "chunk_00000.mp4"
    chunk.write_bytes(b"")
    code, err, _ = media(
        tmp_path, "encode", "--chunk", str(chunk), "--profiles", "360p,4k", "--out-dir", str(tmp_path / "o")
    )
    assert code == 2 and "unknown profile '4k'" in err
    for name in ("1080p", "720p", "540p", "360p", "720p-hevc", "720p-av1", "720p-nvenc"):
        assert name in err


def test_publish_rejects_other_schemes(tmp_path: Path) -> None:
    # s3:// is staged for the agent to upload (tests/optimus/test_encode_s3.py); others are refused.
    code, err, _ = media(tmp_path, "publish", "--from", str(tmp_path), "--to", "gs://bucket/title")
    assert code == 2 and "unsupported URI scheme 'gs'" in err and "file://" in err


def test_publish_needs_a_packaged_tree(tmp_path: Path) -> None:
    code, err, _ = media(tmp_path, "publish", "--from", str(tmp_path), "--to", (tmp_path / "out").as_uri())
    assert code == 2 and "master.m3u8 is missing" in err


@pytest.mark.parametrize(
    "inputs", ["not json", json.dumps([{"path": "/x/chunk_00001.mp4", "profile": "360p"}])]
)
def test_assemble_rejects_bad_inputs(tmp_path: Path, inputs: str) -> None:
    code, err, _ = media(
        tmp_path, "assemble", "--profile", "360p", "--out", str(tmp_path / "r.mp4"), "--inputs", inputs
    )
    assert code == 1
    assert "invalid JSON" in err or "missing chunk(s) [0]" in err


def test_ffmpeg_failure_carries_its_stderr(tmp_path: Path) -> None:
    # A file ffmpeg recognises as mp4 but cannot decode: truncated right after the header.
    code, err, _ = media(
        tmp_path,
        "make-test-clip",
        "--out",
        str(tmp_path / "c.mp4"),
        "--seconds",
        "1",
        "--size",
        "64x64",
        "--fps",
        "10",
    )
    assert code == 0, err
    broken = tmp_path / "chunk_00000.mp4"
    broken.write_bytes((tmp_path / "c.mp4").read_bytes()[:2000])
    code, err, result = media(
        tmp_path,
        "encode",
        "--chunk",
        str(broken),
        "--profiles",
        "360p",
        "--out-dir",
        str(tmp_path / "o"),
    )
    assert code in (1, 2), err
    assert err.startswith("error: encode: ") and len(err.strip().splitlines()) == 1
    assert not result.exists()


def test_encode_rejects_a_malformed_size(tmp_path: Path) -> None:
    chunk = tmp_path / "chunk_00000.mp4"
    chunk.write_bytes(b"")
    code, err, _ = media(
        tmp_path, "encode", "--chunk", str(chunk), "--profiles", "360p", "--out-dir", str(tmp_path / "o"),
        "--duration", "2", "--fps", "24", "--size", "1920by1080",
    )  # fmt: skip
    assert code == 2 and "--size must be WIDTHxHEIGHT, got '1920by1080'" in err
