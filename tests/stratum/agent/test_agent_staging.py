"""The agent's staging layer: file:// inputs and outputs, path safety, the scheme registry.

``tmp_path`` is the storage root of these tests: file URIs lie in ``tmp_path/default`` (tenant
default), the only place the agent's file store reads or writes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cosmos.stratum.agent import staging
from cosmos.stratum.v1 import job_pb2

pytestmark = pytest.mark.unit


def uri(path: Path) -> str:
    return path.absolute().as_uri()


async def test_inputs_are_hard_linked_or_copied_into_the_work_dir(tmp_path: Path) -> None:
    src = tmp_path / "default" / "media" / "in put.mp4"  # a space: URIs are percent-encoded
    src.parent.mkdir(parents=True)
    src.write_bytes(b"movie")
    folder = tmp_path / "default" / "media" / "subs"
    folder.mkdir()
    (folder / "en.vtt").write_text("WEBVTT")
    work = tmp_path / "work"
    work.mkdir()

    inputs = [
        job_pb2.Artifact(uri=uri(src), path="in/source.mp4"),
        job_pb2.Artifact(uri=uri(folder), path="subs"),
    ]
    await staging.stage_inputs(staging.default_registry([tmp_path]), inputs, work)

    staged = work / "in" / "source.mp4"
    assert staged.read_bytes() == b"movie"
    assert os.stat(staged).st_ino == os.stat(src).st_ino  # same file system: a link, not a copy
    assert (work / "subs" / "en.vtt").read_text() == "WEBVTT"


async def test_copy_mode_never_links(tmp_path: Path) -> None:
    src = tmp_path / "default" / "a.bin"
    src.parent.mkdir()
    src.write_bytes(b"x")
    registry = staging.StoreRegistry([tmp_path])
    registry.register("file", staging.FileStore(link=False))
    await staging.stage_inputs(registry, [job_pb2.Artifact(uri=uri(src), path="a.bin")], tmp_path / "w")
    assert os.stat(tmp_path / "w" / "a.bin").st_ino != os.stat(src).st_ino


async def test_missing_input_is_a_clear_input_failure(tmp_path: Path) -> None:
    missing = job_pb2.Artifact(uri=uri(tmp_path / "default" / "nope.mp4"), path="in.mp4")
    with pytest.raises(staging.InputFailed, match=r"nope\.mp4.*does not exist") as exc:
        await staging.stage_inputs(staging.default_registry([tmp_path]), [missing], tmp_path / "w")
    assert exc.value.reason == "INPUT_FAILED"


async def test_outputs_are_published_atomically_and_returned(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "hls").mkdir(parents=True)
    (work / "out.mp4").write_bytes(b"encoded")
    (work / "hls" / "index.m3u8").write_text("#EXTM3U")
    dest = tmp_path / "default" / "store" / "deep" / "out.mp4"
    dest_dir = tmp_path / "default" / "store" / "hls"
    dest_dir.mkdir(parents=True)  # empty: taken over
    dest.parent.mkdir()
    dest.write_bytes(b"an earlier attempt's")  # a file is replaced (a retried attempt)

    outputs = [
        job_pb2.Artifact(uri=uri(dest), path="out.mp4"),
        job_pb2.Artifact(uri=uri(dest_dir), path="hls"),
    ]
    registry = staging.default_registry([tmp_path])
    stored = await staging.stage_outputs(registry, outputs, work)

    assert [(a.uri, a.path) for a in stored] == [(o.uri, o.path) for o in outputs]
    assert dest.read_bytes() == b"encoded"
    assert sorted(p.name for p in dest_dir.iterdir()) == ["index.m3u8"]
    # No temporary files are left next to the outputs.
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.mp4"]

    # A directory holding files is never replaced: the agent did not write them.
    (dest_dir / "stale.ts").write_text("someone's")
    with pytest.raises(staging.OutputExists, match="left as it is") as refused:
        await staging.stage_outputs(registry, outputs[1:], work)
    assert refused.value.reason == "OUTPUT_EXISTS"
    assert sorted(p.name for p in dest_dir.iterdir()) == ["index.m3u8", "stale.ts"]
    assert sorted(p.name for p in dest_dir.parent.iterdir()) == ["deep", "hls"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs root")
async def test_outputs_and_the_directories_made_for_them_belong_to_the_jobs_uid(tmp_path: Path) -> None:
    # The agent (root) stores what a sandboxed job made; its tenant's later jobs (an encode's clean-up)
    # must be able to remove it, and what was there before keeps its owner.
    work = tmp_path / "work"
    (work / "out" / "360p").mkdir(parents=True)
    (work / "out" / "360p" / "chunk.mp4").write_bytes(b"encoded")
    area = tmp_path / "default"
    area.mkdir()
    dest = area / "scratch" / "jobs" / "3" / "out"
    owner = (65534, 65534)
    outputs = [job_pb2.Artifact(uri=uri(dest), path="out")]
    await staging.stage_outputs(staging.default_registry([tmp_path]), outputs, work, owner=owner)

    made = [area / "scratch", area / "scratch" / "jobs", area / "scratch" / "jobs" / "3"]
    stored = [dest, dest / "360p", dest / "360p" / "chunk.mp4"]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in made + stored} == {owner}
    assert area.stat().st_uid == 0  # there before: not the job's to own


async def test_missing_or_escaping_outputs_fail(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    registry = staging.default_registry([tmp_path])
    target = job_pb2.Artifact(uri=uri(tmp_path / "default" / "o"), path="out.mp4")
    with pytest.raises(staging.OutputFailed, match=r"'out\.mp4' was not produced"):
        await staging.stage_outputs(registry, [target], work)

    secret = tmp_path / "secret"
    secret.write_text("agent's file")
    (work / "out.mp4").symlink_to(secret)
    with pytest.raises(staging.OutputFailed, match="outside the work dir"):
        await staging.stage_outputs(registry, [target], work)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../up", "a/../../b", "."])
def test_artifact_paths_must_stay_in_the_work_dir(tmp_path: Path, path: str) -> None:
    with pytest.raises(staging.InvalidArtifact):
        staging.artifact_path(tmp_path, path)


def test_unknown_scheme_is_refused_by_name(tmp_path: Path) -> None:
    registry = staging.default_registry()
    with pytest.raises(
        staging.UnsupportedScheme, match=r"unsupported URI scheme 'gs'.*supports: file://, s3://"
    ):
        staging.check(registry, [job_pb2.Artifact(uri="gs://bucket/key.mp4", path="k.mp4")], tmp_path)
    with pytest.raises(staging.UnsupportedScheme, match=r"scheme \(none\)"):
        registry.store_for("relative/path.mp4")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("file:///data/a%20b.mp4", "/data/a b.mp4"), ("file://localhost/data/x", "/data/x")],
)
def test_file_uris(text: str, expected: str) -> None:
    assert staging.file_uri_path(text) == Path(expected)


@pytest.mark.parametrize("text", ["file://otherhost/data/x", "file:data/x"])
def test_file_uris_elsewhere_or_relative_are_invalid(text: str) -> None:
    with pytest.raises(staging.InvalidArtifact):
        staging.file_uri_path(text)


async def test_other_stores_plug_in_by_scheme(tmp_path: Path) -> None:
    class MemoryStore(staging.Store):
        def __init__(self) -> None:
            self.objects = {"mem://bucket/in": b"remote bytes"}

        async def fetch(self, uri: str, dest: Path) -> None:
            await asyncio.to_thread(dest.write_bytes, self.objects[uri])

        async def store(self, src: Path, uri: str, owner: staging.Owner | None = None) -> str:
            self.objects[uri] = await asyncio.to_thread(src.read_bytes)
            return uri + "?version=1"

    store = MemoryStore()
    registry = staging.default_registry()
    registry.register("MEM", store)
    assert registry.schemes == ["file", "mem", "s3"]
    await staging.stage_inputs(registry, [job_pb2.Artifact(uri="mem://bucket/in", path="in")], tmp_path)
    stored = await staging.stage_outputs(
        registry, [job_pb2.Artifact(uri="mem://bucket/out", path="in")], tmp_path
    )
    assert store.objects["mem://bucket/out"] == b"remote bytes"
    assert stored[0].uri == "mem://bucket/out?version=1"
