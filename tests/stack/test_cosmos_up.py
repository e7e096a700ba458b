"""``cosmos up`` as a user runs it, inspected with the real grpcurl binary."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from cosmos.runtime.config import free_port

GRPCURL = str(Path(sys.executable).parent / "grpcurl")

SERVICES = {
    "optimus": ["cosmos.optimus.v1.EncodeService"],
    "plato": ["cosmos.plato.v1.StepService", "cosmos.plato.v1.WorkflowService"],
    "stratum": [
        "cosmos.stratum.v1.AgentService",
        "cosmos.stratum.v1.JobService",
        "cosmos.stratum.v1.PoolService",
    ],
}


@dataclass
class Stack:
    proc: subprocess.Popen[str]
    ports: dict[str, int]
    data_dir: Path

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def grpcurl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """grpcurl as the local admin, with the credentials `cosmos up` wrote (the README's command)."""
        pki = self.data_dir / "pki"
        tls = [
            "-cacert",
            str(pki / "ca.pem"),
            "-cert",
            str(pki / "admin.pem"),
            "-key",
            str(pki / "admin-key.pem"),
        ]
        return subprocess.run([GRPCURL, *tls, *args], capture_output=True, text=True, timeout=30)


def wait_agent_ready(stack: Stack, timeout: float = 90) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if stack.proc.poll() is not None:
            out = stack.proc.stdout.read() if stack.proc.stdout else ""
            raise AssertionError(f"cosmos up exited {stack.proc.returncode}: {out}")
        done = stack.grpcurl(stack.target("stratum"), "cosmos.stratum.v1.PoolService/ListAgents")
        last = done.stdout + done.stderr
        if done.returncode == 0:
            agents = json.loads(done.stdout).get("agents", [])
            if agents and agents[0].get("state") == "AGENT_STATE_READY":
                return dict(agents[0])
        time.sleep(0.3)
    raise AssertionError(f"agent not READY: {last}")


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def start_up(tmp_path: Path, ports: dict[str, int], token_port_offset: int = 0) -> Stack:
    env = {**os.environ, "COSMOS_NATS_PORT": str(ports["nats"]), "COSMOS_DATA_DIR": str(tmp_path / "data"),
           # Optimus's metrics here, Plato's, Stratum's and the agent's on the next three (0: none).
           "COSMOS_METRICS_PORT": str(ports.get("metrics", 0)),
           "COSMOS_CONFIG": str(tmp_path / "config.yaml"),
           "COSMOS_TOKEN_PORT_OFFSET": str(token_port_offset),
           "COSMOS_WEBHOOK_PORT": str(ports.get("webhook") or free_port()),
           # The web console (started where token ports are on) on a free port too.
           "COSMOS_CONSOLE_PORT": str(ports.get("console") or free_port()),
           # The embedded S3 server (on by default) on a free port: tests run side by side.
           "COSMOS_S3_PORT": str(ports.get("s3") or free_port())}  # fmt: skip
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "cosmos.cli", "up",
            "--optimus-port", str(ports["optimus"]),
            "--plato-port", str(ports["plato"]),
            "--stratum-port", str(ports["stratum"]),
            "--agent-gpus", "2xA100:80G",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip
    return Stack(proc, ports, tmp_path / "data")


def stop_up(stack: Stack) -> None:
    proc = stack.proc
    if proc.poll() is None:
        # A failed test leaves the stack up: stop it the way a user would, then make sure.
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    names = ("optimus", "plato", "stratum", "nats", "webhook")
    up = start_up(tmp_path, {**{name: free_port() for name in names}, "metrics": free_port(consecutive=4)})
    yield up
    stop_up(up)


@pytest.mark.slow
def test_up_serves_every_contract_with_health_and_reflection_then_stops_cleanly(stack: Stack) -> None:
    agent = wait_agent_ready(stack)
    assert [g["model"] for g in agent["inventory"]["gpus"]] == ["A100", "A100"]  # type: ignore[index]

    for name, services in SERVICES.items():
        listed = stack.grpcurl(stack.target(name), "list")
        assert listed.returncode == 0, listed.stderr
        names = listed.stdout.split()
        assert names == sorted(
            [*services, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]
        )
        for service in [*services, ""]:
            check = stack.grpcurl(
                "-d", json.dumps({"service": service}), stack.target(name), "grpc.health.v1.Health/Check"
            )
            assert check.returncode == 0, check.stderr
            assert json.loads(check.stdout) == {"status": "SERVING"}

    described = stack.grpcurl(stack.target("plato"), "describe", "cosmos.plato.v1.StartWorkflowRequest")
    assert described.returncode == 0, described.stderr
    assert "string request_id = 1" in described.stdout
    assert ".google.protobuf.Struct input" in described.stdout
    agent_service = stack.grpcurl(stack.target("stratum"), "describe", "cosmos.stratum.v1.AgentService")
    connect = "rpc Connect ( stream .cosmos.stratum.v1.ConnectRequest ) returns ( stream .cosmos.stratum.v1.ConnectResponse )"  # noqa: E501
    assert connect in agent_service.stdout, agent_service.stdout

    # Bad requests are refused with the offending field, and the services stay up.
    submit = stack.grpcurl(
        "-d", "{}", stack.target("optimus"), "cosmos.optimus.v1.EncodeService/SubmitEncode"
    )
    assert submit.returncode != 0 and "InvalidArgument" in submit.stderr and "source_uri" in submit.stderr
    bad_page = stack.grpcurl(
        "-d", '{"page_size": -1}', stack.target("stratum"), "cosmos.stratum.v1.PoolService/ListAgents"
    )
    assert "InvalidArgument" in bad_page.stderr and "page_size" in bad_page.stderr

    # Optimus's webhook: HTTPS with the dev CA's certificate, a 0600 secret, unsigned POSTs refused.
    secret = stack.data_dir / "webhook" / "secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) == 64
    tls = ssl.create_default_context(cafile=str(stack.data_dir / "pki" / "ca.pem"))
    unsigned = urllib.request.Request(
        f"https://127.0.0.1:{stack.ports['webhook']}/v1/webhooks/s3", data=b'{"Records": []}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, context=tls, timeout=10)
    assert refused.value.code == 401

    # Each component's Prometheus metrics, plaintext on loopback, from --metrics-port on.
    # The local agent's two declared A100s are the pool's, none allocated.
    for offset, sample in enumerate(
        ('cosmos_optimus_encodes_submitted_total{outcome="started"} 0.0',
         'cosmos_plato_workflows_cached{state="running"} 0.0',
         'cosmos_stratum_gpus{model="A100",state="total"} 2.0',
         "cosmos_agent_connected 1.0")
    ):  # fmt: skip
        url = f"http://127.0.0.1:{stack.ports['metrics'] + offset}/metrics"
        with NO_PROXY.open(url, timeout=10) as response:
            text = response.read().decode()
        assert f"\n{sample}\n" in text, (url, text[:3000])

    children = psutil.Process(stack.proc.pid).children(recursive=True)
    assert len(children) == 6, [c.cmdline() for c in children]  # s3, nats, plato, stratum, optimus, agent
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(timeout=60) == 0
    output = stack.proc.stdout.read() if stack.proc.stdout else ""
    assert "Cosmos is up" in output
    for name in ("optimus", "plato", "stratum", "nats", "agent", "s3"):
        assert f"{name} (0)" in output, output
    assert f"http://127.0.0.1:{stack.ports['metrics'] + 1}/metrics" in output  # the endpoints table
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive
    assert (stack.data_dir / "nats" / "jetstream").is_dir()
    for port in stack.ports.values():
        with socket.socket() as sock:
            # As ensure_port_free checks: a listener makes the bind fail, a TIME_WAIT does not (a TLS
            # client's close leaves one on NATS's port: nats-server answers close_notify by closing first).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))  # every port is released


def test_up_refuses_a_port_in_use_naming_it(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        argv = ["up", "--plato-port", str(port), "--data-dir", str(tmp_path / "d")]
        done = subprocess.run(
            [sys.executable, "-m", "cosmos.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COSMOS_NATS_PORT": str(free_port()), "COSMOS_OPTIMUS_PORT": str(free_port()),
                 "COSMOS_METRICS_PORT": "0",
                 "COSMOS_STRATUM_PORT": str(free_port()), "COSMOS_CONFIG": str(tmp_path / "config.yaml")},
        )  # fmt: skip
    assert done.returncode == 2
    assert f"plato: 127.0.0.1:{port} is already in use" in done.stderr
    assert "COSMOS_PLATO_PORT" in done.stderr


JOB_WORKFLOW = f"""\
workflow:
  id: after-crash
  steps:
    hello:
      job:
        argv: ["{sys.executable}", "-c", "print('still here')"]
        resources: {{cpuMillis: 100}}
  rules:
    - when: workflow.started
      do: [hello]
"""


def component(stack: Stack, name: str) -> psutil.Process:
    """The running child of `cosmos up` that is ``name`` (nats, plato, stratum, optimus, agent)."""
    for child in psutil.Process(stack.proc.pid).children():
        argv = child.cmdline()
        if (name == "nats" and "nats-server" in argv[0]) or argv[3:4] == [name]:
            return child
    raise AssertionError(f"no {name} child")


def wait_restarted(stack: Stack, name: str, old_pid: int, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert stack.proc.poll() is None, "cosmos up stopped when a child died"
        with contextlib.suppress(AssertionError, psutil.NoSuchProcess):
            found = component(stack, name)
            if found.pid != old_pid:
                return found
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted")


@pytest.mark.slow
def test_up_restarts_a_crashed_child_and_the_platform_still_works(stack: Stack) -> None:
    wait_agent_ready(stack)
    for name in ("plato", "agent", "stratum"):
        victim = component(stack, name)
        victim.kill()  # kill -9
        wait_restarted(stack, name, victim.pid)
    wait_agent_ready(stack)

    plato = stack.target("plato")
    for _ in range(100):  # Plato answers again once its new process is up
        registered = stack.grpcurl(
            "-d", json.dumps({"request_id": "reg-crash", "source_yaml": JOB_WORKFLOW}),
            plato, "cosmos.plato.v1.WorkflowService/RegisterDefinition",
        )  # fmt: skip
        if registered.returncode == 0:
            break
        time.sleep(0.3)
    assert registered.returncode == 0, registered.stderr
    started = stack.grpcurl(
        "-d", json.dumps({"request_id": "run-crash", "definition_id": "after-crash"}),
        plato, "cosmos.plato.v1.WorkflowService/StartWorkflow",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    workflow_id = json.loads(started.stdout)["workflow"]["workflow_id"]
    state = ""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and state not in ("WORKFLOW_STATE_COMPLETED", "WORKFLOW_STATE_FAILED"):
        time.sleep(0.3)
        query = json.dumps({"workflow_id": workflow_id})
        got = stack.grpcurl("-d", query, plato, "cosmos.plato.v1.WorkflowService/GetWorkflow")
        state = json.loads(got.stdout)["workflow"].get("state", "") if got.returncode == 0 else ""
    assert state == "WORKFLOW_STATE_COMPLETED", got.stdout

    stack.proc.send_signal(signal.SIGINT)  # only Ctrl-C stops the stack
    assert stack.proc.wait(timeout=60) == 0
    output = stack.proc.stdout.read() if stack.proc.stdout else ""
    for name in ("plato", "agent", "stratum"):
        assert f"{name} exited with code -9; restarting it in" in output, output
        assert f"{name} restarted (pid" in output


@pytest.mark.slow
def test_up_lets_a_second_agent_join_with_a_join_token(tmp_path: Path) -> None:
    """The README's steps to add an agent: a join token from the CLI, ca.pem, the token in the
    environment, the stack's token port."""
    ports = {name: free_port(consecutive=2) for name in ("optimus", "plato", "stratum")}
    ports["nats"] = free_port()
    ports["console"] = free_port()
    stack = start_up(tmp_path, ports, token_port_offset=1)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_agent_ready(stack)
        env = {**os.environ, "COSMOS_CONFIG": str(tmp_path / "config.yaml")}
        cli = [sys.executable, "-m", "cosmos.cli", "agents", "join-token"]
        created = subprocess.run([*cli, "create", "--ttl", "10m"], capture_output=True, text=True, env=env,
                                 timeout=60)  # fmt: skip
        assert created.returncode == 0, created.stderr
        token = created.stdout.splitlines()[0]
        assert token.startswith("cjt_") and "1 join(s)" in created.stdout

        agent_pki = tmp_path / "agent2-pki"
        agent_pki.mkdir()
        (agent_pki / "ca.pem").write_bytes((stack.data_dir / "pki" / "ca.pem").read_bytes())
        with (tmp_path / "agent2.log").open("wb") as log:
            second = subprocess.Popen(
                [sys.executable, "-m", "cosmos.cli", "agent", "--stratum", stack.target("stratum"),
                 "--agent-id", "second-host", "--pki-dir", str(agent_pki),
                 "--join-address", f"127.0.0.1:{ports['stratum'] + 1}",
                 "--work-dir", str(tmp_path / "agent2-work"),
                 "--storage-root", str(stack.data_dir / "storage")],
                stdout=log, stderr=subprocess.STDOUT, env={**env, "COSMOS_AGENT_JOIN_TOKEN": token},
            )  # fmt: skip
        deadline = time.monotonic() + 90
        ready: list[str] = []
        while time.monotonic() < deadline and len(ready) < 2:
            assert second.poll() is None, (tmp_path / "agent2.log").read_text()
            done = stack.grpcurl(stack.target("stratum"), "cosmos.stratum.v1.PoolService/ListAgents")
            agents = json.loads(done.stdout).get("agents", []) if done.returncode == 0 else []
            ready = sorted(
                str(a.get("agentId") or a.get("agent_id"))
                for a in agents
                if a.get("state") == "AGENT_STATE_READY"
            )
            time.sleep(0.3)
        assert ready == sorted([f"local-{ports['stratum']}", "second-host"]), (
            tmp_path / "agent2.log"
        ).read_text()

        listed = subprocess.run([*cli, "list"], capture_output=True, text=True, env=env, timeout=60)
        assert listed.returncode == 0 and "used up" in listed.stdout and "second-host" in listed.stdout

        # With token ports on, `cosmos up` also serves the web console over HTTPS (the dev CA's
        # certificate), sign-in first, and says how to sign in.
        tls = ssl.create_default_context(cafile=str(stack.data_dir / "pki" / "ca.pem"))
        conn = http.client.HTTPSConnection("127.0.0.1", ports["console"], context=tls, timeout=10)
        conn.request("GET", "/workflows")
        reply = conn.getresponse()
        assert reply.status == 303 and reply.getheader("Location", "").startswith("/signin")
        assert "HttpOnly" not in str(reply.getheader("Set-Cookie"))  # no session before sign-in
        conn.close()
        stop_up(stack)
        assert stack.proc.stdout is not None
        printed = stack.proc.stdout.read()
        assert f"console: https://127.0.0.1:{ports['console']}/" in printed, printed
        assert "cosmos token create --tenant default --role admin" in printed
    finally:
        if second is not None and second.poll() is None:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        stop_up(stack)
