"""Failure classes, disk space and scratch of the agent's job runner, on real processes (and a real
ffmpeg filling a real, tiny tmpfs where this host can mount one)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest

from cosmos.stratum.agent import failures, staging
from cosmos.stratum.agent.runner import JobRun, RunLimits, RunOutcome
from cosmos.stratum.v1 import job_pb2

PY = sys.executable
FC = job_pb2.FailureClass
FAST = RunLimits(kill_grace_s=0.5, leftover_grace_s=0.3, log_flush_s=0.02, usage_interval_s=0.1, drain_s=1.0)
NO_RESERVE = dataclasses.replace(FAST, min_free_bytes=0)


def new_run(tmp_path: Path, spec: job_pb2.JobSpec, **kwargs: Any) -> JobRun:
    return JobRun(
        spec,
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        attempt=1,
        work_root=kwargs.pop("work_root", tmp_path / "agent"),
        limits=kwargs.pop("limits", FAST),
        # tmp_path is the storage root: the jobs (tenant default) use files in tmp_path/default.
        stores=kwargs.pop("stores", staging.default_registry([tmp_path])),
    )


async def run_to_end(run: JobRun) -> RunOutcome:
    await run.start()
    return await asyncio.wait_for(run.wait(), 60)


def uri(path: Path) -> str:
    return path.absolute().as_uri()


@contextlib.contextmanager
def tiny_disk(where: Path, size: str = "1m") -> Iterator[Path]:
    """A ``size`` tmpfs mounted at ``where`` (root only); the test is skipped, saying why, otherwise."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        reason = f"cannot mount a {size} tmpfs here: {done.stderr.strip() or done.returncode}"
        print(reason)
        pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def declaring(failure: object, code: int = 4) -> job_pb2.JobSpec:
    """A job that writes ``failure`` to its failure file and exits with ``code``."""
    script = (
        "import json, os, sys\n"
        f"open(os.environ['COSMOS_FAILURE_FILE'], 'w').write(json.dumps({failure!r}))\n"
        f"sys.exit({code})"
    )
    return job_pb2.JobSpec(argv=[PY, "-c", script])


async def test_a_declared_permanent_failure_carries_its_code_and_message(tmp_path: Path) -> None:
    failure = {"class": "permanent", "code": "CORRUPT_SOURCE", "message": "source /x.mp4 is truncated"}
    run = new_run(tmp_path, declaring(failure))
    outcome = await run_to_end(run)
    assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.reason == "CORRUPT_SOURCE"
    assert outcome.result.failure_code == "CORRUPT_SOURCE"
    assert outcome.result.failure_class == FC.FAILURE_CLASS_PERMANENT
    assert outcome.result.error == "CORRUPT_SOURCE: source /x.mp4 is truncated (exited with code 4)"
    assert not run.work_dir.exists()  # scratch goes on failure too


@pytest.mark.parametrize(
    "failure",
    [
        {"class": "sometimes", "code": "X", "message": "unknown class"},
        {"class": "permanent", "code": "lower case", "message": "malformed code"},
        ["not", "an", "object"],
    ],
    ids=["unknown-class", "bad-code", "not-an-object"],
)
async def test_an_unusable_declaration_is_not_trusted(tmp_path: Path, failure: object) -> None:
    outcome = await run_to_end(new_run(tmp_path, declaring(failure)))
    assert outcome.reason == "EXIT_CODE" and outcome.result.failure_class == FC.FAILURE_CLASS_TRANSIENT


async def test_plain_failures_are_transient_and_refusals_permanent(tmp_path: Path) -> None:
    exited = await run_to_end(new_run(tmp_path, job_pb2.JobSpec(argv=["false"])))
    assert (exited.result.failure_code, exited.result.failure_class) == (
        "EXIT_CODE",
        FC.FAILURE_CLASS_TRANSIENT,
    )
    refused = await run_to_end(new_run(tmp_path, job_pb2.JobSpec(argv=["/no/such/program"])))
    assert refused.result.failure_class == FC.FAILURE_CLASS_PERMANENT
    fine = await run_to_end(new_run(tmp_path, job_pb2.JobSpec(argv=["true"])))
    assert (fine.result.failure_code, fine.result.failure_class) == ("", FC.FAILURE_CLASS_UNSPECIFIED)


async def test_a_job_reporting_a_full_disk_is_no_space(tmp_path: Path) -> None:
    script = "import sys\nprint('write /out/x.mp4: No space left on device', file=sys.stderr)\nsys.exit(1)"
    run = new_run(tmp_path, job_pb2.JobSpec(argv=[PY, "-c", script]), limits=NO_RESERVE)
    outcome = await run_to_end(run)
    assert outcome.reason == "NO_SPACE" and outcome.result.failure_class == FC.FAILURE_CLASS_PERMANENT
    assert outcome.result.error.startswith("NO_SPACE: disk full")
    assert "No space left on device" in outcome.result.error


async def test_disk_space_is_checked_before_staging(tmp_path: Path) -> None:
    src = tmp_path / "default" / "in.bin"
    src.parent.mkdir()
    src.write_bytes(b"x" * 1000)
    spec = job_pb2.JobSpec(argv=["true"], inputs=[job_pb2.Artifact(uri=uri(src), path="in.bin")])
    free = failures.free_bytes(tmp_path)
    # A reserve larger than the disk's free space: the job must not start (nor stage anything).
    limits = dataclasses.replace(FAST, min_free_bytes=free + (1 << 30))
    run = new_run(tmp_path, spec, limits=limits)
    assert not await run.start()
    outcome = await run.wait()
    assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.reason == "NO_SPACE"
    assert outcome.result.failure_class == FC.FAILURE_CLASS_PERMANENT
    assert outcome.result.error.startswith("NO_SPACE: disk full: ")
    assert str(tmp_path) in outcome.result.error and "reserve" in outcome.result.error
    assert run.pid is None and not run.work_dir.exists()


def test_copied_bytes_counts_only_what_is_not_hard_linked(tmp_path: Path) -> None:
    same = tmp_path / "same.bin"
    same.write_bytes(b"x" * 5000)
    assert failures.copied_bytes([same], tmp_path) == 0  # same file system: a hard link, free
    other = Path("/proc/self/status")  # another file system (size reported as 0, but counted)
    assert failures.copied_bytes([other, tmp_path / "missing"], tmp_path) == 0


async def test_enospc_in_a_real_ffmpeg_ends_the_job_as_no_space(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "agent") as work_root:
        # Raw video fills the 1 MiB work dir within the first frames.
        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        argv = [ffmpeg, "-hide_banner", "-f", "lavfi", "-i", "testsrc=duration=5:size=320x240:rate=25"]
        argv += ["-c:v", "rawvideo", "-f", "nut", "out.nut"]
        run = new_run(tmp_path, job_pb2.JobSpec(argv=argv), work_root=work_root, limits=NO_RESERVE)
        outcome = await run_to_end(run)
        assert outcome.state == job_pb2.JOB_STATE_FAILED, outcome
        assert outcome.reason == "NO_SPACE", outcome.result.error
        assert outcome.result.failure_class == FC.FAILURE_CLASS_PERMANENT
        assert outcome.result.error.startswith("NO_SPACE: disk full")
        assert not run.work_dir.exists()  # the partial output is gone: the disk is free again
        assert failures.free_bytes(work_root) > 900 * 1024


async def test_enospc_while_storing_an_output_names_the_path(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "small") as small:
        (small / "default").mkdir()
        dest = small / "default" / "big.bin"
        script = "open('big.bin', 'wb').write(b'x' * (3 << 20))"
        spec = job_pb2.JobSpec(
            argv=[PY, "-c", script], outputs=[job_pb2.Artifact(uri=uri(dest), path="big.bin")]
        )
        run = new_run(tmp_path, spec, limits=NO_RESERVE, stores=staging.default_registry([small]))
        outcome = await run_to_end(run)
        assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.reason == "NO_SPACE"
        assert outcome.result.failure_class == FC.FAILURE_CLASS_PERMANENT
        assert "disk full: cannot store output 'big.bin'" in outcome.result.error
        assert str(dest.as_uri()) in outcome.result.error
        assert not dest.exists() and list((small / "default").iterdir()) == []  # no partial copy left


def test_the_failure_file_is_read_safely(tmp_path: Path) -> None:
    target = tmp_path / "secret.json"
    target.write_text(json.dumps({"class": "permanent", "code": "LEAK", "message": "secret"}))
    link = tmp_path / failures.FAILURE_FILE
    link.symlink_to(target)
    assert failures.read_declared(link) is None  # a link the job made is never followed
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"class": "permanent", "code": "BIG", "message": "x" * 100_000}))
    assert failures.read_declared(big) is None
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"class": "Transient", "code": "NET_DOWN", "message": "m" * 5000}))
    declared = failures.read_declared(ok)
    assert declared is not None and declared.code == "NET_DOWN"
    assert declared.failure_class == FC.FAILURE_CLASS_TRANSIENT and len(declared.message) == 2000
