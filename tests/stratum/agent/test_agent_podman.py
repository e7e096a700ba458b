"""Container jobs under real podman + runc, in the locally built worker image (``make image``).

Each job runs through the agent's :class:`JobRun`, as on an agent: it runs as its tenant's
unprivileged uid, reaches no network (not even a socket listening on the host), sees its work dir as
the only host directory, cannot write its root filesystem, gets only its own environment, and is
killed and removed on cancel and timeout. Skipped, with the reason, where podman cannot run
containers (``make install`` installs it as root on Debian).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import podman_harness
import psutil
import pytest
from google.protobuf import duration_pb2

from cosmos.common.v1 import progress_pb2
from cosmos.stratum.agent import containers, orphans, sandbox
from cosmos.stratum.agent.runner import JobRun, RunLimits, RunOutcome
from cosmos.stratum.v1 import job_pb2

FAST = RunLimits(kill_grace_s=2.0, progress_interval_s=0.05, log_flush_s=0.02, usage_interval_s=0.1)
PODMAN_OWN = ("/var/lib/containers/", "/run/containers/", "/var/run/containers/", "/usr/libexec/podman/")
"""Where the files podman itself mounts into a container come from (/etc/hosts, its init)."""
VIRTUAL_FS = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay", "devtmpfs", "shm"}


pytestmark = pytest.mark.skipif(bool(why := podman_harness.podman_unusable()), reason=why)
container_exists = podman_harness.container_exists


@pytest.fixture(scope="module")
def worker_image() -> str:
    return podman_harness.worker_image()


class Job:
    """A container job run the way an agent runs it, with its logs and progress collected."""

    def __init__(self, tmp_path: Path, spec: job_pb2.JobSpec, job_id: str = "") -> None:
        # Container names are machine-wide and podman removes a --rm container after the job ends:
        # a fixed id clashed with the container of the test before ("name already in use").
        self.job_id = job_id or f"job-{uuid.uuid4().hex[:12]}"
        self.logs: list[str] = []
        self.progress: list[progress_pb2.Progress] = []
        self.work_root = tmp_path / "agent"
        self.jail = sandbox.Sandbox(self.work_root)
        spec.tenant = spec.tenant or "acme"

        async def on_logs(batch: list[job_pb2.LogLine]) -> None:
            self.logs.extend(line.text for line in batch)

        async def on_progress(p: progress_pb2.Progress) -> None:
            self.progress.append(p)

        self.run = JobRun(
            spec,
            job_id=self.job_id,
            attempt=1,
            work_root=self.work_root,
            on_logs=on_logs,
            on_progress=on_progress,
            limits=FAST,
            jail=self.jail,
            keep_work_dir=True,
        )

    async def outcome(self, timeout: float = 60) -> RunOutcome:
        assert await self.run.start(), await self.run.wait()
        return await asyncio.wait_for(self.run.wait(), timeout)

    def json_line(self) -> dict[str, object]:
        """The job's report: the one stdout line that is a JSON object."""
        lines = [line for line in self.logs if line.startswith("{")]
        assert lines, self.logs
        value: dict[str, object] = json.loads(lines[-1])
        return value


def host_addresses() -> list[str]:
    """Loopback and every IPv4 address of the host's interfaces."""
    found = {"127.0.0.1"}
    for addrs in psutil.net_if_addrs().values():
        found.update(a.address for a in addrs if a.family == socket.AF_INET)
    return sorted(found)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on every host address: what a job with a network could reach."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen()
    server.setblocking(False)
    yield server
    server.close()


NETWORK_JOB = """
import json, os, socket, subprocess
report = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "tries": {}}
for addr in ADDRS:
    try:
        socket.create_connection((addr, PORT), timeout=3).close()
        report["tries"][addr] = "connected"
    except OSError as exc:
        report["tries"][addr] = type(exc).__name__ + ": " + str(exc)
report["interfaces"] = sorted(os.listdir("/sys/class/net"))
version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
report["ffmpeg"] = version.split("\\n")[0]
print(json.dumps(report))
"""


async def test_a_job_in_the_worker_image_runs_non_root_and_reaches_no_network(
    tmp_path: Path, worker_image: str, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    addrs = host_addresses()
    script = NETWORK_JOB.replace("ADDRS", repr(addrs)).replace("PORT", str(port))
    job = Job(tmp_path, job_pb2.JobSpec(argv=["python3", "-c", script], image=worker_image))
    outcome = await job.outcome()
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    report = job.json_line()
    print(report)
    uid = report["uid"]
    assert isinstance(uid, int) and uid != 0
    if os.geteuid() == 0:
        # The tenant's sandbox uid, as for a process job; no supplementary groups.
        assert uid == job.jail.identity("acme").uid  # type: ignore[union-attr]
        assert report["groups"] in ([], [report["gid"]])
    tries = report["tries"]
    assert isinstance(tries, dict) and set(tries) == set(addrs)
    assert not [addr for addr, result in tries.items() if result == "connected"], tries
    assert report["interfaces"] == ["lo"]  # --network=none: loopback only
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever arrived
    assert str(report["ffmpeg"]).startswith("ffmpeg version")  # the image's own ffmpeg


MOUNTS_JOB = """
import hashlib, json, os
report = {"mounts": []}
for line in open("/proc/self/mountinfo"):
    left, right = line.split(" - ", 1)
    fields, (fstype, source) = left.split(), right.split()[:2]
    report["mounts"].append([fields[4], fields[3], fstype])
try:
    report["key"] = open(KEY).read()
except OSError as exc:
    report["key"] = type(exc).__name__
try:
    open("/etc/cosmos-was-here", "w")
    report["rootfs"] = "writable"
except OSError as exc:
    report["rootfs"] = type(exc).__name__ + ": " + exc.strerror
with open("/work/out.txt", "w") as f:
    f.write("made in the container")
report["env"] = sorted(os.environ)
# The secret's digest: the secret itself would be masked in the logs this report travels in.
report["secret"] = hashlib.sha256(os.environ.get("API_TOKEN", "").encode()).hexdigest()
print(json.dumps(report))
print("the token is " + os.environ.get("API_TOKEN", ""))
"""


async def test_the_work_dir_is_the_only_host_directory_a_job_sees(
    tmp_path: Path, worker_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "pki" / "agent.key"
    key.parent.mkdir()
    key.write_text("agent private key")
    monkeypatch.setenv("COSMOS_AGENT_ONLY", "agent setting")  # the agent's environment stays its own
    script = MOUNTS_JOB.replace("KEY", repr(str(key)))
    spec = job_pb2.JobSpec(
        argv=["python3", "-c", script],
        image=worker_image,
        env={"MODE": "test"},
        secrets={"API_TOKEN": "s3cr3t"},
    )
    job = Job(tmp_path, spec)
    outcome = await job.outcome()
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    report = job.json_line()

    assert report["key"] == "FileNotFoundError"
    assert str(report["rootfs"]).startswith("OSError: Read-only file system"), report["rootfs"]
    mounts = report["mounts"]
    assert isinstance(mounts, list)
    from_host = {
        point: root
        for point, root, fstype in mounts
        if fstype not in VIRTUAL_FS and not root.startswith(PODMAN_OWN)
    }
    # --init: podman binds its init program (catatonit, one host file) read-only; nothing else.
    assert "catatonit" in from_host.pop("/run/podman-init", "catatonit")
    assert set(from_host) == {"/work"}, mounts
    assert from_host["/work"].endswith(str(job.run.work_dir.relative_to(job.run.work_dir.anchor)))
    made = job.run.work_dir / "out.txt"
    assert made.read_text() == "made in the container"
    assert made.stat().st_uid != 0

    env = report["env"]
    assert isinstance(env, list)
    assert "COSMOS_AGENT_ONLY" not in env and "MODE" in env and "COSMOS_JOB_ID" in env
    assert report["secret"] == hashlib.sha256(b"s3cr3t").hexdigest()  # secrets reach the job...
    said = [line for line in job.logs if line.startswith("the token is")]
    assert said and not [line for line in said if "s3cr3t" in line]  # ...and never its logs


async def test_cancel_kills_and_removes_the_container(tmp_path: Path, worker_image: str) -> None:
    marker = f"cosmos-cancel-{os.getpid()}-{time.monotonic_ns()}"
    script = f"import time; print('ready', flush=True); time.sleep(300)  # {marker}"
    job = Job(tmp_path, job_pb2.JobSpec(argv=["python3", "-c", script], image=worker_image))
    assert await job.run.start()
    deadline = time.monotonic() + 30
    while "ready" not in job.logs:
        assert time.monotonic() < deadline, job.logs
        await asyncio.sleep(0.05)
    name = containers.container_name(job.job_id, 1)
    assert container_exists(name)
    started = time.monotonic()
    await job.run.cancel(grace_seconds=2)
    outcome = await job.run.wait()
    assert outcome.state == job_pb2.JOB_STATE_CANCELLED, outcome
    assert time.monotonic() - started < 20
    assert not container_exists(name)
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


async def test_a_timed_out_container_job_is_killed_and_removed(tmp_path: Path, worker_image: str) -> None:
    # SIGTERM ignored: the timeout must end it with SIGKILL after the grace.
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    spec = job_pb2.JobSpec(
        argv=["python3", "-c", script], image=worker_image, timeout=duration_pb2.Duration(seconds=2)
    )
    job = Job(tmp_path, spec, job_id="job-timeout")
    started = time.monotonic()
    outcome = await job.outcome()
    assert outcome.state == job_pb2.JOB_STATE_TIMED_OUT, outcome
    assert time.monotonic() - started < 30
    assert not container_exists(containers.container_name("job-timeout", 1))


async def test_ffmpeg_in_the_worker_image_reports_progress_and_writes_the_work_dir(
    tmp_path: Path, worker_image: str
) -> None:
    spec = job_pb2.JobSpec(
        argv=[
            *("ffmpeg", "-hide_banner", "-f", "lavfi", "-i", "testsrc=duration=2:size=160x120:rate=25"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-y", "out.mp4"),
        ],
        image=worker_image,
        progress_format=job_pb2.PROGRESS_FORMAT_FFMPEG,
        media_duration=duration_pb2.Duration(seconds=2),
    )
    spec.resources.cpu_millis = 1000
    spec.resources.memory_bytes = 512 << 20
    job = Job(tmp_path, spec)
    outcome = await job.outcome()
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome
    assert job.progress and job.progress[-1].percent == 100 and job.progress[-1].frames == 50
    assert (job.run.work_dir / "out.mp4").stat().st_size > 1000


async def test_a_restarted_agent_removes_the_container_a_dead_agent_left(
    tmp_path: Path, worker_image: str
) -> None:
    script = "import time; print('ready', flush=True); time.sleep(300)"
    job = Job(
        tmp_path, job_pb2.JobSpec(argv=["python3", "-c", script], image=worker_image), job_id="job-orphan"
    )
    assert await job.run.start()
    deadline = time.monotonic() + 30
    while "ready" not in job.logs:
        assert time.monotonic() < deadline, job.logs
        await asyncio.sleep(0.05)
    name = containers.container_name("job-orphan", 1)
    assert container_exists(name)
    # The agent that started it "dies": its marker now names a process that is gone (a start time
    # that is not this process's: the pid was reused).
    marker = job.run.work_dir / orphans.MARKER
    data = json.loads(marker.read_text())
    assert data["container"] == name and data["engine"] == "podman"
    data.update(agent_started=data["agent_started"] - 1000)
    marker.write_text(json.dumps(data))

    reaped = await asyncio.to_thread(orphans.reap, job.work_root)
    assert [r.job_id for r in reaped] == ["job-orphan"]
    assert not container_exists(name)
    outcome = await asyncio.wait_for(job.run.wait(), 30)  # its CLI was killed with the container
    assert outcome.state == job_pb2.JOB_STATE_FAILED
