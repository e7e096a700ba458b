"""Which published files the console's player may fetch: beside the HLS master, under a root."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmos.console import media
from cosmos.security.storage import Root, S3Root

pytestmark = pytest.mark.unit

ROOTS: list[Root] = [S3Root("cosmos"), Path("/srv/media")]
MASTER = "s3://cosmos/acme/out/ladder/master.m3u8"


def test_an_s3_master_serves_the_objects_beside_it_under_an_s3_root() -> None:
    assert media.media_source(MASTER, "master.m3u8", ROOTS) == MASTER
    assert media.media_source(MASTER, "360p/seg_1.m4s", ROOTS) == "s3://cosmos/acme/out/ladder/360p/seg_1.m4s"


def test_anything_else_is_refused() -> None:
    for relative in ("", "/etc/passwd", "../secret", "360p/../../x", "a\\b", "a//b", "./a"):
        assert media.media_source(MASTER, relative, ROOTS) is None, relative
    assert media.media_source("s3://other/acme/master.m3u8", "master.m3u8", ROOTS) is None
    assert media.media_source(MASTER, "master.m3u8", [Path("/srv/media")]) is None  # no s3 root


def test_a_local_master_needs_an_existing_file_under_a_directory_root(tmp_path: Path) -> None:
    out = tmp_path / "acme" / "out"
    out.mkdir(parents=True)
    (out / "master.m3u8").write_text("#EXTM3U\n")
    master = (out / "master.m3u8").as_uri()
    assert media.media_source(master, "master.m3u8", [tmp_path]) == out / "master.m3u8"
    assert media.media_source(master, "missing.m4s", [tmp_path]) is None
    assert media.media_source(master, "master.m3u8", [tmp_path / "elsewhere"]) is None


def test_content_types_for_the_player() -> None:
    assert media.content_type("a/master.m3u8") == "application/vnd.apple.mpegurl"
    assert media.content_type("seg.M4S") == "video/iso.segment"
    assert media.content_type("x.bin") == "application/octet-stream"
