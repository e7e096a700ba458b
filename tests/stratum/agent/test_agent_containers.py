"""The container runtime of the job runner, end to end against a stand-in ``docker`` CLI.

Real podman runs are in test_agent_podman.py; docker's command line is checked here against a small
fake CLI: it answers ``info``, records every call, and executes ``run`` as a local process with the
``-v <dir>:/work`` mount simulated by rewriting ``/work`` to the host directory. That exercises the
real command line, the by-name environment forwarding, the FIFO progress channel and the cleanup on
cancel.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest
from google.protobuf import duration_pb2

from cosmos.common.v1 import progress_pb2
from cosmos.stratum.agent import containers
from cosmos.stratum.agent.runner import JobRun, RunLimits
from cosmos.stratum.v1 import job_pb2

pytestmark = pytest.mark.unit

FAKE_DOCKER = """#!{python}
import json, os, sys
from pathlib import Path

calls = Path(__file__).with_name("docker-calls.jsonl")
args = sys.argv[1:]
record = {{"args": args}}
if args[:1] == ["run"]:
    i, names, mount = 1, [], None
    while args[i].startswith("-"):
        if args[i] in ("--rm", "--init") or "=" in args[i]:
            i += 1
            continue
        flag, value = args[i], args[i + 1]
        i += 2
        if flag == "-e":
            names.append(value)
        elif flag == "-v":
            mount = value.split(":")
    image, argv = args[i], args[i + 1 :]
    host, inside = mount
    seen = {{n: os.environ[n] for n in names if n in os.environ}}
    record.update(image=image, env=seen)
    with calls.open("a") as f:
        f.write(json.dumps(record) + "\\n")

    def mapped(value):
        return host + value[len(inside) :] if value.startswith(inside) else value

    env = {{k: mapped(v) for k, v in seen.items()}}
    env["PATH"] = os.environ["PATH"]
    os.chdir(host)
    os.execvpe(argv[0], [mapped(a) for a in argv], env)
with calls.open("a") as f:
    f.write(json.dumps(record) + "\\n")
"""

LAVFI_2S = ["-f", "lavfi", "-i", "testsrc=duration=2:size=160x120:rate=25"]
FAST = RunLimits(kill_grace_s=0.5, progress_interval_s=0.05, log_flush_s=0.02, usage_interval_s=0.1)


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the stand-in ``docker`` first on PATH; returns its call log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "docker"
    cli.write_text(FAKE_DOCKER.format(python=sys.executable))
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(containers, "_answers_cache", {})
    return bin_dir / "docker-calls.jsonl"


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def new_run(tmp_path: Path, spec: job_pb2.JobSpec, progress: list[progress_pb2.Progress]) -> JobRun:
    async def on_progress(p: progress_pb2.Progress) -> None:
        progress.append(p)

    return JobRun(
        spec,
        job_id="job-1",
        attempt=2,
        work_root=tmp_path / "agent",
        gpu_indices=[1, 3],
        on_progress=on_progress,
        limits=FAST,
    )


CHANNEL_JOB = """
import os, time
path = os.environ["COSMOS_PROGRESS_FILE"]
with open(path, "w") as channel:
    channel.write('{"percent": 30}\\n')
time.sleep(0.2)
with open(path, "w") as channel:  # opening it again is fine
    channel.write('{"percent": 90, "message": "almost"}\\n')
"""


@pytest.mark.integration  # out of process (a port, a process or a connection)
async def test_image_job_runs_under_docker_run_with_a_fifo_progress_channel(
    tmp_path: Path, fake_docker: Path
) -> None:
    progress: list[progress_pb2.Progress] = []
    spec = job_pb2.JobSpec(
        argv=[sys.executable, "-c", CHANNEL_JOB],
        image="example/encoder:1",
        runtime="docker",
        env={"API_TOKEN": "s3cr3t"},
        progress_format=job_pb2.PROGRESS_FORMAT_CHANNEL,
    )
    run = new_run(tmp_path, spec, progress)
    assert await run.start()
    outcome = await asyncio.wait_for(run.wait(), 20)

    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    assert [(p.percent, p.message) for p in progress] == [(30, ""), (90, "almost")]

    info, docker_run = calls(fake_docker)
    assert info["args"] == ["info"]
    args = docker_run["args"]
    assert args[:3] == ["run", "--rm", "--init"]
    assert args[args.index("--name") + 1] == "cosmos-job-1-2"
    assert args[args.index("-v") + 1] == f"{run.work_dir}:/work"
    assert args[args.index("-w") + 1] == "/work"
    assert args[args.index("--gpus") + 1] == '"device=1,3"'
    assert docker_run["image"] == "example/encoder:1"
    # Variables travel by name: a secret never shows up on the command line.
    assert not any("s3cr3t" in arg for arg in args)
    env = docker_run["env"]
    assert env["API_TOKEN"] == "s3cr3t"
    assert env["COSMOS_WORK_DIR"] == "/work" and env["COSMOS_JOB_ID"] == "job-1"
    assert env["COSMOS_PROGRESS_FILE"] == "/work/.cosmos/progress"
    # Inside a container --gpus does the isolation (devices renumbered from 0).
    assert "CUDA_VISIBLE_DEVICES" not in env and "COSMOS_PROGRESS_FD" not in env


@pytest.mark.integration  # out of process (a port, a process or a connection)
async def test_ffmpeg_progress_reaches_the_agent_from_a_container(tmp_path: Path, fake_docker: Path) -> None:
    progress: list[progress_pb2.Progress] = []
    spec = job_pb2.JobSpec(
        argv=[imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", *LAVFI_2S, "-f", "null", "-"],
        image="example/ffmpeg:7",
        runtime="docker",
        progress_format=job_pb2.PROGRESS_FORMAT_FFMPEG,
        media_duration=duration_pb2.Duration(seconds=2),
    )
    outcome = await asyncio.wait_for(_run(new_run(tmp_path, spec, progress)), 20)
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    assert progress[-1].percent == 100 and progress[-1].frames == 50
    args = calls(fake_docker)[-1]["args"]
    image_at = args.index("example/ffmpeg:7")
    assert args[image_at + 2 : image_at + 5] == ["-progress", "/work/.cosmos/progress", "-nostats"]


@pytest.mark.integration  # out of process (a port, a process or a connection)
async def test_cancel_removes_the_container(tmp_path: Path, fake_docker: Path) -> None:
    spec = job_pb2.JobSpec(argv=["sleep", "30"], image="example/encoder:1", runtime="docker")
    run = new_run(tmp_path, spec, [])
    assert await run.start()
    await run.cancel(grace_seconds=0.5)
    outcome = await run.wait()
    assert outcome.state == job_pb2.JOB_STATE_CANCELLED
    assert calls(fake_docker)[-1]["args"] == ["rm", "-f", "cosmos-job-1-2"]


async def _run(run: JobRun) -> Any:
    await run.start()
    return await run.wait()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (job_pb2.JobSpec(argv=["x"], image="img", runtime="process"), "runtime 'process' cannot run image"),
        (job_pb2.JobSpec(argv=["x"], runtime="docker"), "runtime 'docker' needs an image"),
        (job_pb2.JobSpec(argv=["x"], runtime="lxc"), "unknown runtime 'lxc'"),
    ],
)
async def test_runtime_resolution_refusals(spec: job_pb2.JobSpec, message: str) -> None:
    with pytest.raises(containers.UnsupportedRuntime, match=message):
        await containers.resolve(spec)


async def test_plain_jobs_need_no_engine() -> None:
    assert await containers.resolve(job_pb2.JobSpec(argv=["x"])) is None
    assert await containers.resolve(job_pb2.JobSpec(argv=["x"], runtime="process")) is None


def test_podman_gets_cdi_devices_and_names_are_sanitized() -> None:
    argv = containers.run_argv(
        containers.Engine("podman", "/usr/bin/podman"),
        name=containers.container_name("enc/1 chunk:3", 1),
        image="img",
        argv=["ffmpeg", "-version"],
        work_dir=Path("/tmp/w"),
        env_names=["A"],
        gpu_indices=[0, 2],
    )
    assert argv[argv.index("--name") + 1] == "cosmos-enc_1_chunk_3-1"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--device"] == [
        "nvidia.com/gpu=0",
        "nvidia.com/gpu=2",
    ]
    assert "--gpus" not in argv
    assert argv[-3:] == ["img", "ffmpeg", "-version"]


def test_the_podman_command_line_confines_the_job() -> None:
    argv = containers.run_argv(
        containers.Engine("podman", "/usr/bin/podman", oci_runtime="runc"),
        name="cosmos-j-1",
        image="localhost/cosmos-worker:0.1.0",
        argv=["python3", "-V"],
        work_dir=Path("/var/lib/cosmos/agent/j/1"),
        env_names=["SECRET"],
        gpu_indices=[],
        user=containers.ContainerUser(200001, 200001),
        limits=containers.ContainerLimits(cpus=1.5, memory_bytes=1 << 30, pids=512, open_files=1024),
    )
    assert argv[:3] == ["/usr/bin/podman", "--runtime=runc", "run"]
    for flag in (
        "--rm",
        "--pull=never",
        "--network=none",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--read-only=true",
        "--user=200001:200001",
        "--cpus=1.5",
        f"--memory={1 << 30}",
        "--pids-limit=512",
        "--ulimit=core=0:0",
    ):
        assert flag in argv, flag
    # The work dir is the only volume; variables go by name.
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-v"] == ["/var/lib/cosmos/agent/j/1:/work"]
    assert argv[argv.index("-e") + 1] == "SECRET"
    rootless = containers.run_argv(
        containers.Engine("podman", "/usr/bin/podman"),
        name="n",
        image="i",
        argv=["x"],
        work_dir=Path("/w"),
        env_names=[],
        gpu_indices=[],
        user=containers.ContainerUser(keep_id=True),
    )
    assert "--userns=keep-id" in rootless and not [a for a in rootless if a.startswith("--user=")]


def test_runc_is_preferred_and_can_be_overridden(tmp_path: Path) -> None:
    for name in ("crun", "runc"):
        exe = tmp_path / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    assert containers.oci_runtime({"PATH": str(tmp_path)}) == "runc"
    assert containers.oci_runtime({"PATH": str(tmp_path), "COSMOS_OCI_RUNTIME": "crun"}) == "crun"
    (tmp_path / "runc").unlink()
    assert containers.oci_runtime({"PATH": str(tmp_path)}) in ("crun", "runc")  # /usr/sbin may hold runc


async def test_a_gpu_job_needs_the_cdi_spec_under_podman(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = job_pb2.JobSpec(argv=["nvidia-smi"], image="img", runtime="podman")
    spec.resources.gpu.count = 1

    async def podman(names: object) -> containers.Engine:
        return containers.Engine("podman", "/usr/bin/podman", "runc")

    monkeypatch.setattr(containers, "find_engine", podman)
    monkeypatch.setattr(containers, "CDI_SPEC_DIRS", ())
    with pytest.raises(containers.UnsupportedRuntime, match="CDI spec"):
        await containers.resolve(spec)
