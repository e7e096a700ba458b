"""Truncated and corrupt media, chunk verification, failure declarations and scratch cleaning, with
the real media tool and the real ffmpeg."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from encode_harness import damaged_video

from cosmos.optimus.media import integrity
from cosmos.optimus.media.ffmpeg import CorruptMedia, MediaError


def media(tmp: Path, *args: str) -> tuple[int, str, dict[str, Any] | None, dict[str, Any] | None]:
    """Run the media tool as Stratum would: exit code, stderr, result and declared failure."""
    result, failure = tmp / "result.json", tmp / "failure.json"
    result.unlink(missing_ok=True)
    failure.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_PROGRESS")}
    env.update(COSMOS_RESULT_FILE=str(result), COSMOS_FAILURE_FILE=str(failure))
    proc = subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stderr, _read(result), _read(failure)


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    code, err, _, _ = media(path.parent, "make-test-clip", "--out", str(path), "--seconds", "6",
                            "--size", "320x240", "--fps", "24")  # fmt: skip
    assert code == 0, err
    return path


def truncated(clip: Path, dest: Path) -> Path:
    data = clip.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def test_a_truncated_source_fails_the_probe_permanently_naming_it(clip: Path, tmp_path: Path) -> None:
    source = truncated(clip, tmp_path / "title.mp4")
    code, err, result, failure = media(tmp_path, "probe", "--source", str(source))
    assert code == 2 and result is None
    assert err.startswith(f"error: probe: source {source} is truncated")
    assert failure is not None and failure["class"] == "permanent" and failure["code"] == "CORRUPT_SOURCE"
    assert str(source) in failure["message"]
    # The whole file probes as before.
    code, err, result, failure = media(tmp_path, "probe", "--source", str(clip))
    assert code == 0 and failure is None and result is not None and result["duration"] == 6.0


def test_a_corrupt_chunk_fails_the_encode_naming_the_source(clip: Path, tmp_path: Path) -> None:
    chunk = damaged_video(clip, tmp_path / "chunk_00003.mp4")
    code, err, result, failure = media(
        tmp_path, "encode", "--chunk", str(chunk), "--profiles", "360p", "--out-dir", str(tmp_path / "enc"),
        "--quality", "off", "--source", "/titles/feature.mp4",
    )  # fmt: skip
    assert code == 2 and result is None, err
    assert failure is not None and failure["class"] == "permanent" and failure["code"] == "CORRUPT_SOURCE"
    assert failure["message"].startswith("source /titles/feature.mp4 is corrupt: chunk 3")
    # Nothing half-written is left where a later encode would find it.
    assert [p.name for p in (tmp_path / "enc" / "360p").iterdir()] == []


def test_a_full_disk_is_declared_no_space(clip: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
        print(reason)
        pytest.skip(reason)
    try:
        code, err, _, failure = media(
            tmp_path, "encode", "--chunk", str(clip), "--profiles", "360p", "--out-dir", str(small),
            "--index", "0", "--quality", "off",
        )  # fmt: skip
        assert code == 1, err
        assert failure is not None and (failure["class"], failure["code"]) == ("permanent", "NO_SPACE")
        assert "No space left on device" in failure["message"]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_verify_chunk_accepts_only_whole_chunks_of_the_expected_duration(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "enc"
    code, err, result, _ = media(tmp_path, "encode", "--chunk", str(clip), "--profiles", "360p",
                                 "--out-dir", str(out), "--index", "0", "--quality", "off")  # fmt: skip
    assert code == 0 and result is not None, err
    chunk = Path(result["renditions"][0]["path"])  # chunk_00000.<content key>.mp4
    checked = integrity.verify_chunk(chunk, 6.0)
    assert checked["frames"] == 144 and checked["duration"] == 6.0
    code, err, result, _ = media(tmp_path, "verify-chunk", "--path", str(chunk), "--duration", "6")
    assert code == 0 and result is not None and result["bytes"] == chunk.stat().st_size, err
    with pytest.raises(MediaError, match=r"decodes to 6\.000 s, expected 4\.000 s"):
        integrity.verify_chunk(chunk, 4.0)
    # A chunk cut short (a killed encode's leftover) is refused, whatever its result file says.
    whole = chunk.read_bytes()
    chunk.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MediaError, match=r"has \d+ bytes, its result records"):
        integrity.verify_chunk(chunk, 6.0)
    (out / "360p" / "chunk_00000.json").unlink()
    with pytest.raises(CorruptMedia):
        integrity.verify_chunk(chunk, 6.0)
    code, err, _, failure = media(tmp_path, "verify-chunk", "--path", str(chunk), "--duration", "6")
    assert code == 2 and failure is not None and failure["code"] == "CORRUPT_SOURCE", err
    with pytest.raises(CorruptMedia):
        integrity.verify_chunk(damaged_video(clip, tmp_path / "c.mp4"), 6.0)


def test_clean_removes_the_scratch_and_nothing_outside_its_area(tmp_path: Path) -> None:
    area = tmp_path / "work" / "default"
    scratch = area / "enc-1"
    (scratch / "encoded" / "360p").mkdir(parents=True)
    (scratch / "encoded" / "360p" / "chunk_00000.mp4").write_bytes(b"x" * 1000)
    (scratch / "chunks").mkdir()
    (scratch / "chunks" / ".chunk_00001.tmp-99.mp4").write_bytes(b"partial")
    neighbour = area / "enc-2" / "keep.mp4"
    neighbour.parent.mkdir()
    neighbour.write_bytes(b"keep")
    code, err, result, _ = media(tmp_path, "clean", "--work", str(scratch), "--within", str(area))
    assert code == 0, err
    assert result == {"removed": str(scratch), "bytes": 1007, "files": 2, "left": 0}
    assert not scratch.exists() and neighbour.read_bytes() == b"keep"
    # Idempotent: a retried clean finds nothing to do.
    code, _, result, _ = media(tmp_path, "clean", "--work", str(scratch), "--within", str(area))
    assert code == 0 and result is not None and result["files"] == 0
    outside = tmp_path / "precious"
    outside.mkdir()
    (area / "link").symlink_to(outside)
    for work in (str(outside), str(area), f"{area}/../../precious", str(area / "link")):
        code, err, _, failure = media(tmp_path, "clean", "--work", work, "--within", str(area))
        assert code == 2 and failure is not None and failure["class"] == "permanent", (work, err)
    assert outside.is_dir() and area.is_dir()


def test_clean_keep_resumable_keeps_finished_outputs_and_only_stale_partials_go(tmp_path: Path) -> None:
    area = tmp_path / "work" / "default"
    scratch = area / "enc-1"
    encoded = scratch / "encoded" / "360p"
    encoded.mkdir(parents=True)
    (encoded / "chunk_00000.0123456789abcdef.mp4").write_bytes(b"x" * 1000)
    (encoded / "chunk_00000.json").write_text("{}")
    stale = encoded / ".chunk_00001.0123456789abcdef.tmp-99.mp4"
    stale.write_bytes(b"partial")
    os.utime(stale, (1, 1))  # its writer is long gone
    live = encoded / ".chunk_00002.0123456789abcdef.tmp-98.mp4"
    live.write_bytes(b"being written")  # a chunk job still running
    code, err, result, _ = media(
        tmp_path, "clean", "--work", str(scratch), "--within", str(area), "--keep-resumable"
    )
    assert code == 0, err
    assert result == {
        "kept": str(scratch),
        "bytes": 1002,
        "files": 2,
        "partial_removed": 1,
    }
    # Finished outputs are counted as kept; the live partial is left to its writer.
    assert not stale.exists() and live.exists() and (encoded / "chunk_00000.json").exists()


def test_a_chunk_is_addressed_by_content_and_reused_only_for_the_same_content(
    clip: Path, tmp_path: Path
) -> None:
    chunk = tmp_path / "chunk_00000.mp4"
    chunk.write_bytes(clip.read_bytes())
    out = tmp_path / "scratch" / "encoded"
    args = ["encode", "--chunk", str(chunk), "--profiles", "360p", "--out-dir", str(out), "--quality", "off"]
    code, err, first, _ = media(tmp_path, *args)
    assert code == 0 and first is not None, err
    (rendition,) = first["renditions"]
    made = Path(rendition["path"])
    assert made.name == f"chunk_00000.{rendition['key']}.mp4" and len(rendition["key"]) == 16
    assert json.loads((out / "360p" / "chunk_00000.json").read_text())["path"] == str(made)
    written = made.stat().st_mtime_ns
    # The same content again: reused, verified, not encoded again.
    code, err, again, _ = media(tmp_path, *args)
    assert code == 0 and again is not None and again.get("reused") is True, err
    assert again["renditions"][0]["path"] == str(made) and made.stat().st_mtime_ns == written
    # Other content under the same name (the chunk replaced): another key, encoded again.
    chunk.write_bytes(clip.read_bytes()[:-1] + b"\0")
    os.utime(chunk, (1, 1))
    code, err, other, _ = media(tmp_path, *args)
    assert code == 0 and other is not None and not other.get("reused"), err
    assert other["renditions"][0]["key"] != rendition["key"]
    # A damaged output of the right key is not reused either.
    Path(other["renditions"][0]["path"]).write_bytes(b"garbage")
    code, err, fixed, _ = media(tmp_path, *args)
    assert code == 0 and fixed is not None and not fixed.get("reused"), err


def test_the_fault_marker_fails_its_chunk_permanently(clip: Path, tmp_path: Path) -> None:
    chunk = tmp_path / "chunk_00004.mp4"
    chunk.write_bytes(clip.read_bytes())
    marker = tmp_path / "scratch" / ".cosmos-fault" / "encode-4"
    marker.parent.mkdir(parents=True)
    marker.touch()
    out_dir = str(tmp_path / "scratch" / "encoded")
    args = ["encode", "--chunk", str(chunk), "--profiles", "360p", "--out-dir", out_dir, "--quality", "off"]
    code, _, result, failure = media(tmp_path, *args)
    assert code == 2 and result is None and failure is not None
    assert failure["class"] == "permanent" and failure["code"] == "FAULT_INJECTED"
    marker.unlink()
    code, err, result, _ = media(tmp_path, *args)
    assert code == 0 and result is not None, err
