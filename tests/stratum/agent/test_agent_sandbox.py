"""Jobs run sandboxed: another uid than root, per tenant, with rlimits, away from the agent's files.

Real processes through :class:`JobRun` with the agent's :class:`Sandbox`; the agent side (these tests)
runs as root, as an agent usually does.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cosmos.common.v1 import progress_pb2
from cosmos.stratum.agent import orphans, sandbox
from cosmos.stratum.agent.runner import JobRun, RunLimits, RunOutcome
from cosmos.stratum.v1 import job_pb2

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs an agent running as root")

FAST = RunLimits(kill_grace_s=2.0, leftover_grace_s=0.5, progress_interval_s=0.05, log_flush_s=0.05)
KEY_BYTES = (
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIStandInForTheAgentsKey\n-----END PRIVATE KEY-----\n"
)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A root-owned 0755 directory every uid can reach (a tmp_path sits under a 0700 one)."""
    directory = Path(tempfile.mkdtemp(prefix="cosmos-sandbox-test-"))
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class Logs:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, batch: list[job_pb2.LogLine]) -> None:
        self.lines.extend(line.text for line in batch)

    def text(self) -> str:
        return "\n".join(self.lines)


async def run_job(
    jail: sandbox.Sandbox,
    work_root: Path,
    code: str,
    *,
    tenant: str = "acme",
    job_id: str = "job-1",
    **kw: Any,
) -> tuple[RunOutcome, Logs]:
    logs = Logs()

    async def ignore(_: progress_pb2.Progress) -> None:
        return None

    run = JobRun(
        job_pb2.JobSpec(argv=[sys.executable, "-c", code], tenant=tenant),
        job_id=job_id,
        attempt=1,
        work_root=work_root,
        on_logs=logs,
        on_progress=ignore,
        limits=FAST,
        jail=jail,
        **kw,
    )
    await run.start()
    return await asyncio.wait_for(run.wait(), 60), logs


PROBE = """
import json, os, resource, sys
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "home": os.environ["HOME"],
       "cwd": os.getcwd(), "limits": {n: resource.getrlimit(getattr(resource, n))[0]
       for n in ("RLIMIT_DATA", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")}}
try:
    out["key"] = open(sys.argv[1]).read()
except OSError as exc:
    out["key_error"] = exc.errno
try:
    open(os.path.join(sys.argv[2], "planted"), "w").write("x")
    out["wrote"] = True
except OSError as exc:
    out["write_error"] = exc.errno
print("PROBE " + json.dumps(out))
"""


def probe(logs: Logs) -> dict[str, Any]:
    line = next(x for x in logs.lines if x.startswith("PROBE "))
    result: dict[str, Any] = json.loads(line.removeprefix("PROBE "))
    return result


async def test_a_job_is_not_root_cannot_read_a_root_key_nor_write_as_root(
    tmp_path: Path, open_dir: Path
) -> None:
    key = open_dir / "agent-key.pem"
    key.write_text(KEY_BYTES)
    os.chmod(key, 0o600)
    root_only = open_dir / "system"
    root_only.mkdir(mode=0o755)
    limits = sandbox.Limits(processes=300, open_files=512, file_size_bytes=1 << 30)
    jail = sandbox.Sandbox(tmp_path / "agent", limits=limits)
    code = f"import sys; sys.argv[1:] = [{str(key)!r}, {str(root_only)!r}]\n" + PROBE

    outcome, logs = await run_job(jail, tmp_path / "agent", code)

    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome.result.error
    seen = probe(logs)
    assert seen["uid"] != 0 and seen["gid"] != 0
    assert seen["uid"] in range(*sandbox.DEFAULT_UID_RANGE)
    assert seen["groups"] in ([], [seen["gid"]])  # no supplementary groups
    assert seen["key_error"] == errno.EACCES and "key" not in seen
    assert "PRIVATE KEY" not in logs.text() and "StandInForTheAgentsKey" not in logs.text()
    assert seen["write_error"] == errno.EACCES and not (root_only / "planted").exists()
    work_dir = str(tmp_path / "agent" / "job-1" / "1")
    assert seen["home"] == seen["cwd"] == work_dir
    assert seen["limits"] == {
        "RLIMIT_DATA": limits.default_memory_bytes,
        "RLIMIT_NPROC": 300,
        "RLIMIT_FSIZE": 1 << 30,
        "RLIMIT_NOFILE": 512,
        "RLIMIT_CORE": 0,
    }


async def test_the_agents_interpreter_runs_even_under_a_private_directory(tmp_path: Path) -> None:
    # tmp_path lies under pytest's 0700 directory, and the interpreter may lie under a 0700 /root:
    # the job reaches both through its mount namespace, and nothing else there.
    jail = sandbox.Sandbox(tmp_path / "agent")
    outcome, logs = await run_job(jail, tmp_path / "agent", "import os; print('ID', os.getuid())")
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome.result.error
    assert logs.lines[0].startswith("ID ") and logs.lines[0] != "ID 0"

    media = JobRun(
        job_pb2.JobSpec(argv=["python3", "-m", "cosmos.optimus.media", "profiles"], tenant="acme"),
        job_id="media",
        attempt=1,
        work_root=tmp_path / "agent",
        limits=FAST,
        jail=jail,
    )
    await media.start()
    done = await asyncio.wait_for(media.wait(), 60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.result.error


async def test_tenants_get_their_own_uid_and_cannot_read_each_others_files(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    jail = sandbox.Sandbox(tmp_path / "agent", tenant_roots=[scratch])
    chunk = scratch / "acme" / "enc-1" / "c"
    write = (
        "import os; open('secret.txt', 'w').write('acme-secret');"
        f"os.makedirs({str(chunk.parent)!r}); open({str(chunk)!r}, 'w').write('acme-chunk');"
        "print('UID', os.getuid())"
    )
    first, logs_a = await run_job(jail, tmp_path / "agent", write, job_id="a", keep_work_dir=True)
    assert first.state == job_pb2.JOB_STATE_SUCCEEDED, first.result.error
    acme_uid = int(logs_a.lines[-1].split()[1])
    assert (scratch / "acme").stat().st_uid == acme_uid
    assert chunk.read_text() == "acme-chunk"

    steal = f"""
import os
for path in {[str(tmp_path / "agent" / "a" / "1" / "secret.txt"), str(chunk)]!r}:
    try:
        print("READ", open(path).read())
    except OSError as exc:
        print("DENIED", exc.errno)
for path in {[str(scratch), str(tmp_path / "agent")]!r}:
    try:
        print("LISTED", os.listdir(path))
    except OSError as exc:
        print("DENIED", exc.errno)
print("UID", os.getuid())
"""
    second, logs_b = await run_job(jail, tmp_path / "agent", steal, tenant="globex", job_id="b")
    assert second.state == job_pb2.JOB_STATE_SUCCEEDED, second.result.error
    assert logs_b.lines[:4] == [f"DENIED {errno.EACCES}"] * 4
    assert "acme-secret" not in logs_b.text() and "acme-chunk" not in logs_b.text()
    globex_uid = int(logs_b.lines[-1].split()[1])
    assert globex_uid not in (0, acme_uid)

    # The map is kept in the work root: a restarted agent gives each tenant the same uid again.
    again = sandbox.Sandbox(tmp_path / "agent").identity("acme")
    assert again == sandbox.Identity(acme_uid, acme_uid)


async def test_rlimits_are_in_force(tmp_path: Path) -> None:
    jail = sandbox.Sandbox(tmp_path / "agent", limits=sandbox.Limits(file_size_bytes=1 << 20))
    big = """
import errno
try:
    with open("big.bin", "wb") as f:
        f.write(b"x" * (2 << 20))
    print("WROTE")
except OSError as exc:
    print("EFBIG" if exc.errno == errno.EFBIG else f"OTHER {exc!r}")
import os; print("SIZE", os.path.getsize("big.bin"))
"""
    outcome, logs = await run_job(jail, tmp_path / "agent", big)
    assert outcome.state == job_pb2.JOB_STATE_SUCCEEDED, outcome.result.error
    assert logs.lines[0] == "EFBIG"
    assert int(logs.lines[1].split()[1]) <= 1 << 20

    # Memory: a job declaring 64 MiB gets the floor (here 256 MiB); allocating 1 GiB fails.
    tight = sandbox.Sandbox(tmp_path / "agent", limits=sandbox.Limits(memory_floor_bytes=256 << 20))
    hog = "try:\n    b = bytearray(1 << 30)\n    print('ALLOCATED')\nexcept MemoryError:\n    print('MEMORY')"
    logs2 = Logs()
    spec = job_pb2.JobSpec(argv=[sys.executable, "-c", hog], tenant="acme")
    spec.resources.memory_bytes = 64 << 20
    run = JobRun(
        spec,
        job_id="hog",
        attempt=1,
        work_root=tmp_path / "agent",
        on_logs=logs2,
        limits=FAST,
        jail=tight,
    )
    await run.start()
    done = await asyncio.wait_for(run.wait(), 60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.result.error
    assert logs2.lines == ["MEMORY"]


def test_a_marker_the_job_could_have_forged_is_ignored(tmp_path: Path) -> None:
    """A job owns its work dir: a marker owned by its uid (naming any process) gets nothing killed."""
    dead_agent = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_agent.wait()
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        work = tmp_path / "agent" / "x" / "1"
        work.mkdir(parents=True)
        orphans.remember(work, "x", 1, victim.pid)
        marker = work / orphans.MARKER
        data = json.loads(marker.read_text())
        marker.write_text(json.dumps({**data, "agent_pid": dead_agent.pid}))
        os.chown(marker, sandbox.DEFAULT_UID_RANGE[0], sandbox.DEFAULT_UID_RANGE[0])

        assert orphans.reap(tmp_path / "agent") == []
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
