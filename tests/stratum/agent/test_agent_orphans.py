"""Job processes left running by a dead agent are stopped when an agent starts on the same work root."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import security_harness
from servers import wait_serving
from stratum_harness import JS, Agents, JobsClient, python_job, wait_agents

from cosmos.runtime.config import free_port
from cosmos.stratum.agent import orphans


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for whoever adopted it to reap it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)


def attempt_dir(root: Path, job: str) -> Path:
    work = root / job / "1"
    work.mkdir(parents=True)
    return work


def test_reap_stops_only_the_jobs_of_dead_agents(tmp_path: Path) -> None:
    dead_agent = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_agent.wait()
    orphan, kept = sleeper(), sleeper()
    try:
        # One job of a dead agent, one of a live agent (this process) sharing the work root.
        lost = attempt_dir(tmp_path, "lost")
        orphans.remember(lost, "lost", 1, orphan.pid)
        marker = json.loads((lost / orphans.MARKER).read_text())
        marker["agent_pid"] = dead_agent.pid
        (lost / orphans.MARKER).write_text(json.dumps(marker))
        live = attempt_dir(tmp_path, "live")
        orphans.remember(live, "live", 1, kept.pid)
        # A marker whose job process has ended already: nothing to stop, the directory goes.
        done = attempt_dir(tmp_path, "done")
        (done / orphans.MARKER).write_text(json.dumps({**marker, "pid": dead_agent.pid, "job_id": "done"}))

        reaped = orphans.reap(tmp_path)

        assert reaped == [orphans.Reaped("lost", 1, orphan.pid)]
        assert orphan.wait(5) == -9
        assert kept.poll() is None and (live / orphans.MARKER).is_file()
        assert not (tmp_path / "lost").exists() and not (tmp_path / "done").exists()
    finally:
        for proc in (orphan, kept):
            proc.kill()
            proc.wait()


@pytest.fixture
def stratum(nats_url: str, tmp_path: Path) -> Iterator[str]:
    target = f"127.0.0.1:{free_port()}"
    with (tmp_path / "stratum.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cosmos.cli", "stratum", "--listen", target, "--nats", nats_url,
             "--lease-seconds", "2", "--heartbeat-interval", "0.3",
             *security_harness.service_args("stratum")],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_serving(target, proc=proc)
    yield target
    proc.terminate()
    proc.wait(20)


async def test_a_restarted_agent_stops_the_job_its_killed_predecessor_left(
    stratum: str, tmp_path: Path
) -> None:
    agents = Agents(tmp_path)
    jobs = JobsClient.connect(stratum)
    try:
        agents.start(stratum, "host-a")
        await wait_agents(stratum, 1)
        job = await jobs.submit(python_job("import time; time.sleep(600)"))
        await jobs.wait(job.job_id, [JS.JOB_STATE_RUNNING])
        marker = next((tmp_path / "host-a").glob(f"*/*/{orphans.MARKER}"))
        pid = int(json.loads(marker.read_text())["pid"])
        agents.kill("host-a")  # SIGKILL: the job's own session keeps it running
        await asyncio.sleep(0.5)
        assert running(pid)

        agents.start(stratum, "host-a")  # same id, same work dir
        for _ in range(100):
            if not running(pid) and not marker.parent.exists():
                break
            await asyncio.sleep(0.1)
        assert not running(pid), "the orphaned job process is still running"
        assert not marker.parent.exists()  # the dead attempt's work dir is gone
    finally:
        agents.stop_all()
        await jobs.channel.close(None)
