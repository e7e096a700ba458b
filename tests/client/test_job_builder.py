"""The job builder and the encode request key, without a server."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from cosmos.client import InvalidJobError, Job, encode_request_id, parse_memory
from cosmos.stratum.v1 import job_pb2

pytestmark = pytest.mark.unit


def test_the_cards_job_maps_to_a_jobspec() -> None:
    job = (
        Job.builder()
        .image("netflixoss/ffmpeg-encoder:av1-v12")
        .command("ffmpeg", "-i", "mezz.mov")
        .gpu(1, "A100")
        .cpu(8)
        .memory("32Gi")
        .input("s3://prod-mezz/title/mezz.mov")
        .output("s3://prod-encoded/title/av1.mp4", "out/av1.mp4")
        .args(["-c:v", "libaom-av1", "-crf", "30"])
        .args("out/av1.mp4")
        .env("LOG_LEVEL", "debug")
        .secret("API_TOKEN", "s3cr3t")
        .timeout(timedelta(minutes=45))
        .priority(5)
        .label("title", "t-1")
        .progress("ffmpeg", media_duration=120)
        .build()
    )
    spec = job.to_spec()
    assert list(spec.argv) == ["ffmpeg", "-i", "mezz.mov", "-c:v", "libaom-av1", "-crf", "30", "out/av1.mp4"]
    assert spec.image == "netflixoss/ffmpeg-encoder:av1-v12"
    assert spec.resources.cpu_millis == 8000 and spec.resources.memory_bytes == 32 << 30
    assert spec.resources.gpu.count == 1 and list(spec.resources.gpu.models) == ["A100"]
    assert [(a.uri, a.path) for a in spec.inputs] == [("s3://prod-mezz/title/mezz.mov", "mezz.mov")]
    assert [(a.uri, a.path) for a in spec.outputs] == [("s3://prod-encoded/title/av1.mp4", "out/av1.mp4")]
    assert dict(spec.env) == {"LOG_LEVEL": "debug"} and dict(spec.secrets) == {"API_TOKEN": "s3cr3t"}
    assert spec.timeout.ToTimedelta() == timedelta(minutes=45) and spec.priority == 5
    assert spec.progress_format == job_pb2.PROGRESS_FORMAT_FFMPEG and spec.media_duration.seconds == 120
    assert dict(spec.labels) == {"title": "t-1"}
    assert "s3cr3t" not in repr(job)  # secrets stay out of logs and tracebacks


def test_a_built_job_is_immutable_and_unset_fields_stay_unset() -> None:
    job = Job.builder().command("python3", "-c", "pass").gpu(2, "A100|H100").build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.image = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        job.env["X"] = "1"  # type: ignore[index]
    assert job.gpu_models == ("A100", "H100")
    spec = job.to_spec()
    assert not spec.HasField("timeout") and spec.resources.cpu_millis == 0
    assert spec.progress_format == job_pb2.PROGRESS_FORMAT_UNSPECIFIED
    no_gpu = Job.builder().command("true").build().to_spec()
    assert not no_gpu.resources.HasField("gpu")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16Gi", 16 << 30), ("512Mi", 512 << 20), ("2G", 2 * 10**9), ("1.5Gi", 3 << 29), ("4096", 4096), (0, 0)],
)
def test_memory_quantities(text: str | int, expected: int) -> None:
    assert parse_memory(text) == expected


def test_build_reports_every_problem_by_its_jobspec_field() -> None:
    builder = (
        Job.builder()
        .memory("16GB")
        .gpu(-1)
        .cpu(0)
        .timeout(-5)
        .env("1BAD", "x")
        .input("not a uri")
        .output("file:///out/x.mp4", "../escape.mp4")
    )
    with pytest.raises(InvalidJobError) as caught:
        builder.build()
    fields = [v.field for v in caught.value.violations]
    assert fields == [
        "spec.argv",
        "spec.resources.cpu_millis",
        "spec.resources.memory_bytes",
        "spec.resources.gpu.count",
        "spec.timeout",
        "spec.env['1BAD']",
        "spec.inputs[0].uri",
        "spec.outputs[0].path",
    ]
    message = str(caught.value)
    assert "no command" in message and "'16GB' is not a memory quantity" in message
    assert isinstance(caught.value, ValueError)  # what plain Python code catches for bad values


def test_gpu_count_and_share_exclude_each_other_and_models_need_a_gpu() -> None:
    with pytest.raises(InvalidJobError, match="exclude each other"):
        Job.builder().command("x").gpu(1).gpu_share(0.5).build()
    with pytest.raises(InvalidJobError, match=r"spec\.resources\.gpu\.models"):
        Job.builder().command("x").gpu(0, "A100").build()
    shared = Job.builder().command("x").gpu_share(0.25, "T4").build().to_spec()
    assert shared.resources.gpu.share == 0.25 and shared.resources.gpu.count == 0


def test_the_encode_request_key_is_the_cards_sha256_of_source_and_profiles() -> None:
    key = encode_request_id("file:///a/in.mp4", ["720p", "1080p"], output_uri="file:///a/out")
    assert key.startswith("encode-") and len(key) == len("encode-") + 64
    # Order and repeats of profiles name the same ladder; anything else another encode.
    assert key == encode_request_id("file:///a/in.mp4", ["1080p", "720p", "720p"], output_uri="file:///a/out")
    others = {
        encode_request_id("file:///a/other.mp4", ["720p", "1080p"], output_uri="file:///a/out"),
        encode_request_id("file:///a/in.mp4", ["720p"], output_uri="file:///a/out"),
        encode_request_id("file:///a/in.mp4", ["720p", "1080p"], output_uri="file:///a/out2"),
        encode_request_id("file:///a/in.mp4", ["720p", "1080p"], output_uri="file:///a/out", overwrite=True),
    }
    assert key not in others and len(others) == 4
