"""Stratum with real agents and real programs: placement, GPUs, progress, cancel, timeouts, failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import imageio_ffmpeg
import psutil
import pytest
from stratum_harness import JS, Agents, JobsClient, python_job, seconds, wait_agents

from cosmos.runtime import rpc_errors
from cosmos.stratum.v1 import job_pb2, job_service_pb2


def log_text(events: list[job_pb2.JobEvent]) -> list[str]:
    return [e.log.text for e in events if e.WhichOneof("event") == "log"]


async def test_gpu_jobs_land_on_matching_models_and_see_exactly_their_gpus(
    stratum: Any, jobs: JobsClient, agents: Agents
) -> None:
    agents.start(stratum.target, "gpu-a", "--gpus", "2xA100:80G")
    agents.start(stratum.target, "t4-b", "--gpus", "T4")
    await wait_agents(stratum.target, 2)
    show = "import os; print('CVD=' + os.environ['CUDA_VISIBLE_DEVICES'])"
    spec = python_job(show, gpus=1)
    spec.resources.gpu.models.extend(["A100", "H100"])
    picky = [await jobs.submit(spec) for _ in range(2)]
    anywhere = await jobs.submit(python_job(show, gpus=1))
    cpu_only = await jobs.submit(python_job(show))
    seen = set()
    for job in picky:
        done = await jobs.wait(job.job_id)
        assert done.state == JS.JOB_STATE_SUCCEEDED, done.failure_reason
        assert done.agent_id == "gpu-a"
        assert log_text(await jobs.events(job.job_id)) == [f"CVD={done.gpu_indices[0]}"]
        seen.add(done.gpu_indices[0])
    assert seen <= {0, 1}
    done = await jobs.wait(anywhere.job_id)
    assert log_text(await jobs.events(anywhere.job_id)) == [f"CVD={done.gpu_indices[0]}"]
    done = await jobs.wait(cpu_only.job_id)
    assert list(done.gpu_indices) == [] and log_text(await jobs.events(cpu_only.job_id)) == ["CVD="]


async def test_impossible_jobs_are_refused_and_big_jobs_wait_for_capacity(
    stratum: Any, jobs: JobsClient, agents: Agents
) -> None:
    agents.start(stratum.target, "gpu-a", "--gpus", "2xA100")
    await wait_agents(stratum.target, 1)
    cases = [
        (python_job("pass", gpus=3), "spec.resources", "ERROR_REASON_UNSATISFIABLE_RESOURCES"),
        (job_pb2.JobSpec(argv=[]), "spec.argv", "ERROR_REASON_INVALID_ARGUMENT"),
        (python_job("pass", cpu_millis=-5), "spec.resources.cpu_millis", "ERROR_REASON_INVALID_ARGUMENT"),
    ]
    unknown = python_job("pass", gpus=1)
    unknown.resources.gpu.models.append("Z900")
    cases.append((unknown, "spec.resources.gpu.models[0]", "ERROR_REASON_INVALID_ARGUMENT"))
    absent = python_job("pass", gpus=1)
    absent.resources.gpu.models.append("H100")  # a real model, but nobody here has one
    cases.append((absent, "spec.resources", "ERROR_REASON_UNSATISFIABLE_RESOURCES"))
    for spec, field, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.submit(spec)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info, violations = rpc_errors.details_of(caught.value)
        assert info is not None and info.reason == reason
        assert field in [v.field for v in violations]

    first = await jobs.submit(python_job("import time; time.sleep(1.5)", gpus=2))
    second = await jobs.submit(python_job("pass", gpus=2))
    await jobs.wait(first.job_id, [JS.JOB_STATE_RUNNING])
    assert (await jobs.get(second.job_id)).state == JS.JOB_STATE_QUEUED
    first_done = await jobs.wait(first.job_id)
    second_done = await jobs.wait(second.job_id)
    assert second_done.state == JS.JOB_STATE_SUCCEEDED
    assert second_done.start_time.ToNanoseconds() >= first_done.end_time.ToNanoseconds()
    again = await jobs.submit(python_job("pass", gpus=2), request_id=second.request_id)
    assert again.job_id == second.job_id  # idempotent on request_id


def ffmpeg_job(tmp_path: Path, seconds_of_media: int, name: str) -> job_pb2.JobSpec:
    out = tmp_path / "default" / f"{name}.mp4"
    spec = job_pb2.JobSpec(
        argv=[
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-y", "-re",
            "-f", "lavfi", "-i", f"testsrc=duration={seconds_of_media}:size=320x240:rate=25",
            "-c:v", "libx264", "-preset", "ultrafast", f"{name}.mp4",
        ],
        progress_format=job_pb2.PROGRESS_FORMAT_FFMPEG,
        media_duration=seconds(seconds_of_media),
    )  # fmt: skip
    spec.outputs.add(uri=f"file://{out}", path=f"{name}.mp4")
    spec.resources.cpu_millis = 500
    return spec


def processes_named(fragment: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(fragment in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


async def test_ffmpeg_progress_rises_and_cancel_kills_the_whole_process_group(
    stratum: Any, jobs: JobsClient, agents: Agents, tmp_path: Path
) -> None:
    agents.start(stratum.target, "cpu-a", "--storage-root", str(tmp_path))
    await wait_agents(stratum.target, 1)
    encode = await jobs.submit(ffmpeg_job(tmp_path, 3, "progress-run"))
    done = await jobs.wait(encode.job_id, timeout=60)
    assert done.state == JS.JOB_STATE_SUCCEEDED, done.failure_reason
    percents = [
        e.progress.percent for e in await jobs.events(encode.job_id) if e.WhichOneof("event") == "progress"
    ]
    assert len(percents) >= 3 and percents == sorted(percents) and percents[-1] >= 99
    assert (tmp_path / "default" / "progress-run.mp4").stat().st_size > 0

    victim = await jobs.submit(ffmpeg_job(tmp_path, 60, "cancel-run"))
    await jobs.wait(victim.job_id, [JS.JOB_STATE_RUNNING])
    await asyncio.sleep(0.5)
    assert processes_named("cancel-run.mp4"), "ffmpeg is running"
    await jobs.stub.CancelJob(
        job_service_pb2.CancelJobRequest(request_id="c1", job_id=victim.job_id, reason="stop")
    )
    cancelled = await jobs.wait(victim.job_id)
    assert cancelled.state == JS.JOB_STATE_CANCELLED
    await asyncio.sleep(0.2)
    assert processes_named("cancel-run.mp4") == []


async def test_timeouts_kill_the_job_with_a_clear_state(
    stratum: Any, jobs: JobsClient, agents: Agents
) -> None:
    agents.start(stratum.target, "cpu-a")
    await wait_agents(stratum.target, 1)
    spec = python_job("import time; time.sleep(60)  # timeout-victim")
    spec.timeout.CopyFrom(seconds(1))
    job = await jobs.submit(spec)
    done = await jobs.wait(job.job_id, timeout=30)
    assert done.state == JS.JOB_STATE_TIMED_OUT
    assert "timed out" in done.failure_reason
    await asyncio.sleep(0.2)
    assert processes_named("timeout-victim") == []
