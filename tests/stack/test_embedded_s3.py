"""The embedded stack with its S3 server: SeaweedFS locked down, keys private, a Stratum job reading
and writing s3:// through the local agent, another tenant's prefix refused at submit."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from encode_harness import embedded_stack
from stratum_harness import JobsClient

from cosmos.runtime import rpc_errors, s3
from cosmos.stack.embedded import EmbeddedStack
from cosmos.stratum.v1 import job_pb2, job_service_pb2_grpc

JS = job_pb2.JobState


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    async with embedded_stack(tmp_path / "data", s3=True) as running:
        yield running


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow  # about 25 s: a whole stack with S3, whose filer stops in 15 s
async def test_a_job_reads_and_writes_s3_through_the_embedded_stack(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    assert stack.s3 is not None
    identity = stack.s3.s3_dir / "identities.json"
    assert identity.stat().st_mode & 0o777 == 0o600
    assert stack.context().s3_endpoint == stack.s3.endpoint
    # The CLI's way in: the context names the endpoint and the identity file it reads the key from.
    assert stack.context().s3_config() == stack.s3.config
    client = s3.S3Client(stack.context().s3_config())
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    await client.upload_file(src, "s3://cosmos/default/jobs/in.bin")
    # No anonymous access to the bucket.
    assert _status(f"{stack.s3.endpoint}/cosmos/default/jobs/in.bin") == 403

    spec = job_pb2.JobSpec(
        argv=[sys.executable, "-c", "import shutil; shutil.copy('in/data.bin', 'out.bin')"],
    )
    spec.inputs.add(uri="s3://cosmos/default/jobs/in.bin", path="in/data.bin")
    spec.outputs.add(uri="s3://cosmos/default/jobs/out/copy.bin", path="out.bin")
    async with stack.context().channel("stratum") as channel:
        jobs = JobsClient(channel, job_service_pb2_grpc.JobServiceStub(channel))
        done = await jobs.wait((await jobs.submit(spec)).job_id, timeout=120)
        assert done.state == JS.JOB_STATE_SUCCEEDED, done.failure_reason
        back = tmp_path / "back.bin"
        await client.download_file("s3://cosmos/default/jobs/out/copy.bin", back)
        assert back.read_bytes() == src.read_bytes()

        # The agent holds the S3 key; the jobs never see it.
        probe = job_pb2.JobSpec(
            argv=[
                sys.executable,
                "-c",
                "import os, sys; sys.exit(any(k.startswith('AWS_') for k in os.environ))",
            ]
        )
        probed = await jobs.wait((await jobs.submit(probe)).job_id, timeout=120)
        assert probed.state == JS.JOB_STATE_SUCCEEDED, "a job saw AWS_* variables"

        # A missing input fails the job for good, with the reason.
        missing = job_pb2.JobSpec(argv=[sys.executable, "-c", "pass"])
        missing.inputs.add(uri="s3://cosmos/default/jobs/nope.bin", path="x")
        failed = await jobs.wait((await jobs.submit(missing)).job_id, timeout=120)
        assert failed.state == JS.JOB_STATE_FAILED
        assert "does not exist" in failed.failure_reason, failed.failure_reason
        assert failed.result.failure_class == job_pb2.FAILURE_CLASS_PERMANENT, failed.result

        # Another tenant's prefix is refused at submit, naming the field.
        other = job_pb2.JobSpec(argv=[sys.executable, "-c", "pass"])
        other.inputs.add(uri="s3://cosmos/other/secret.bin", path="x")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.submit(other)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, violations = rpc_errors.details_of(caught.value)
        assert [v.field for v in violations] == ["spec.inputs[0].uri"]
