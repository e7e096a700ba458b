"""Storage roots, in-process: which URIs a tenant may use (cosmos.security.storage.check_uri)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cosmos import errors
from cosmos.security import storage

pytestmark = pytest.mark.unit


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    (root / "acme" / "in").mkdir(parents=True)
    (root / "acme" / "in" / "clip.mp4").write_bytes(b"x")
    (root / "other").mkdir()
    (root / "other" / "secret.mp4").write_bytes(b"s")
    return root


def refused(uri: str, root: Path, tenant: str = "acme", **kwargs: bool) -> storage.OutsideStorageRoot:
    with pytest.raises(storage.OutsideStorageRoot) as info:
        storage.check_uri(uri, [root], tenant, "source_uri", **kwargs)
    exc = info.value
    assert exc.reason == "ERROR_REASON_OUTSIDE_STORAGE_ROOT"
    assert exc.code.name == "INVALID_ARGUMENT"
    assert [v.field for v in exc.violations] == ["source_uri"]
    return exc


def test_a_file_in_the_tenants_area_is_accepted_as_uri_or_path(root: Path) -> None:
    clip = root / "acme" / "in" / "clip.mp4"
    assert storage.check_uri(clip.as_uri(), [root], "acme", "f", must_exist=True) == clip.resolve()
    assert storage.check_uri(str(clip), [root], "acme", "f") == clip.resolve()
    assert storage.check_uri(f"file://localhost{clip}", [root], "acme", "f") == clip.resolve()
    # Not there yet (an output): accepted, its real path returned.
    out = root / "acme" / "out" / "new"
    assert storage.check_uri(out.as_uri(), [root], "acme", "f") == out.resolve()


def test_traversal_relative_paths_hosts_and_schemes_are_refused(root: Path) -> None:
    assert "'..'" in str(refused(f"file://{root}/acme/../other/secret.mp4", root))
    assert "relative" in str(refused("file:acme/in/clip.mp4", root))
    assert "another host" in str(refused(f"file://example.com{root}/acme/in/clip.mp4", root))
    assert "'s3'" in str(refused("s3://bucket/acme/clip.mp4", root))
    assert "'http'" in str(refused("http://example.com/clip.mp4", root))
    assert "'(none)'" in str(refused("acme/in/clip.mp4", root))


def test_another_tenants_area_the_root_itself_and_the_area_itself_are_refused(root: Path) -> None:
    assert "outside tenant 'acme'" in str(refused((root / "other" / "secret.mp4").as_uri(), root))
    refused(root.as_uri(), root)
    refused((root / "acme").as_uri(), root)
    refused("file:///etc/passwd", root)
    refused((root.parent / "storage-evil" / "acme" / "x").as_uri(), root)  # a prefix, not a parent


def test_an_admin_may_use_any_tenants_area_but_not_outside_the_roots(root: Path) -> None:
    secret = root / "other" / "secret.mp4"
    assert storage.check_uri(secret.as_uri(), [root], "default", "f", all_tenants=True) == secret.resolve()
    refused("file:///etc/passwd", root, "default", all_tenants=True)
    refused((root / "other").as_uri(), root, "default", all_tenants=True)


def test_a_link_leaving_the_area_is_refused_also_for_a_path_below_it(root: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (root / "acme" / "escape").symlink_to(tmp_path / "outside")
    (root / "acme" / "peek").symlink_to(root / "other" / "secret.mp4")
    assert "symbolic link" in str(refused((root / "acme" / "escape").as_uri(), root))
    refused((root / "acme" / "escape" / "new" / "out").as_uri(), root)
    refused((root / "acme" / "peek").as_uri(), root)
    # A link that stays inside the area is fine.
    (root / "acme" / "alias").symlink_to(root / "acme" / "in")
    assert (
        storage.check_uri((root / "acme" / "alias" / "clip.mp4").as_uri(), [root], "acme", "f")
        == (root / "acme" / "in" / "clip.mp4").resolve()
    )


def test_devices_and_fifos_are_refused(root: Path) -> None:
    (root / "acme" / "zero").symlink_to("/dev/zero")
    refused((root / "acme" / "zero").as_uri(), root)  # leaves the area, whatever it is
    refused("file:///dev/zero", root)
    os.mkfifo(root / "acme" / "pipe")
    assert "FIFO" in str(refused((root / "acme" / "pipe").as_uri(), root))
    # Even where the area itself holds devices (a root of / and a tenant called dev).
    assert "device" in str(refused("file:///dev/zero", Path("/"), "dev"))


def test_missing_inputs_are_refused_when_they_must_exist(root: Path) -> None:
    assert "does not exist" in str(refused((root / "acme" / "nope.mp4").as_uri(), root, must_exist=True))


def test_without_roots_every_file_uri_is_refused(root: Path) -> None:
    with pytest.raises(storage.OutsideStorageRoot, match="no storage root is configured"):
        storage.check_uri((root / "acme" / "in" / "clip.mp4").as_uri(), [], "acme", "output_uri")


def test_roots_parse_from_uris_paths_and_commas_and_refuse_other_schemes(tmp_path: Path) -> None:
    assert storage.parse_roots([f"{tmp_path}/a,file://{tmp_path}/b", f"{tmp_path}/a"]) == (
        tmp_path / "a",
        tmp_path / "b",
    )
    # s3:// roots are accepted (tests/security/test_storage_roots_s3_unit.py); other schemes are not.
    with pytest.raises(errors.ConfigError, match="'gs'"):
        storage.parse_roots(["gs://bucket"])
    with pytest.raises(errors.ConfigError, match="absolute"):
        storage.parse_roots(["relative/dir"])
    with pytest.raises(errors.ConfigError):
        storage.parse_roots(["/"])
