"""The agent's job runner on real processes: a real ffmpeg encode with progress, cancel and timeout
of whole process groups, GPU isolation, the progress channel, failures and refusals."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import psutil
import pytest
from google.protobuf import duration_pb2

from cosmos.common.v1 import progress_pb2
from cosmos.stratum.agent import containers, staging
from cosmos.stratum.agent.runner import JobRun, RunLimits, RunOutcome
from cosmos.stratum.v1 import job_pb2

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
PY = sys.executable
X264 = ["-c:v", "libx264", "-preset", "ultrafast"]
# Short graces and intervals keep the suite fast; the logic is the same as in production.
FAST = RunLimits(
    kill_grace_s=0.5,
    leftover_grace_s=0.3,
    progress_interval_s=0.05,
    log_flush_s=0.02,
    usage_interval_s=0.1,
    drain_s=1.0,
)


class Recorder:
    """Collects what the runner reports."""

    def __init__(self) -> None:
        self.progress: list[progress_pb2.Progress] = []
        self.logs: list[job_pb2.LogLine] = []
        self.got_progress = asyncio.Event()
        self.got_logs = asyncio.Event()

    async def on_progress(self, progress: progress_pb2.Progress) -> None:
        self.progress.append(progress)
        self.got_progress.set()

    async def on_logs(self, batch: list[job_pb2.LogLine]) -> None:
        self.logs.extend(batch)
        self.got_logs.set()

    def lines(self, stream: job_pb2.LogStream.ValueType = job_pb2.LOG_STREAM_STDOUT) -> list[str]:
        return [line.text for line in self.logs if line.stream == stream]

    async def line_starting(self, prefix: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for text in self.lines():
                if text.startswith(prefix):
                    return text
            await asyncio.sleep(0.02)
        raise AssertionError(f"no stdout line starting with {prefix!r}: {self.logs}")


def new_run(
    tmp_path: Path, rec: Recorder, spec: job_pb2.JobSpec, gpus: Sequence[int] = (), **kwargs: Any
) -> JobRun:
    return JobRun(
        spec,
        job_id="job-1",
        attempt=2,
        work_root=tmp_path / "agent",
        gpu_indices=gpus,
        on_progress=rec.on_progress,
        on_logs=rec.on_logs,
        limits=kwargs.pop("limits", FAST),
        # tmp_path is the storage root: the jobs (tenant default) use files in tmp_path/default.
        stores=kwargs.pop("stores", staging.default_registry([tmp_path])),
        **kwargs,
    )


async def run_to_end(run: JobRun) -> RunOutcome:
    await run.start()
    return await asyncio.wait_for(run.wait(), 30)


def live_group(pgid: int) -> list[int]:
    """Pids still running (not zombies) in process group ``pgid``, seen through psutil."""
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def is_dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def lavfi_testsrc(duration: int) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc=duration={duration}:size=320x240:rate=25"]


def uri(path: Path) -> str:
    return path.absolute().as_uri()


# ------------------------------------------------------------------------------------------ ffmpeg


async def test_real_ffmpeg_encode_reports_rising_progress_and_stores_its_output(tmp_path: Path) -> None:
    rec = Recorder()
    store = tmp_path / "default" / "store" / "renditions" / "out.mp4"
    spec = job_pb2.JobSpec(
        # -readrate 2: 6 s of media in about 3 s, so there is progress to watch.
        argv=[FFMPEG, "-hide_banner", "-y", "-readrate", "2", *lavfi_testsrc(6), *X264, "out.mp4"],
        outputs=[job_pb2.Artifact(uri=uri(store), path="out.mp4")],
        progress_format=job_pb2.PROGRESS_FORMAT_FFMPEG,
        media_duration=seconds(6),
    )
    run = new_run(tmp_path, rec, spec)
    outcome = await run_to_end(run)

    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    assert outcome.reason == "" and outcome.result.error == ""
    percents = [p.percent for p in rec.progress]
    assert percents == sorted(percents), percents
    assert len([p for p in percents if 0 < p < 100]) >= 3, percents
    assert percents[-1] == 100
    assert any(p.fps > 0 and p.speed > 0 and p.frames > 0 and p.HasField("eta") for p in rec.progress)
    # The output is a real MP4 at its URI, reported with that URI.
    assert store.read_bytes()[4:8] == b"ftyp"
    assert [(a.uri, a.path) for a in outcome.result.outputs] == [(uri(store), "out.mp4")]
    usage = outcome.result.usage
    assert usage.cpu_seconds > 0.05 and usage.max_rss_bytes > 10 << 20
    assert usage.wall_time.ToTimedelta().total_seconds() > 2
    # -nostats keeps ffmpeg's status line out of the logs; the work dir is gone afterwards.
    assert not any(
        line.startswith("frame=") and "\r" in line for line in rec.lines(job_pb2.LOG_STREAM_STDERR)
    )
    assert not run.work_dir.exists()


async def test_cancel_stops_a_running_ffmpeg_and_its_whole_group(tmp_path: Path) -> None:
    rec = Recorder()
    spec = job_pb2.JobSpec(
        argv=[FFMPEG, "-hide_banner", "-re", *lavfi_testsrc(60), *X264, "-f", "null", "-"],
        progress_format=job_pb2.PROGRESS_FORMAT_FFMPEG,
        media_duration=seconds(60),
    )
    run = new_run(tmp_path, rec, spec)
    assert await run.start()
    assert run.state == job_pb2.JOB_STATE_RUNNING and run.pid is not None
    await asyncio.wait_for(rec.got_progress.wait(), 10)

    began = time.monotonic()
    await run.cancel(grace_seconds=5)
    outcome = await run.wait()

    assert outcome.state == job_pb2.JOB_STATE_CANCELLED and outcome.reason == "CANCELLED"
    assert outcome.result.error == "cancelled"  # ffmpeg honoured SIGTERM: no SIGKILL needed
    assert time.monotonic() - began < 4
    assert live_group(run.pid) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)


@pytest.mark.parametrize(
    "script",
    [
        # The main process dies on SIGTERM, its child ignores it.
        '(trap "" TERM; exec sleep 30) & echo child=$!; wait',
        # Both ignore SIGTERM.
        'trap "" TERM; sleep 30 & echo child=$!; wait',
    ],
    ids=["child-ignores", "all-ignore"],
)
async def test_cancel_sigkills_what_ignores_sigterm_after_the_grace(tmp_path: Path, script: str) -> None:
    rec = Recorder()
    run = new_run(tmp_path, rec, job_pb2.JobSpec(argv=["sh", "-c", script]))
    assert await run.start()
    child = int((await rec.line_starting("child=")).removeprefix("child="))

    began = time.monotonic()
    await run.cancel(grace_seconds=0.5)
    outcome = await run.wait()

    assert time.monotonic() - began >= 0.5
    assert outcome.state == job_pb2.JOB_STATE_CANCELLED
    assert "killed with SIGKILL" in outcome.result.error
    assert is_dead(child)
    assert run.pid is not None and live_group(run.pid) == []


async def test_timeout_kills_the_group_and_ends_timed_out(tmp_path: Path) -> None:
    rec = Recorder()
    spec = job_pb2.JobSpec(argv=["sh", "-c", "sleep 30 & echo child=$!; sleep 30"], timeout=seconds(0.5))
    run = new_run(tmp_path, rec, spec)
    began = time.monotonic()
    outcome = await run_to_end(run)

    assert outcome.state == job_pb2.JOB_STATE_TIMED_OUT and outcome.reason == "TIMED_OUT"
    assert outcome.result.error == "timed out after 0.5s"
    assert outcome.result.signal == 15  # sh died of the SIGTERM
    assert 0.5 <= time.monotonic() - began < 3
    assert is_dead(int((await rec.line_starting("child=")).removeprefix("child=")))
    assert run.pid is not None and live_group(run.pid) == []


async def test_processes_left_behind_are_stopped_when_the_job_exits(tmp_path: Path) -> None:
    rec = Recorder()
    run = new_run(tmp_path, rec, job_pb2.JobSpec(argv=["sh", "-c", "sleep 30 & echo child=$!"]))
    outcome = await run_to_end(run)
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED
    assert is_dead(int((await rec.line_starting("child=")).removeprefix("child=")))


async def test_cancel_before_start_and_during_staging(tmp_path: Path) -> None:
    run = new_run(tmp_path, Recorder(), job_pb2.JobSpec(argv=["true"]))
    await run.cancel()
    assert not await run.start()
    assert (await run.wait()).state == job_pb2.JOB_STATE_CANCELLED and run.pid is None

    class SlowStore(staging.Store):
        async def fetch(self, uri: str, dest: Path) -> None:
            await asyncio.sleep(30)

        async def store(self, src: Path, uri: str, owner: staging.Owner | None = None) -> str:
            return uri

    stores = staging.default_registry([tmp_path])
    stores.register("slow", SlowStore())
    spec = job_pb2.JobSpec(argv=["true"], inputs=[job_pb2.Artifact(uri="slow://x", path="x")])
    run = new_run(tmp_path, Recorder(), spec, stores=stores)
    starting = asyncio.create_task(run.start())
    await asyncio.sleep(0.1)
    await asyncio.wait_for(run.cancel(), 5)
    assert not await starting
    outcome = await run.wait()
    assert outcome.state == job_pb2.JOB_STATE_CANCELLED and outcome.result.error == "cancelled before start"


# ---------------------------------------------------------------------------------- environment

ENV_DUMP = "import json, os; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd()}))"


async def job_env(tmp_path: Path, gpus: Sequence[int], env: dict[str, str] | None = None) -> dict[str, Any]:
    rec = Recorder()
    run = new_run(tmp_path, rec, job_pb2.JobSpec(argv=[PY, "-c", ENV_DUMP], env=env or {}), gpus=gpus)
    outcome = await run_to_end(run)
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    dump: dict[str, Any] = json.loads(rec.lines()[0])
    assert dump["cwd"] == str(run.work_dir)
    return dump


async def test_gpu_isolation_and_job_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SECRET_TOKEN", "must-not-leak")
    spoof = {"MY_SETTING": "42", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "COSMOS_JOB_ID": "someone-else"}
    dump = await job_env(tmp_path, [1, 3], spoof)
    env = dump["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"  # the agent's assignment wins over the spec
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["MY_SETTING"] == "42"
    assert env["COSMOS_JOB_ID"] == "job-1" and env["COSMOS_ATTEMPT"] == "2"
    assert env["COSMOS_WORK_DIR"] == dump["cwd"] == str(tmp_path / "agent" / "job-1" / "2")
    # The agent's own tools come first, then the agent's PATH.
    tools = os.path.dirname(sys.executable)
    assert env["PATH"].split(os.pathsep)[0] == tools
    assert [p for p in env["PATH"].split(os.pathsep)[1:]] == [
        p for p in os.environ["PATH"].split(os.pathsep) if p != tools
    ]
    assert "AGENT_SECRET_TOKEN" not in env
    assert "COSMOS_PROGRESS_FD" not in env  # no progress channel unless asked for

    assert (await job_env(tmp_path, []))["env"]["CUDA_VISIBLE_DEVICES"] == ""


# ------------------------------------------------------------------------------ progress channel

CHANNEL_JOB = """
import os, time
with os.fdopen(int(os.environ["COSMOS_PROGRESS_FD"]), "w", buffering=1) as channel:
    channel.write('{"percent": 10, "message": "pass 1"}\\n')
    time.sleep(0.25)
    channel.write('this is not json\\n')
    channel.write('{"percent": 60, "fps": 30, "eta_seconds": 2}\\n')
    time.sleep(0.25)
    channel.write('{"percent": 100, "message": "done"}\\n')
print("bye")
"""


async def test_progress_channel_json_lines(tmp_path: Path) -> None:
    rec = Recorder()
    spec = job_pb2.JobSpec(argv=[PY, "-c", CHANNEL_JOB], progress_format=job_pb2.PROGRESS_FORMAT_CHANNEL)
    outcome = await run_to_end(new_run(tmp_path, rec, spec))

    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    assert [p.percent for p in rec.progress] == [10, 60, 100]
    last = rec.progress[-1]
    assert last.message == "done" and last.fps == 30  # fields not named again keep their value
    assert rec.progress[1].eta.seconds == 2
    assert outcome.malformed_progress_lines == 1
    assert rec.lines() == ["bye"]


async def test_progress_channel_from_a_shell_script(tmp_path: Path) -> None:
    rec = Recorder()
    script = (
        """printf '{"percent": 25}\\n' > "/dev/fd/$COSMOS_PROGRESS_FD"; sleep 0.1; """
        """echo '{"percent": 75, "message": "muxing"}' > "$COSMOS_PROGRESS_FILE" """
    )
    spec = job_pb2.JobSpec(argv=["sh", "-c", script], progress_format=job_pb2.PROGRESS_FORMAT_CHANNEL)
    outcome = await run_to_end(new_run(tmp_path, rec, spec))
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    assert [(p.percent, p.message) for p in rec.progress] == [(25, ""), (75, "muxing")]


# ------------------------------------------------------------------------------------------ secrets

SECRET_JOB = """
import os, sys
token, pem = os.environ["TOKEN"], os.environ["PEM"]
with os.fdopen(int(os.environ["COSMOS_PROGRESS_FD"]), "w", buffering=1) as channel:
    channel.write('{"percent": 50, "message": "using %s"}\\n' % token)
print("token is " + token + " and again " + token)
print(pem)
print("plain " + os.environ["PLAIN"])
print("err " + token, file=sys.stderr)
sys.exit(4)
"""


async def test_secrets_reach_the_env_and_are_masked_in_all_it_reports(tmp_path: Path) -> None:
    rec = Recorder()
    token, pem = "tok-5f1e9c", "-----BEGIN KEY-----\nline-two-7c3a\n-----END KEY-----"
    spec = job_pb2.JobSpec(
        argv=[PY, "-c", SECRET_JOB], progress_format=job_pb2.PROGRESS_FORMAT_CHANNEL, env={"PLAIN": "p"}
    )
    spec.secrets.update(TOKEN=token, PEM=pem)
    outcome = await run_to_end(new_run(tmp_path, rec, spec))

    assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.result.exit_code == 4
    # The job had the values (it printed them); every line of the multi-line one is masked.
    assert rec.lines() == ["token is *** and again ***", "***", "***", "***", "plain p"]
    assert rec.lines(job_pb2.LOG_STREAM_STDERR) == ["err ***"]
    assert [p.message for p in rec.progress] == ["using ***"]
    assert outcome.result.stderr_tail == "err ***" and outcome.result.error.endswith("err ***")
    reported = b"".join(m.SerializeToString() for m in [*rec.logs, *rec.progress, outcome.result])
    assert token.encode() not in reported and b"line-two-7c3a" not in reported


# ----------------------------------------------------------------------------- failures and logs


async def test_failing_command_reports_exit_code_and_stderr_tail(tmp_path: Path) -> None:
    rec = Recorder()
    job = "import sys\nfor i in range(80): print(f'err {i}', file=sys.stderr)\nsys.exit(3)"
    outcome = await run_to_end(new_run(tmp_path, rec, job_pb2.JobSpec(argv=[PY, "-c", job])))

    assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.reason == "EXIT_CODE"
    assert outcome.result.exit_code == 3 and outcome.result.signal == 0
    assert outcome.result.error.startswith("exited with code 3\n")
    assert outcome.result.error.endswith("err 79")
    tail = outcome.result.stderr_tail.splitlines()
    assert tail == [f"err {i}" for i in range(30, 80)]  # the last 50 lines
    assert len(rec.lines(job_pb2.LOG_STREAM_STDERR)) == 80  # all of them still went to the logs


async def test_killed_by_signal_is_a_failure_naming_the_signal(tmp_path: Path) -> None:
    outcome = await run_to_end(
        new_run(tmp_path, Recorder(), job_pb2.JobSpec(argv=["sh", "-c", "kill -SEGV $$"]))
    )
    assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.reason == "SIGNAL"
    assert outcome.result.signal == 11 and outcome.result.exit_code == 139
    assert outcome.result.error.startswith("killed by signal SIGSEGV (11)")


async def test_logs_are_bounded_and_long_lines_truncated(tmp_path: Path) -> None:
    rec = Recorder()
    job = "print('x' * 10000)\nfor i in range(1000): print(f'line {i}')"
    outcome = await run_to_end(new_run(tmp_path, rec, job_pb2.JobSpec(argv=[PY, "-c", job])))

    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED
    stdout = rec.lines()
    assert stdout[0].startswith("x" * 4096) and stdout[0].endswith("[truncated]")
    # 200 lines per second pass; the burst takes well under a second (two windows on a slow host).
    assert len(stdout) in (200, 400), len(stdout)
    assert outcome.dropped_log_lines == 1001 - len(stdout)
    assert "log lines dropped" in rec.lines(job_pb2.LOG_STREAM_STDERR)[-1]


# --------------------------------------------------------------------------- staging and refusals


async def test_inputs_are_staged_and_outputs_stored(tmp_path: Path) -> None:
    src = tmp_path / "default" / "data.txt"
    src.parent.mkdir()
    src.write_text("hello stratum\n")
    dest = tmp_path / "default" / "results" / "upper.txt"
    spec = job_pb2.JobSpec(
        argv=["sh", "-c", "mkdir out && tr a-z A-Z < in/data.txt > out/upper.txt"],
        inputs=[job_pb2.Artifact(uri=uri(src), path="in/data.txt")],
        outputs=[job_pb2.Artifact(uri=uri(dest), path="out/upper.txt")],
    )
    outcome = await run_to_end(new_run(tmp_path, Recorder(), spec))
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    assert dest.read_text() == "HELLO STRATUM\n"


async def test_output_not_produced_fails_the_job(tmp_path: Path) -> None:
    spec = job_pb2.JobSpec(
        argv=["true"], outputs=[job_pb2.Artifact(uri=uri(tmp_path / "default" / "o.mp4"), path="o.mp4")]
    )
    outcome = await run_to_end(new_run(tmp_path, Recorder(), spec))
    assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.reason == "OUTPUT_FAILED"
    assert outcome.result.exit_code == 0
    assert "'o.mp4' was not produced" in outcome.result.error


@pytest.mark.parametrize(
    ("spec", "reason", "message"),
    [
        (
            job_pb2.JobSpec(
                argv=["true"], inputs=[job_pb2.Artifact(uri="file:///no/such/input.mp4", path="in.mp4")]
            ),
            "OUTSIDE_STORAGE_ROOT",
            "'file:///no/such/input.mp4' is outside tenant 'default''s area",
        ),
        (
            job_pb2.JobSpec(
                argv=["true"], outputs=[job_pb2.Artifact(uri="gs://bucket/out.mp4", path="out.mp4")]
            ),
            "UNSUPPORTED_SCHEME",
            "unsupported URI scheme 'gs'",
        ),
        (
            job_pb2.JobSpec(argv=["true"], inputs=[job_pb2.Artifact(uri="file:///etc/hosts", path="../x")]),
            "INVALID_SPEC",
            "'../x' must be relative",
        ),
        (job_pb2.JobSpec(), "INVALID_SPEC", "argv is empty"),
        (job_pb2.JobSpec(argv=["/no/such/program"]), "SPAWN_FAILED", "cannot start '/no/such/program'"),
        (job_pb2.JobSpec(argv=["true"], runtime="firecracker"), "UNSUPPORTED_RUNTIME", "unknown runtime"),
    ],
    ids=["outside-root", "unknown-scheme", "bad-path", "empty-argv", "no-program", "unknown-runtime"],
)
async def test_refused_before_start(tmp_path: Path, spec: job_pb2.JobSpec, reason: str, message: str) -> None:
    run = new_run(tmp_path, Recorder(), spec)
    assert not await run.start()
    outcome = await run.wait()
    assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.reason == reason
    assert outcome.result.error.startswith(f"{reason}: ") and message in outcome.result.error
    assert run.state == job_pb2.JOB_STATE_FAILED
    if reason != "SPAWN_FAILED":
        assert run.pid is None
    assert not run.work_dir.exists()


async def test_staging_rechecks_storage_roots_for_the_jobs_tenant(tmp_path: Path) -> None:
    # Stratum checked these URIs at submit; what the agent finds at staging is what counts: a link
    # made since then must not lead out of the area, a device is never read, another tenant's area
    # is not this job's, and without any root no file URI is used at all.
    area = tmp_path / "default"
    area.mkdir()
    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not yours\n")
    (area / "innocent.txt").symlink_to(secret)
    (area / "zero").symlink_to("/dev/zero")
    os.mkfifo(area / "pipe")
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "theirs.txt").write_text("acme's\n")
    marker = area / "ran"
    job = ["sh", "-c", f"touch {marker}"]
    cases = [
        (
            job_pb2.JobSpec(argv=job, inputs=[job_pb2.Artifact(uri=uri(area / "innocent.txt"), path="i")]),
            "link",
        ),
        (job_pb2.JobSpec(argv=job, inputs=[job_pb2.Artifact(uri=uri(area / "zero"), path="i")]), "link"),
        (job_pb2.JobSpec(argv=job, inputs=[job_pb2.Artifact(uri=uri(area / "pipe"), path="i")]), "FIFO"),
        (
            job_pb2.JobSpec(
                argv=job, inputs=[job_pb2.Artifact(uri=uri(tmp_path / "acme" / "theirs.txt"), path="i")]
            ),
            "outside tenant 'default'",
        ),
    ]
    for spec, message in cases:
        run = new_run(tmp_path, Recorder(), spec)
        assert not await run.start()
        outcome = await run.wait()
        assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.reason == "OUTSIDE_STORAGE_ROOT", outcome
        assert "spec.inputs[0].uri" in outcome.result.error and message in outcome.result.error
        assert run.pid is None and not marker.exists()
    # An input directory holding a link out of the area is refused as a whole.
    tree = area / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_text("fine\n")
    (tree / "peek").symlink_to(secret)
    spec = job_pb2.JobSpec(argv=job, inputs=[job_pb2.Artifact(uri=uri(tree), path="t")])
    outcome = await run_to_end(new_run(tmp_path, Recorder(), spec))
    assert outcome.reason == "OUTSIDE_STORAGE_ROOT" and not marker.exists()
    # An output link made to point outside is not written through.
    (area / "out-link").symlink_to(tmp_path / "elsewhere")
    spec = job_pb2.JobSpec(
        argv=["sh", "-c", "echo x > o.txt"],
        outputs=[job_pb2.Artifact(uri=uri(area / "out-link" / "o.txt"), path="o.txt")],
    )
    outcome = await run_to_end(new_run(tmp_path, Recorder(), spec))
    assert outcome.reason == "OUTSIDE_STORAGE_ROOT" and "spec.outputs[0].uri" in outcome.result.error
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret.txt"]
    # A missing input inside the area is an input failure, as before.
    spec = job_pb2.JobSpec(argv=job, inputs=[job_pb2.Artifact(uri=uri(area / "nope.mp4"), path="i")])
    outcome = await run_to_end(new_run(tmp_path, Recorder(), spec))
    assert outcome.reason == "INPUT_FAILED" and "does not exist" in outcome.result.error
    # No root configured: no file URI at all.
    (area / "fine.txt").write_text("fine\n")
    spec = job_pb2.JobSpec(argv=job, inputs=[job_pb2.Artifact(uri=uri(area / "fine.txt"), path="i")])
    outcome = await run_to_end(new_run(tmp_path, Recorder(), spec, stores=staging.default_registry()))
    assert (
        outcome.reason == "OUTSIDE_STORAGE_ROOT" and "no storage root is configured" in outcome.result.error
    )
    assert not marker.exists()


async def test_a_directory_output_never_replaces_a_directory_it_did_not_write(tmp_path: Path) -> None:
    dest = tmp_path / "default" / "results"
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_text("someone else's\n")
    spec = job_pb2.JobSpec(
        argv=["sh", "-c", "mkdir out && echo new > out/new.txt"],
        outputs=[job_pb2.Artifact(uri=uri(dest), path="out")],
    )
    outcome = await run_to_end(new_run(tmp_path, Recorder(), spec))
    assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.reason == "OUTPUT_EXISTS", outcome
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    assert (dest / "keep.txt").read_text() == "someone else's\n"
    assert [p.name for p in dest.parent.iterdir()] == ["results"]  # no temporary copy left behind
    # An empty directory there is taken over.
    (dest / "keep.txt").unlink()
    outcome = await run_to_end(new_run(tmp_path, Recorder(), spec))
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    assert (dest / "new.txt").read_text() == "new\n"


async def test_image_job_without_a_container_engine_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_engine(cli: str, timeout: float = 5.0) -> bool:
        return False  # whatever this host has: a client without an engine answering

    monkeypatch.setattr(containers, "engine_answers", no_engine)
    run = new_run(
        tmp_path, Recorder(), job_pb2.JobSpec(argv=["ffmpeg", "-version"], image="jrottenberg/ffmpeg")
    )
    assert not await run.start()
    outcome = await run.wait()
    assert outcome.state == job_pb2.JOB_STATE_FAILED and outcome.reason == "UNSUPPORTED_RUNTIME"
    assert outcome.result.error == (
        "UNSUPPORTED_RUNTIME: image jobs need podman or docker; none is available on this agent"
    )
