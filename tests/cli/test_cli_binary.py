"""The ``cosmos`` binary as a user runs it: against a real ``cosmos up`` stack, and against none.

Every command prints tables for people or ``-o json|yaml`` for scripts, ids whole (and takes unique
prefixes), and fails with one line on stderr, a hint, a non-zero code, nothing on stdout and no
traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from cosmos.runtime.config import free_port

COSMOS = str(Path(sys.executable).parent / "cosmos")


@dataclass
class Stack:
    proc: subprocess.Popen[str]
    env: dict[str, str]
    data_dir: Path
    clip: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return cosmos(*args, env=self.env, timeout=timeout)


def cosmos(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COSMOS, *args], capture_output=True, text=True, env=env, timeout=timeout)


def assert_clean_failure(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """A failure as the CLI must fail: non-zero, nothing on stdout, one line on stderr, no traceback."""
    err = done.stderr.strip()
    assert done.returncode != 0, done
    assert done.stdout == "", done
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


def make_clip(path: Path, seconds: int, size: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", "make-test-clip", "--out", str(path),
         "--seconds", str(seconds), "--size", size, "--fps", "24"],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "COSMOS_CONFIG": str(tmp / "config.yaml"), "COLUMNS": "80"}
    env.pop("COSMOS_CONTEXT", None)
    ports = {name: free_port() for name in ("optimus", "plato", "stratum", "nats")}
    proc = subprocess.Popen(
        [COSMOS, "up", "--no-s3", "--webhook-port", "0", "--metrics-port", "0",
         "--data-dir", str(tmp / "data"), "--token-port-offset", "0",
         *[a for n, p in ports.items() for a in (f"--{n}-port", str(p))]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    up = Stack(proc, env, tmp / "data", make_clip(tmp / "clip.mp4", 3, "320x180"))
    try:
        deadline = time.monotonic() + 120
        while True:
            done = up.run("agents", "list", "-o", "json", timeout=30)
            if done.returncode == 0 and any(
                a["state"] == "AGENT_STATE_READY" for a in json.loads(done.stdout)["agents"]
            ):
                break
            assert proc.poll() is None and time.monotonic() < deadline, done.stderr
            time.sleep(0.5)
        yield up
    finally:
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@pytest.fixture(scope="module")
def encoded(stack: Stack) -> dict[str, object]:
    """One finished encode, submitted with the CLI (-o json)."""
    done = stack.run("encode", str(stack.clip), "--profiles", "360p", "--out", "ladder", "-o", "json")
    assert done.returncode == 0, done.stderr
    encode: dict[str, object] = json.loads(done.stdout)
    return encode


# -- no stack -----------------------------------------------------------------------------------------


def test_with_the_stack_down_every_command_says_so_in_one_line_with_a_hint(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    closed = {s: f"127.0.0.1:{free_port()}" for s in ("optimus", "plato", "stratum")}
    config.write_text(
        yaml.safe_dump(
            {"current-context": "down", "contexts": {"down": {"insecure": True, "endpoints": closed}}}
        )
    )
    env = {**os.environ, "COSMOS_CONFIG": str(config)}
    env.pop("COSMOS_CONTEXT", None)
    clip = tmp_path / "in.mp4"
    clip.write_bytes(b"x")
    for argv, service in [
        (["workflows", "list"], "plato"),
        (["workflows", "show", "wf-1"], "plato"),
        (["jobs", "list", "-o", "json"], "stratum"),
        (["jobs", "logs", "job-1", "-f"], "stratum"),
        (["agents"], "stratum"),
        (["agents", "join-token", "list"], "stratum"),
        (["encode", str(clip), "--profiles", "360p", "--out", str(tmp_path / "out")], "optimus"),
        (["encode", "watch", "enc-1"], "optimus"),
    ]:
        done = cosmos(*argv, env=env)
        err = assert_clean_failure(done, f"cannot reach {service} at {closed[service]}", "cosmos up")
        assert err.startswith(f"cosmos {argv[0]}"), err


def test_bad_input_is_named(tmp_path: Path) -> None:
    env = {**os.environ, "COSMOS_CONFIG": str(tmp_path / "none.yaml")}
    done = cosmos("workflows", "list", "--state", "sleeping", env=env)
    assert done.returncode == 2 and "--state" in done.stderr and "sleeping" in done.stderr
    done = cosmos("jobs", "list", "--since", "yesterday", env=env)
    assert_clean_failure(done, "--since 'yesterday'", "15m")
    done = cosmos("workflows", "show", env=env)
    assert done.returncode == 2 and "show needs a workflow id" in done.stderr
    done = cosmos("agents", "list", "-o", "xml", env=env)
    assert done.returncode == 2 and "xml" in done.stderr
    err = assert_clean_failure(cosmos("workflows", "list", "--context", "nope", env=env), "no context 'nope'")
    assert err.count("nope") == 1
    done = cosmos("config", "set", "x", "--plato", "nohost", env=env)
    assert_clean_failure(done, "--plato 'nohost': expected HOST:PORT")


def test_version_completion_and_contexts(tmp_path: Path) -> None:
    env = {**os.environ, "COSMOS_CONFIG": str(tmp_path / "config.yaml")}
    version = cosmos("--version", env=env)
    assert version.returncode == 0 and version.stdout.startswith("cosmos 0.")
    script = cosmos("completion", "bash", env=env).stdout

    def complete(*words: str) -> list[str]:
        probe = (
            f"source /dev/stdin; COMP_WORDS=(cosmos {' '.join(words)}); COMP_CWORD={len(words)}; _cosmos; "
        )
        probe += 'echo "${COMPREPLY[@]}"'
        said = subprocess.run(["bash", "-c", probe], input=script, capture_output=True, text=True, check=True)
        return sorted(said.stdout.split())

    assert complete("wor") == ["workflows"]
    assert complete("workflows", "--sta") == ["--state"]
    assert complete("jobs", "l") == ["list", "logs"]
    assert "bashcompinit" in cosmos("completion", "zsh", env=env).stdout
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    prod = ["--plato", "plato.example:443", "--ca", str(ca), "--token", "s3cret"]
    assert cosmos("config", "set", "prod", *prod, env=env).returncode == 0
    assert cosmos("config", "set", "dev", "--insecure", "--current", env=env).returncode == 0
    listed = json.loads(cosmos("config", "list", "-o", "json", env=env).stdout)
    assert listed["current"] == "dev" and set(listed["contexts"]) == {"dev", "prod"}
    assert listed["contexts"]["prod"]["token"] == "<set>"  # never printed
    assert cosmos("config", "use", "prod", env=env).returncode == 0
    shown = yaml.safe_load(cosmos("config", "show", env=env).stdout)
    assert shown["name"] == "prod" and shown["endpoints"]["plato"] == "plato.example:443"
    assert "s3cret" not in cosmos("config", "show", "-o", "json", env=env).stdout
    assert cosmos("config", "delete", "dev", env=env).returncode == 0
    assert_clean_failure(cosmos("config", "use", "dev", env=env), "no context 'dev'")


# -- against a stack -----------------------------------------------------------------------------------


@pytest.mark.slow  # about 25 s: a whole stack
def test_encode_json_then_lists_filters_formats_and_prefixes(
    stack: Stack, encoded: dict[str, object]
) -> None:
    assert encoded["state"] == "ENCODE_STATE_SUCCEEDED"
    encode_id = str(encoded["encodeId"])
    out = stack.data_dir / "storage" / "default" / "ladder"
    renditions = encoded["renditions"]
    assert isinstance(renditions, list)
    assert [r["playlistUri"] for r in renditions] == [
        f"{out.as_uri()}/media_{renditions[0]['playlistUri'].rsplit('_', 1)[1]}"
    ]
    assert (out / renditions[0]["playlistUri"].rsplit("/", 1)[1]).is_file()

    listed = json.loads(stack.run("workflows", "list", "-o", "json").stdout)["workflows"]
    assert encode_id in [w["workflowId"] for w in listed]
    as_yaml = yaml.safe_load(stack.run("workflows", "list", "-o", "yaml", "--all").stdout)["workflows"]
    assert [w["workflowId"] for w in as_yaml] == [w["workflowId"] for w in listed]
    table = stack.run("workflows", "list").stdout  # 80 columns: the id is still whole
    assert encode_id in table, table

    def ids(*flags: str) -> list[str]:
        done = stack.run("workflows", "list", "-o", "json", *flags)
        assert done.returncode == 0, done.stderr
        return [w["workflowId"] for w in json.loads(done.stdout)["workflows"]]

    assert encode_id in ids("--state", "completed", "--definition", "encode-ladder", "--tenant", "default")
    assert encode_id in ids("--since", "10m") and encode_id in ids("--since", "2020-01-01T00:00")
    assert ids("--state", "failed") == [] and ids("--definition", "nope") == []
    assert ids("--tenant", "other") == [] and ids("--since", "2099-01-01") == []

    shown = json.loads(stack.run("workflows", "show", encode_id[:10], "-o", "json").stdout)["workflow"]
    assert shown["workflowId"] == encode_id
    table = stack.run("workflows", "show", encode_id[:10]).stdout
    # A completed step reads 100%, never the last percentage it reported.
    assert "completed" in table and "%" in table
    for line in table.splitlines():
        if "│ completed" in line and "%" in line:
            assert "100%" in line, line
    history = json.loads(stack.run("workflows", "history", encode_id, "-o", "json").stdout)["events"]
    sequences = [int(e["sequence"]) for e in history]
    assert sequences == list(range(1, len(sequences) + 1)) and len(sequences) > 30
    assert history[-1]["type"] == "WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED"
    assert f"cosmos workflows history {encode_id}" in table  # show says where the rest is

    assert_clean_failure(
        stack.run("workflows", "show", "zzz-nothing"), "no workflow with id or id prefix 'zzz-nothing'"
    )


def test_encode_bad_profile_is_one_line_naming_it(stack: Stack) -> None:
    done = stack.run("encode", str(stack.clip), "--profiles", "999p", "--out", "bad")
    err = assert_clean_failure(done, "unknown profile '999p'", "known profiles")
    assert err.count("unknown profile") == 1, err
    done = stack.run("encode", str(stack.clip), "--profiles", "360p", "--out", "/proc/self/x")
    assert_clean_failure(done, "INVALID_ARGUMENT", "output_uri", "/proc/self/x")


def test_encode_detach_then_watch(stack: Stack) -> None:
    done = stack.run("encode", str(stack.clip), "--profiles", "360p", "--out", "detached", "--detach")
    assert done.returncode == 0, done.stderr
    encode_id = done.stdout.strip()
    assert encode_id.startswith("enc-") and "cosmos encode watch" in done.stderr
    watched = stack.run("encode", "watch", encode_id, "-o", "json")
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout)["state"] == "ENCODE_STATE_SUCCEEDED"
    table = stack.run("encode", "watch", encode_id)
    assert table.returncode == 0 and "HLS" in table.stdout and "360p" in table.stdout
    assert_clean_failure(stack.run("encode", "watch", "enc-nope"), "NOT_FOUND")


def test_jobs_list_show_logs_and_agents(stack: Stack, encoded: dict[str, object]) -> None:
    jobs = json.loads(stack.run("jobs", "list", "--all", "-o", "json").stdout)["jobs"]
    assert jobs and all(j["state"] == "JOB_STATE_SUCCEEDED" for j in jobs)
    probe = next(j for j in jobs if "probe" in j["spec"]["argv"])
    job_id = probe["jobId"]
    assert stack.run("jobs", "list").stdout.count("job-") >= 1
    assert job_id in stack.run("jobs", "list").stdout  # whole, at 80 columns
    shown = json.loads(
        stack.run("jobs", "show", job_id[:12] if len(jobs) == 1 else job_id, "-o", "json").stdout
    )
    assert shown["job"]["jobId"] == job_id
    assert json.loads(stack.run("jobs", "list", "--state", "failed", "-o", "json").stdout)["jobs"] == []
    assert len(json.loads(stack.run("jobs", "list", "--limit", "1", "-o", "json").stdout)["jobs"]) == 1
    logs = stack.run("jobs", "logs", job_id)
    assert logs.returncode == 0 and "COSMOS_RESULT" in logs.stdout, logs
    followed = stack.run("jobs", "logs", job_id, "-f", timeout=30)  # a finished job: -f ends too
    assert followed.stdout == logs.stdout
    assert_clean_failure(stack.run("jobs", "show", "job-"), "ambiguous") if len(jobs) > 1 else None

    agent = json.loads(stack.run("agents", "-o", "json").stdout)["agents"][0]["agentId"]
    assert "cordoned" in stack.run("agents", "cordon", agent[:5]).stdout
    states = json.loads(stack.run("agents", "list", "--state", "cordoned", "-o", "json").stdout)["agents"]
    assert [a["agentId"] for a in states] == [agent]
    assert "uncordoned" in stack.run("agents", "uncordon", agent).stdout
    assert json.loads(stack.run("agents", "list", "--state", "ready", "-o", "json").stdout)["agents"]
    token = stack.run("agents", "join-token", "create", "--description", "cli test")
    assert token.returncode == 0, token.stderr
    tokens = json.loads(stack.run("agents", "join-token", "list", "-o", "json").stdout)["joinTokens"]
    assert [t["description"] for t in tokens] == ["cli test"]
    assert tokens[0]["tokenId"] in stack.run("agents", "join-token", "list").stdout  # whole, at 80 columns


def test_ctrl_c_at_the_prompt_is_not_replayed_and_a_second_one_detaches(stack: Stack, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "long.mp4", 20, "1280x720")
    primary, secondary = pty.openpty()  # the prompt reads a terminal
    proc = subprocess.Popen(
        [COSMOS, "encode", str(clip), "--profiles", "720p,360p", "--quality", "full", "--out", "long"],
        stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stack.env,
    )  # fmt: skip
    os.close(secondary)
    seen: list[str] = []  # characters: the question ends without a newline
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def wait_for(text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in "".join(seen):
            assert time.monotonic() < deadline and proc.poll() is None, (text, "".join(seen))
            time.sleep(0.1)

    try:
        wait_for("encode enc-")
        proc.send_signal(signal.SIGINT)
        wait_for("cancel the encode?")
        os.write(primary, b"n\n")  # no: the encode goes on, and the prompt does not come back
        time.sleep(1.5)
        assert "".join(seen).count("cancel the encode?") == 1 and proc.poll() is None
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # at the open question: stop watching, cancel nothing
        proc.wait(30)
        err = proc.stderr.read()  # type: ignore[union-attr]
        assert proc.returncode == 130 and "stopped watching" in err and "Traceback" not in err, err
        encode_id = err.split("stopped watching; ")[1].split()[0]
        state = json.loads(stack.run("workflows", "show", encode_id, "-o", "json").stdout)["workflow"][
            "state"
        ]
        assert state in ("WORKFLOW_STATE_RUNNING", "WORKFLOW_STATE_COMPLETED")
        stack.run("workflows", "cancel", encode_id)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_then_yes_cancels_once_and_asks_nothing_more(stack: Stack, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "long.mp4", 20, "1280x720")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [COSMOS, "encode", str(clip), "--profiles", "720p,360p", "--quality", "full", "--out", "cancelled"],
        stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stack.env,
    )  # fmt: skip
    os.close(secondary)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while "encode enc-" not in "".join(seen):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        while "cancel the encode?" not in "".join(seen):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)
            time.sleep(0.1)
        os.write(primary, b"y\n")
        proc.wait(60)
        reader.join(5)
        out, err = "".join(seen), proc.stderr.read()  # type: ignore[union-attr]
        assert proc.returncode == 1 and "CANCELLED" in out and "Traceback" not in err, (out, err)
        assert out.count("cancel the encode?") == 1, out
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()


SUBMIT = """
import asyncio
from cosmos.client import Job, StratumClient

SCRIPT = "import time\\nfor i in range(4):\\n    print('line', i, flush=True)\\n    time.sleep(1)"


async def main() -> None:
    job = Job.builder().command("python3", "-c", SCRIPT).cpu(0.1).memory("64Mi").build()
    async with StratumClient.connect() as stratum:
        print((await stratum.submit(job)).job_id)


asyncio.run(main())
"""


def test_jobs_logs_follow_prints_lines_as_they_come_and_ends_with_the_job(stack: Stack) -> None:
    submitted = subprocess.run(
        [sys.executable, "-c", SUBMIT], capture_output=True, text=True, env=stack.env, timeout=60
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    started = time.monotonic()
    followed = stack.run("jobs", "logs", job_id, "-f", timeout=60)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == [f"line {i}" for i in range(4)]
    assert time.monotonic() - started >= 2  # it waited for lines still to come
    state = json.loads(stack.run("jobs", "show", job_id, "-o", "json").stdout)["job"]["state"]
    assert state == "JOB_STATE_SUCCEEDED"


def test_agents_drain_last(stack: Stack) -> None:
    # Last in this module: a draining agent takes no new jobs.
    agent = json.loads(stack.run("agents", "-o", "json").stdout)["agents"][0]["agentId"]
    drained = stack.run("agents", "drain", agent)
    assert drained.returncode == 0 and f"agent {agent} draining" in drained.stdout, drained.stderr
    shown = json.loads(stack.run("agents", "show", agent, "-o", "json").stdout)["agent"]
    assert shown["state"] in ("AGENT_STATE_DRAINING", "AGENT_STATE_CORDONED")
    assert_clean_failure(stack.run("agents", "drain", "nobody"), "no agent with id or id prefix 'nobody'")
