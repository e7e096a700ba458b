"""Job secrets end to end: a job sees its secret, and the secret is nowhere else.

Real NATS, a real Stratum and a real agent. The secret must reach the job's environment, and appear
in none of: the JobService responses, WatchJob events (the log line where the job printed it, the
stderr tail), the raw bytes of Stratum's bucket and stream and of NATS's store on disk, the Stratum
and agent logs.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.js.errors
import pytest
import security_harness
from stratum_harness import JS, Agents, JobsClient, python_job, wait_agents

from cosmos.runtime import rpc_errors
from cosmos.security import secrets
from cosmos.security.tls import TlsFiles
from cosmos.stratum.store import EVENTS_STREAM, JOBS_BUCKET
from cosmos.stratum.v1 import job_pb2, job_service_pb2

STRATUM_NATS = TlsFiles.in_dir(security_harness.pki_dir(), "stratum")
"""Stratum's own NATS identity: the one that may read its bucket and stream."""

SHOW = """
import hashlib, json, os, sys
value = os.environ["API_TOKEN"]
print("token=" + value, flush=True)
print("on stderr: " + value, file=sys.stderr, flush=True)
digest = hashlib.sha256(value.encode()).hexdigest()
with open(os.environ["COSMOS_RESULT_FILE"], "w") as f:
    json.dump({"sha256": digest, "plain": os.environ["PLAIN"]}, f)
sys.exit(0 if digest == sys.argv[1] else 3)
"""


@pytest.fixture
def stratum(start_service: Callable[..., Any], nats_url: str) -> Any:
    return start_service("stratum", "--nats", nats_url, "--lease-seconds", "2", "--heartbeat-interval", "0.3")


@pytest.fixture
async def jobs(stratum: Any) -> AsyncIterator[JobsClient]:
    client = JobsClient.connect(stratum.target)
    yield client
    await client.channel.close(None)


def secret_job(code: str, value: str, *args: str) -> job_pb2.JobSpec:
    spec = python_job(code)
    spec.argv.extend(args)
    spec.env["PLAIN"] = "not a secret"
    spec.secrets["API_TOKEN"] = value
    return spec


def assert_redacted(job: job_pb2.Job, secret: str) -> None:
    assert dict(job.spec.secrets) == {"API_TOKEN": secrets.REDACTED}
    assert not job.HasField("sealed_secrets")
    assert secret.encode() not in job.SerializeToString()


async def raw_messages(nats_url: str, stream: str) -> list[bytes]:
    """Every message body a stream holds, read by sequence (no decoding by Cosmos code)."""
    nc = await nats.connect(nats_url, **security_harness.nats_options(STRATUM_NATS))
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        bodies: list[bytes] = []
        if not info.state.messages:
            return bodies
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                bodies.append((await js.get_msg(stream, seq)).data or b"")
            except nats.js.errors.NotFoundError:
                continue
        return bodies
    finally:
        await nc.close()


async def stored_job(nats_url: str, job_id: str) -> job_pb2.Job:
    nc = await nats.connect(nats_url, **security_harness.nats_options(STRATUM_NATS))
    try:
        kv = await nc.jetstream().key_value(JOBS_BUCKET)
        return job_pb2.Job.FromString((await kv.get(job_id)).value or b"")
    finally:
        await nc.close()


def files_under(root: Path) -> Iterator[Path]:
    return (path for path in root.rglob("*") if path.is_file())


async def test_secret_reaches_the_job_and_nowhere_else(
    stratum: Any, jobs: JobsClient, agents: Agents, nats_url: str, tmp_path: Path
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    agents.start(stratum.target, "agent-s")
    await wait_agents(stratum.target, 1)

    spec = secret_job(SHOW, secret, digest)
    request = job_service_pb2.SubmitJobRequest(request_id="secret-job", spec=spec)
    submitted = await jobs.stub.SubmitJob(request)
    assert not submitted.deduplicated
    assert_redacted(submitted.job, secret)
    # A retry of the same request is recognised though the stored spec holds no value to compare.
    retried = await jobs.stub.SubmitJob(request)
    assert retried.deduplicated and retried.job.job_id == submitted.job.job_id
    assert_redacted(retried.job, secret)
    # The same request id with other secrets is another job: refused.
    other = job_pb2.JobSpec()
    other.CopyFrom(spec)
    other.secrets["SECOND"] = secret
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.stub.SubmitJob(job_service_pb2.SubmitJobRequest(request_id="secret-job", spec=other))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert secret not in (caught.value.details() or "")

    job_id = submitted.job.job_id
    done = await jobs.wait(job_id)
    assert done.state == JS.JOB_STATE_SUCCEEDED, done.failure_reason
    # The job saw the value (its digest matched, else it exits 3) next to its plain env.
    assert dict(done.result.output) == {"sha256": digest, "plain": "not a secret"}
    assert_redacted(done, secret)
    listed = await jobs.stub.ListJobs(job_service_pb2.ListJobsRequest())
    assert [j.job_id for j in listed.jobs] == [job_id]
    assert_redacted(listed.jobs[0], secret)

    events = await jobs.events(job_id)
    lines = [e.log.text for e in events if e.WhichOneof("event") == "log"]
    assert "token=***" in lines and "on stderr: ***" in lines
    result = next(e.result for e in events if e.WhichOneof("event") == "result")
    assert "on stderr: ***" in result.stderr_tail
    for event in events:
        assert secret.encode() not in event.SerializeToString()

    # A running job with a secret: sealed at rest (not in clear), cancelled, then the seal is dropped.
    sleeper = await jobs.submit(secret_job("import time; time.sleep(60)", secret))
    await jobs.wait(sleeper.job_id, [JS.JOB_STATE_RUNNING])
    at_rest = await stored_job(nats_url, sleeper.job_id)
    assert at_rest.sealed_secrets.key_id and at_rest.sealed_secrets.ciphertext
    assert dict(at_rest.spec.secrets) == {"API_TOKEN": secrets.REDACTED}
    cancelled = await jobs.stub.CancelJob(
        job_service_pb2.CancelJobRequest(request_id="c1", job_id=sleeper.job_id, reason="test")
    )
    assert_redacted(cancelled.job, secret)
    assert (await jobs.wait(sleeper.job_id)).state == JS.JOB_STATE_CANCELLED
    assert not (await stored_job(nats_url, job_id)).HasField("sealed_secrets")
    assert not (await stored_job(nats_url, sleeper.job_id)).HasField("sealed_secrets")

    stored = await raw_messages(nats_url, f"KV_{JOBS_BUCKET}") + await raw_messages(nats_url, EVENTS_STREAM)
    assert stored and not [body for body in stored if secret.encode() in body]
    assert any(b"token=***" in body for body in stored)  # the stream was read, and it is masked
    on_disk = [path for path in files_under(tmp_path / "nats") if secret.encode() in path.read_bytes()]
    assert on_disk == []

    agents.stop_all()
    stratum.stop()
    logs = {"stratum": stratum.output(), "agent": (tmp_path / "agent-s.log").read_text()}
    assert "job assigned" in logs["agent"]  # the right log was read
    assert {name: secret in text for name, text in logs.items()} == {"stratum": False, "agent": False}


async def test_secret_names_are_checked(jobs: JobsClient) -> None:
    cases = {"COSMOS_JOB_ID": "spec.secrets['COSMOS_JOB_ID']", "not a name": "spec.secrets['not a name']"}
    for name, field in cases.items():
        spec = python_job("pass")
        spec.secrets[name] = "value-1234"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.submit(spec)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, violations = rpc_errors.details_of(caught.value)
        assert [v.field for v in violations] == [field]
    spec = python_job("pass")
    spec.env["TOKEN"] = "a"
    spec.secrets["TOKEN"] = "b"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.submit(spec)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await jobs.stub.ListJobs(job_service_pb2.ListJobsRequest())
    assert list(listed.jobs) == []


def pki_without_secrets_key(tmp_path: Path) -> Path:
    """Stratum's certificate and the CA, but no secrets.key."""
    directory = tmp_path / "pki-no-secrets"
    directory.mkdir(mode=0o700)
    for name in ("ca.pem", "stratum.pem", "stratum-key.pem"):
        shutil.copy2(security_harness.pki_dir() / name, directory / name)
    return directory


async def test_secrets_are_refused_without_a_key(
    start_service: Callable[..., Any], nats_url: str, tmp_path: Path, agents: Agents
) -> None:
    pki_dir = pki_without_secrets_key(tmp_path)
    stratum = start_service("stratum", "--nats", nats_url, "--pki-dir", str(pki_dir))
    agents.start(stratum.target, "agent-n")
    await wait_agents(stratum.target, 1)
    client = JobsClient.connect(stratum.target)
    try:
        spec = python_job("pass")
        spec.secrets["API_TOKEN"] = "never-stored-4711"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.submit(spec)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info, _ = rpc_errors.details_of(caught.value)
        assert info is not None and info.reason == "ERROR_REASON_SECRETS_NOT_CONFIGURED"
        assert "--secrets-key-file" in (caught.value.details() or "")
        # Nothing was queued or stored.
        assert list((await client.stub.ListJobs(job_service_pb2.ListJobsRequest())).jobs) == []
        assert await raw_messages(nats_url, f"KV_{JOBS_BUCKET}") == []
        # A job without secrets still runs there.
        plain = await client.submit(python_job("pass"))
        assert (await client.wait(plain.job_id)).state == JS.JOB_STATE_SUCCEEDED
    finally:
        await client.channel.close(None)


def test_a_key_file_open_to_others_stops_stratum(
    start_service: Callable[..., Any], nats_url: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "secrets.key"
    secrets.create_key_file(key_file)
    key_file.chmod(0o644)
    stratum = start_service("stratum", "--nats", nats_url, "--secrets-key-file", str(key_file), wait=False)
    assert stratum.proc.wait(30) == 2
    output = stratum.output()
    assert "chmod 600" in output and str(key_file) in output
    assert key_file.read_text().split()[1] not in output
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o644  # reported, not silently "fixed"


async def test_unsealing_failure_fails_the_job_with_a_reason(
    start_service: Callable[..., Any], nats_url: str, tmp_path: Path, agents: Agents
) -> None:
    """A job sealed under a key the keyring lost fails with why, instead of running without it."""
    key_file = tmp_path / "secrets.key"
    secrets.create_key_file(key_file, "old")
    first = start_service("stratum", "--nats", nats_url, "--secrets-key-file", str(key_file))
    agents.start(first.target, "agent-u")
    await wait_agents(first.target, 1)
    agents.kill("agent-u")  # still known to the pool (its lease runs): the job is accepted and waits
    client = JobsClient.connect(first.target)
    spec = python_job("pass")
    spec.secrets["API_TOKEN"] = "lost-with-its-key-0815"
    job = await client.submit(spec)
    assert job.state == JS.JOB_STATE_QUEUED
    await client.channel.close(None)
    first.stop()
    key_file.unlink()
    secrets.create_key_file(key_file, "new")
    second = start_service("stratum", "--nats", nats_url, "--secrets-key-file", str(key_file))
    agents.start(second.target, "agent-u")
    client = JobsClient.connect(second.target)
    try:
        done = await client.wait(job.job_id)
        assert done.state == JS.JOB_STATE_FAILED
        assert "'old', which is not in the keyring" in done.failure_reason
        # Never handed to the (new) agent: the first one was killed before the job was submitted.
        assert "job assigned" not in (tmp_path / "agent-u.log").read_text()
        assert "lost-with-its-key-0815" not in second.output()
    finally:
        await client.channel.close(None)
