"""The profile catalog: names, ladders, lookups and the JSON form the workflow receives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosmos.optimus import profiles
from cosmos.optimus.media.package import hevc_codecs

pytestmark = pytest.mark.unit


def test_ladders() -> None:
    assert [p.name for p in profiles.resolve([], "default")] == ["1080p", "720p", "360p"]
    assert [p.name for p in profiles.resolve(None, "full")] == ["1080p", "720p", "540p", "360p"]
    assert [p.name for p in profiles.resolve(["360p", "720p-hevc", "360p"], "full")] == ["360p", "720p-hevc"]


def test_unknown_names_are_clear_key_errors() -> None:
    with pytest.raises(KeyError) as exc:
        profiles.get("4k")
    assert "unknown profile '4k'" in str(exc.value) and "1080p" in str(exc.value)
    with pytest.raises(KeyError, match="known ladders: default, full"):
        profiles.resolve([], "huge")


def test_catalog_covers_every_codec_family() -> None:
    names = profiles.names()
    for rung in ("1080p", "720p", "540p", "360p"):
        for suffix in ("", "-hevc", "-av1", "-nvenc"):
            assert rung + suffix in names
    encoders = {p["name"]: p["encoder"] for p in profiles.catalog()}
    assert encoders["720p"] == "libx264" and encoders["720p-hevc"] == "libx265"
    assert encoders["720p-av1"] == "libsvtav1" and encoders["720p-nvenc"] == "h264_nvenc"


def test_documented_bitrates_and_frame_sizes() -> None:
    expect = {
        "1080p": (1920, 1080, 5_000_000),
        "720p": (1280, 720, 3_000_000),
        "540p": (960, 540, 2_000_000),
        "360p": (640, 360, 1_000_000),
    }
    for name, (w, h, rate) in expect.items():
        p = profiles.get(name)
        assert (p.width, p.height, p.max_bitrate, p.bufsize) == (w, h, rate, 2 * rate)
        assert "-maxrate" in p.args and f"{rate // 1000}k" in p.args and not p.requires_gpu


def test_to_dict_is_jobspec_compatible_json() -> None:
    d = json.loads(json.dumps(profiles.get("720p").to_dict()))
    assert d["name"] == "720p" and d["codec"] == "h264" and isinstance(d["args"], list)
    assert d["resources"] == {"cpuMillis": 1000, "memoryBytes": "1073741824"}
    gpu = profiles.get("1080p-nvenc").to_dict()
    assert gpu["requires_gpu"] is True and gpu["resources"]["gpu"] == {"count": 1}
    # to_dict hands out copies: mutating them does not touch the catalog.
    gpu["resources"]["gpu"]["count"] = 9
    assert profiles.get("1080p-nvenc").resources["gpu"] == {"count": 1}


def test_hevc_codecs_string_from_hvcc(tmp_path: Path) -> None:
    # hvcC of HEVC Main, Main tier, level 3.1 (93), progressive/frame-only constraint flags (0xB0).
    hvcc = bytes([1, 0x01, 0x60, 0, 0, 0, 0xB0, 0, 0, 0, 0, 0, 93])
    init = tmp_path / "init-0.m4s"
    init.write_bytes(
        b"\x00\x00\x00\x20ftypiso6" + b"\x00" * 8 + b"\x00\x00\x00\x30hvcC" + hvcc + b"\x00" * 20
    )
    assert hevc_codecs(init) == "hvc1.1.6.L93.B0"
    init.write_bytes(b"no box here")
    assert hevc_codecs(init) is None


def test_groups_put_software_and_nvenc_profiles_in_separate_chunk_jobs() -> None:
    chosen = profiles.resolve(["1080p", "720p-nvenc", "360p", "540p-hevc", "1080p-nvenc"])
    cpu, gpu = profiles.groups(chosen)
    assert cpu["name"] == "cpu" and cpu["profiles"] == ["1080p", "360p", "540p-hevc"]
    # One core for the whole group (encoders single-threaded), the memory of every member.
    memory = sum(int(profiles.get(n).resources["memoryBytes"]) for n in cpu["profiles"])
    assert cpu["resources"] == {"cpuMillis": profiles.CHUNK_CPU_MILLIS, "memoryBytes": str(memory)}
    assert cpu["threads"] == 1 and "gpu" not in cpu["resources"]
    assert gpu["name"] == "gpu" and gpu["profiles"] == ["720p-nvenc", "1080p-nvenc"]
    assert gpu["resources"]["gpu"] == {"count": 1} and gpu["threads"] == 0
    assert json.loads(json.dumps(profiles.groups(chosen))) == [cpu, gpu]  # JSON-able workflow input
    assert [g["name"] for g in profiles.groups(profiles.resolve([], "default"))] == ["cpu"]
