"""Object-store storage roots, in-process: which s3:// URIs a tenant may use
(cosmos.security.storage.check_object_uri / check_any)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmos import errors
from cosmos.security import storage

pytestmark = pytest.mark.unit

ROOTS: list[storage.Root] = [storage.S3Root("cosmos"), storage.S3Root("media", "tenants")]


def refused(uri: str, tenant: str = "acme", **kwargs: bool) -> storage.OutsideStorageRoot:
    with pytest.raises(storage.OutsideStorageRoot) as info:
        storage.check_object_uri(uri, ROOTS, tenant, "source_uri", **kwargs)
    exc = info.value
    assert exc.reason == "ERROR_REASON_OUTSIDE_STORAGE_ROOT"
    assert exc.code.name == "INVALID_ARGUMENT"
    assert [v.field for v in exc.violations] == ["source_uri"]
    return exc


def test_roots_parse_from_flags_beside_file_roots(tmp_path: Path) -> None:
    roots = storage.parse_roots([f"s3://cosmos,{tmp_path},s3://media/tenants/", "s3://cosmos"])
    assert roots == (storage.S3Root("cosmos"), tmp_path, storage.S3Root("media", "tenants"))
    for bad in ("s3://", "s3://UPPER", "s3://b_ad", "s3://bucket/a/../b", "s3://bucket/a//b", "s3://bkt?x=1"):
        with pytest.raises(errors.ConfigError):
            storage.parse_roots([bad])


def test_keys_in_the_tenants_area_are_accepted() -> None:
    assert storage.check_object_uri("s3://cosmos/acme/in/clip.mp4", ROOTS, "acme", "f") == (
        "s3://cosmos/acme/in/clip.mp4"
    )
    assert storage.check_object_uri("s3://media/tenants/acme/out/", ROOTS, "acme", "f") == (
        "s3://media/tenants/acme/out/"
    )
    assert storage.check_any("s3://cosmos/acme/x", ROOTS, "acme", "f") == "s3://cosmos/acme/x"


def test_other_tenants_the_area_itself_and_prefix_lookalikes_are_refused() -> None:
    assert "outside tenant 'acme'" in str(refused("s3://cosmos/other/secret.mp4"))
    refused("s3://cosmos/acme")  # the area itself, not an object inside it
    refused("s3://cosmos/acme/")
    refused("s3://cosmos/acmeevil/x")  # a prefix of the name, not the area
    refused("s3://media/acme/x")  # media's root is under tenants/
    refused("s3://media/tenantsx/acme/x")


def test_traversal_empty_keys_and_unknown_buckets_are_refused() -> None:
    assert "'..'" in str(refused("s3://cosmos/acme/../other/secret.mp4"))
    assert "empty or '.'" in str(refused("s3://cosmos/acme//x"))
    assert "empty or '.'" in str(refused("s3://cosmos/acme/./x"))
    assert "no object key" in str(refused("s3://cosmos"))
    assert "no object key" in str(refused("s3://cosmos/"))
    assert "bucket 'elsewhere'" in str(refused("s3://elsewhere/acme/x"))
    assert "query" in str(refused("s3://cosmos/acme/x?versionId=1"))
    assert "1024" in str(refused("s3://cosmos/acme/" + "k" * 1100))


def test_without_an_s3_root_every_s3_uri_is_refused(tmp_path: Path) -> None:
    with pytest.raises(storage.OutsideStorageRoot, match="no s3:// storage root"):
        storage.check_any("s3://cosmos/acme/x", [tmp_path], "acme", "spec.inputs[0].uri")
    # And file URIs are not satisfied by an s3 root.
    with pytest.raises(storage.OutsideStorageRoot, match="no storage root"):
        storage.check_any("file:///tmp/acme/x", ROOTS, "acme", "spec.inputs[0].uri")


def test_an_admin_may_use_any_tenants_area_but_not_the_top() -> None:
    assert storage.check_object_uri("s3://cosmos/other/x", ROOTS, "default", "f", all_tenants=True)
    refused("s3://cosmos/other", "default", all_tenants=True)
    refused("s3://media/other/x", "default", all_tenants=True)


def test_stratum_validation_names_every_s3_artifact_outside_the_area() -> None:
    from cosmos.stratum import validation
    from cosmos.stratum.v1 import job_pb2

    spec = job_pb2.JobSpec(tenant="acme")
    spec.inputs.add(uri="s3://cosmos/acme/in/clip.mp4", path="in.mp4")
    spec.outputs.add(uri="s3://cosmos/acme/out/", path="out")
    validation.check_storage(spec, ROOTS)
    spec.inputs.add(uri="s3://cosmos/other/clip.mp4", path="x.mp4")
    spec.outputs.add(uri="s3://nobucket/acme/o", path="o")
    with pytest.raises(storage.OutsideStorageRoot) as exc:
        validation.check_storage(spec, ROOTS)
    assert [v.field for v in exc.value.violations] == ["spec.inputs[1].uri", "spec.outputs[1].uri"]
