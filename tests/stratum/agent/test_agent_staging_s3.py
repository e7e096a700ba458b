"""The agent's s3:// staging against a real SeaweedFS: inputs in, outputs out, tenant areas enforced,
failures classified (a missing object fails for good, an unreachable store is retried)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cosmos.runtime import s3
from cosmos.runtime.config import free_port
from cosmos.security import storage
from cosmos.stack import seaweed
from cosmos.stratum.agent import failures, staging
from cosmos.stratum.v1 import job_pb2

ROOTS = [storage.S3Root("cosmos")]


def registry(server: seaweed.S3Server) -> staging.StoreRegistry:
    return staging.default_registry(ROOTS, s3.S3Client(server.config))


async def test_inputs_and_outputs_stream_through_s3(s3_server: seaweed.S3Server, tmp_path: Path) -> None:
    client = s3.S3Client(s3_server.config)
    src = tmp_path / "clip.bin"
    src.write_bytes(os.urandom(200_000))
    await client.upload_file(src, "s3://cosmos/acme/in/clip.bin")
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "en.vtt").write_text("WEBVTT")
    await client.upload_tree(tmp_path / "subs", "s3://cosmos/acme/in/subs")

    work = tmp_path / "work"
    work.mkdir()
    inputs = [
        job_pb2.Artifact(uri="s3://cosmos/acme/in/clip.bin", path="in/source.bin"),
        job_pb2.Artifact(uri="s3://cosmos/acme/in/subs", path="subs"),
    ]
    await staging.stage_inputs(registry(s3_server), inputs, work, "acme")
    assert (work / "in" / "source.bin").read_bytes() == src.read_bytes()
    assert (work / "subs" / "en.vtt").read_text() == "WEBVTT"

    (work / "out").mkdir()
    (work / "out" / "a.txt").write_text("a")
    (work / "out" / "deep").mkdir()
    (work / "out" / "deep" / "b.txt").write_text("b")
    outputs = [
        job_pb2.Artifact(uri="s3://cosmos/acme/out/result.bin", path="in/source.bin"),
        job_pb2.Artifact(uri="s3://cosmos/acme/out/tree", path="out"),
    ]
    stored = await staging.stage_outputs(registry(s3_server), outputs, work, "acme")
    assert [a.uri for a in stored] == ["s3://cosmos/acme/out/result.bin", "s3://cosmos/acme/out/tree"]
    assert await client.get_bytes("s3://cosmos/acme/out/tree/deep/b.txt") == b"b"
    back = tmp_path / "back.bin"
    await client.download_file("s3://cosmos/acme/out/result.bin", back)
    assert back.read_bytes() == src.read_bytes()

    # The same tree again (a retried attempt whose upload completed) is done already; another tree
    # never mixes with the objects under that prefix.
    assert await staging.stage_outputs(registry(s3_server), outputs[1:], work, "acme")
    (work / "out" / "c.txt").write_text("c")
    with pytest.raises(staging.OutputExists):
        await staging.stage_outputs(registry(s3_server), outputs[1:], work, "acme")


async def test_other_tenants_objects_are_never_touched(s3_server: seaweed.S3Server, tmp_path: Path) -> None:
    client = s3.S3Client(s3_server.config)
    await client.put_bytes("s3://cosmos/other/secret.bin", b"secret")
    for uri in ("s3://cosmos/other/secret.bin", "s3://cosmos/acme/../other/secret.bin", "s3://x/acme/a"):
        with pytest.raises(staging.OutsideStorageRoot) as exc:
            await staging.stage_inputs(
                registry(s3_server), [job_pb2.Artifact(uri=uri, path="in")], tmp_path / "w", "acme"
            )
        assert "spec.inputs[0].uri" in str(exc.value)
        assert failures.classify(exc.value.reason) == job_pb2.FAILURE_CLASS_PERMANENT
    assert not (tmp_path / "w" / "in").exists()


async def test_a_missing_object_is_permanent_an_unreachable_store_transient(
    s3_server: seaweed.S3Server, tmp_path: Path
) -> None:
    missing = [job_pb2.Artifact(uri="s3://cosmos/acme/nope.mp4", path="in.mp4")]
    with pytest.raises(staging.InputMissing, match="does not exist") as exc:
        await staging.stage_inputs(registry(s3_server), missing, tmp_path / "w", "acme")
    assert failures.classify(exc.value.reason) == job_pb2.FAILURE_CLASS_PERMANENT

    down = s3.S3Client(
        s3.S3Config(f"http://127.0.0.1:{free_port()}", "us-east-1", "k", "s"), attempts=2, backoff=0.01
    )
    with pytest.raises(staging.StorageUnavailable) as exc2:
        await staging.stage_inputs(staging.default_registry(ROOTS, down), missing, tmp_path / "w", "acme")
    assert failures.classify(exc2.value.reason) == job_pb2.FAILURE_CLASS_TRANSIENT


async def test_an_input_is_downloaded_once_per_host_and_linked(
    s3_server: seaweed.S3Server, tmp_path: Path
) -> None:
    client = s3.S3Client(s3_server.config)
    await client.put_bytes("s3://cosmos/acme/src.mp4", b"v1")
    cache = tmp_path / "cache"
    reg = staging.default_registry(ROOTS, client, cache)
    art = [job_pb2.Artifact(uri="s3://cosmos/acme/src.mp4", path="src.mp4")]
    await staging.stage_inputs(reg, art, tmp_path / "j1", "acme")
    await staging.stage_inputs(reg, art, tmp_path / "j2", "acme")
    assert os.stat(tmp_path / "j1" / "src.mp4").st_ino == os.stat(tmp_path / "j2" / "src.mp4").st_ino
    assert len(os.listdir(cache)) == 1
    # A replaced object is another version: fetched anew, never the stale copy.
    await client.put_bytes("s3://cosmos/acme/src.mp4", b"v2")
    await staging.stage_inputs(reg, art, tmp_path / "j3", "acme")
    assert (tmp_path / "j3" / "src.mp4").read_bytes() == b"v2"
