"""The media tool's publish step never deletes what it did not write (real ``publish`` processes).

A packaged tree here is a handful of files named like one (publish copies files; it does not read
media): what matters is which files end up where, and which are never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cosmos.optimus.media.publish import MANIFEST


def publish(src: Path, dest: Path, *flags: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_")}
    proc = subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", "publish", "--from", str(src), "--to", dest.as_uri(),
         *flags],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stderr


def package(root: Path, name: str, segments: dict[str, str]) -> Path:
    tree = root / name
    (tree / "v0").mkdir(parents=True)
    (tree / "master.m3u8").write_text(f"#EXTM3U {name}\n")
    (tree / "manifest.mpd").write_text(f"<MPD>{name}</MPD>\n")
    for rel, text in segments.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    return tree


def files(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): p.read_text()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def test_a_publish_lists_its_files_and_an_identical_rerun_is_a_no_op(tmp_path: Path) -> None:
    first = package(tmp_path / "pkg", "one", {"v0/seg1.m4s": "a", "v0/seg2.m4s": "b"})
    dest = tmp_path / "out" / "title"
    assert publish(first, dest) == (0, "")
    manifest = json.loads((dest / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["manifest.mpd", "master.m3u8", "v0/seg1.m4s", "v0/seg2.m4s"]
    assert files(dest) == files(first)
    # The same tree again (a retried step whose first attempt did publish): accepted, nothing changes.
    before = (dest / "master.m3u8").stat().st_mtime_ns
    assert publish(first, dest) == (0, "")
    assert (dest / "master.m3u8").stat().st_mtime_ns == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["title"]  # nothing left beside it


def test_a_non_empty_destination_is_refused_without_overwrite(tmp_path: Path) -> None:
    first = package(tmp_path / "pkg", "one", {"v0/seg1.m4s": "a"})
    second = package(tmp_path / "pkg", "two", {"v0/seg1.m4s": "b"})
    dest = tmp_path / "title"
    assert publish(first, dest)[0] == 0
    code, err = publish(second, dest)
    assert code == 2 and "is not empty" in err and "--overwrite" in err
    assert files(dest) == files(first)


def test_overwrite_replaces_an_earlier_publish_and_only_its_files(tmp_path: Path) -> None:
    first = package(tmp_path / "pkg", "one", {"v0/seg1.m4s": "a", "v0/old.m4s": "gone"})
    second = package(tmp_path / "pkg", "two", {"v0/seg1.m4s": "b"})
    dest = tmp_path / "title"
    assert publish(first, dest)[0] == 0
    assert publish(second, dest, "--overwrite") == (0, "")
    assert files(dest) == files(second)  # old.m4s of the earlier publish is gone with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg", "title"]  # the earlier tree is removed
    # The workflow passes the flag as --overwrite=true|false.
    assert publish(first, dest, "--overwrite=false")[0] == 2
    assert publish(first, dest, "--overwrite=true") == (0, "")
    assert files(dest) == files(first)


def test_overwrite_never_deletes_files_cosmos_did_not_write(tmp_path: Path) -> None:
    tree = package(tmp_path / "pkg", "one", {"v0/seg1.m4s": "a"})
    # Someone's directory: no manifest at all (file:///etc would be one).
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine\n")
    code, err = publish(tree, theirs, "--overwrite")
    assert code == 2 and "Cosmos did not publish" in err
    assert files(theirs) == {"notes.txt": "mine\n"} and not (theirs / MANIFEST).exists()
    # An earlier publish with a file added by someone since: refused, everything left as it was.
    dest = tmp_path / "title"
    assert publish(tree, dest)[0] == 0
    (dest / "v0" / "notes.txt").write_text("added by hand\n")
    before = files(dest)
    code, err = publish(package(tmp_path / "pkg", "two", {"v0/seg1.m4s": "b"}), dest, "--overwrite")
    assert code == 2 and "does not list" in err
    assert files(dest) == before
    # A file or a link at the destination is never replaced either.
    (tmp_path / "a-file").write_text("x")
    assert publish(tree, tmp_path / "a-file", "--overwrite")[0] == 2
    assert (tmp_path / "a-file").read_text() == "x"
    (tmp_path / "a-link").symlink_to(theirs)
    assert publish(tree, tmp_path / "a-link", "--overwrite")[0] == 2
    assert files(theirs) == {"notes.txt": "mine\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-link", "pkg", "theirs", "title"]


def test_an_empty_directory_is_published_into(tmp_path: Path) -> None:
    tree = package(tmp_path / "pkg", "one", {"v0/seg1.m4s": "a"})
    dest = tmp_path / "title"
    dest.mkdir()
    assert publish(tree, dest) == (0, "")
    assert files(dest) == files(tree)


def test_within_refuses_a_destination_that_a_link_leads_out_of_the_area(tmp_path: Path) -> None:
    # Optimus accepted <area>/shows/title; since then "shows" became a link to a directory elsewhere.
    tree = package(tmp_path / "pkg", "one", {"v0/seg1.m4s": "a"})
    area, elsewhere = tmp_path / "storage" / "acme", tmp_path / "elsewhere"
    area.mkdir(parents=True)
    elsewhere.mkdir()
    (area / "shows").symlink_to(elsewhere)
    code, err = publish(tree, area / "shows" / "title", "--within", str(area))
    assert code == 2 and "outside its storage area" in err
    assert list(elsewhere.iterdir()) == []
    code, err = publish(tree, tmp_path / "title", "--within", str(area))
    assert code == 2 and not (tmp_path / "title").exists()
    assert publish(tree, area / "title", "--within", str(area)) == (0, "")
