"""Storage roots against real servers: what a tenant may name as source, output or job artifact.

Optimus and Stratum run with one storage root; alice (tenant acme) and bob (tenant umbrella) call
with their own certificates. Every attack is refused with its code, reason and field, and nothing
happens: no encode or job exists afterwards, the files named are untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import security_harness

from cosmos.optimus.v1 import encode_service_pb2, encode_service_pb2_grpc
from cosmos.runtime import rpc_errors
from cosmos.stratum.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

INVALID, PRECONDITION = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
OUTSIDE = "ERROR_REASON_OUTSIDE_STORAGE_ROOT"


async def refused(call: Any, request: Any, code: grpc.StatusCode, reason: str, field: str) -> str:
    """The call fails with ``code``, ``reason`` and a violation of ``field``; its message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request)
    assert caught.value.code() == code, caught.value.details()
    info, violations = rpc_errors.details_of(caught.value)
    assert info is not None and info.reason == reason, caught.value.details()
    assert field in [v.field for v in violations], violations
    return caught.value.details() or ""


def snapshot(*directories: Path) -> dict[str, bytes]:
    """Every regular file under ``directories`` (links not followed) and its content."""
    found = {}
    for directory in directories:
        for p in sorted(directory.rglob("*")):
            if p.is_file() and not p.is_symlink():
                found[str(p)] = p.read_bytes()
    return found


async def test_sources_outputs_and_job_artifacts_stay_in_the_callers_area(
    start_service: Callable[..., Any], nats_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "storage"
    acme, umbrella = root / "acme", root / "umbrella"
    for area in (acme, umbrella):
        area.mkdir(parents=True)
        (area / "clip.mp4").write_bytes(b"not really a video, never read")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"host file")
    (acme / "innocent.mp4").symlink_to(outside / "secret.mp4")  # a link inside the area, leading out
    (acme / "published").symlink_to(outside)  # an output directory leading out
    (acme / "zero.mp4").symlink_to("/dev/zero")
    existing = acme / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("not Cosmos's\n")
    before = snapshot(root, outside)

    roots = ("--storage-root", str(root))
    stratum = start_service("stratum", "--nats", nats_url, *roots)
    plato = start_service("plato", "--nats", nats_url, "--stratum", stratum.target)
    optimus = start_service("optimus", "--plato", plato.target, "--work-root", str(tmp_path / "work"), *roots)
    alice = security_harness.user("alice", "acme", "submitter")
    bob = security_harness.user("bob", "umbrella", "submitter")

    def encode(source: str, output: str, overwrite: bool = False) -> encode_service_pb2.SubmitEncodeRequest:
        return encode_service_pb2.SubmitEncodeRequest(
            request_id=uuid.uuid4().hex, source_uri=source, profiles=["360p"], output_uri=output,
            overwrite=overwrite,
        )  # fmt: skip

    ok_source, ok_output = (acme / "clip.mp4").as_uri(), (acme / "out" / "title").as_uri()
    async with security_harness.channel(optimus.target, alice) as channel:
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        submit = stub.SubmitEncode
        cases = [
            (encode(f"file://{acme}/../umbrella/clip.mp4", ok_output), "source_uri", "'..'"),
            (encode(ok_source, f"file://{acme}/out/../../umbrella/title"), "output_uri", "'..'"),
            (encode((acme / "innocent.mp4").as_uri(), ok_output), "source_uri", "symbolic link"),
            (encode(ok_source, (acme / "published" / "title").as_uri()), "output_uri", "symbolic link"),
            (encode((acme / "zero.mp4").as_uri(), ok_output), "source_uri", "symbolic link"),
            (encode("file:///dev/zero", ok_output), "source_uri", "outside tenant 'acme'"),
            (encode("s3://bucket/acme/clip.mp4", ok_output), "source_uri", "no s3:// storage root"),
            (encode(ok_source, "gs://bucket/acme/out"), "output_uri", "'gs'"),
            (encode((umbrella / "clip.mp4").as_uri(), ok_output), "source_uri", "outside tenant 'acme'"),
            (encode(ok_source, (umbrella / "title").as_uri()), "output_uri", "outside tenant 'acme'"),
            (encode(ok_source, f"file://otherhost{acme}/title"), "output_uri", "another host"),
        ]
        for request, field, words in cases:
            message = await refused(submit, request, INVALID, OUTSIDE, field)
            assert words in message, message
        # An existing directory of someone else's files: refused, with or without overwrite.
        for overwrite in (False, True):
            message = await refused(
                submit, encode(ok_source, existing.as_uri(), overwrite), PRECONDITION,
                "ERROR_REASON_OUTPUT_EXISTS", "output_uri",
            )  # fmt: skip
            assert "holds files Cosmos did not publish" in message
        listed = await stub.ListEncodes(encode_service_pb2.ListEncodesRequest())
        assert list(listed.encodes) == []  # nothing was started

    # The same request is fine for the tenant whose area it is (the refusals above were about acme).
    async with security_harness.channel(optimus.target, bob) as channel:
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        accepted = await stub.SubmitEncode(
            encode((umbrella / "clip.mp4").as_uri(), (umbrella / "t").as_uri())
        )
        assert accepted.encode.encode_id
        await stub.CancelEncode(
            encode_service_pb2.CancelEncodeRequest(request_id="stop", encode_id=accepted.encode.encode_id)
        )

    # Stratum: job artifacts, checked against the job's tenant.
    marker = acme / "ran"

    def job(inputs: list[str] = [], outputs: list[str] = []) -> job_service_pb2.SubmitJobRequest:  # noqa: B006
        spec = job_pb2.JobSpec(argv=["sh", "-c", f"touch {marker}"])
        for i, uri in enumerate(inputs):
            spec.inputs.add(uri=uri, path=f"in{i}")
        for i, uri in enumerate(outputs):
            spec.outputs.add(uri=uri, path=f"out{i}")
        return job_service_pb2.SubmitJobRequest(request_id=uuid.uuid4().hex, spec=spec)

    async with security_harness.channel(stratum.target, alice) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        cases_jobs = [
            (job([f"file://{acme}/../umbrella/clip.mp4"]), "spec.inputs[0].uri"),
            (job([(acme / "innocent.mp4").as_uri()]), "spec.inputs[0].uri"),
            (job([(acme / "zero.mp4").as_uri()]), "spec.inputs[0].uri"),
            (job(["s3://bucket/acme/clip.mp4"]), "spec.inputs[0].uri"),
            (job([(umbrella / "clip.mp4").as_uri()]), "spec.inputs[0].uri"),
            (job([(acme / "clip.mp4").as_uri()], [(outside / "x").as_uri()]), "spec.outputs[0].uri"),
        ]
        for job_request, field in cases_jobs:
            await refused(jobs.SubmitJob, job_request, INVALID, OUTSIDE, field)
        assert list((await jobs.ListJobs(job_service_pb2.ListJobsRequest())).jobs) == []
    async with security_harness.channel(stratum.target) as channel:  # the admin sees every tenant
        all_jobs = await job_service_pb2_grpc.JobServiceStub(channel).ListJobs(
            job_service_pb2.ListJobsRequest()
        )
        assert all(j.spec.tenant != "acme" for j in all_jobs.jobs)

    assert snapshot(root, outside) == before
    assert not marker.exists() and sorted(p.name for p in outside.iterdir()) == ["secret.mp4"]


async def test_without_a_storage_root_no_file_uri_is_accepted(
    start_service: Callable[..., Any], nats_url: str, tmp_path: Path
) -> None:
    area = tmp_path / "default"
    area.mkdir()
    (area / "clip.mp4").write_bytes(b"x")
    stratum = start_service("stratum", "--nats", nats_url)
    async with security_harness.channel(stratum.target) as channel:  # even the admin
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        spec = job_pb2.JobSpec(argv=["true"])
        spec.inputs.add(uri=(area / "clip.mp4").as_uri(), path="in")
        message = await refused(
            jobs.SubmitJob, job_service_pb2.SubmitJobRequest(request_id="r", spec=spec), INVALID, OUTSIDE,
            "spec.inputs[0].uri",
        )  # fmt: skip
        assert "no storage root is configured" in message
        assert list((await jobs.ListJobs(job_service_pb2.ListJobsRequest())).jobs) == []
