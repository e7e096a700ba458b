"""Stratum with real agents: registration, leases, cordon/drain and rich errors over real gRPC."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import security_harness

from cosmos.runtime import rpc_errors
from cosmos.stratum.v1 import agent_pb2, pool_service_pb2, pool_service_pb2_grpc

State = agent_pb2.AgentState


@pytest.fixture
def stratum(start_service: Callable[..., Any], nats_url: str) -> Any:
    return start_service("stratum", "--nats", nats_url, "--lease-seconds", "2", "--heartbeat-interval", "0.3")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(stratum: str, agent_id: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cosmos.cli", "agent", "--stratum", stratum, "--agent-id", agent_id,
             *security_harness.agent_args(agent_id), "--work-dir", str(tmp_path / agent_id), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_state(
    pool: pool_service_pb2_grpc.PoolServiceStub,
    agent_id: str,
    state: agent_pb2.AgentState.ValueType,
    timeout: float = 20,
) -> agent_pb2.Agent:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            agent = pool.GetAgent(pool_service_pb2.GetAgentRequest(agent_id=agent_id), timeout=2).agent
            seen = State.Name(agent.state)
            if agent.state == state:
                return agent
        except grpc.RpcError as exc:
            seen = exc.code().name
        time.sleep(0.1)
    raise AssertionError(f"{agent_id} never {State.Name(state)} (last {seen})")


def test_agents_register_with_inventory_and_a_killed_agent_loses_its_lease(stratum: Any, agents: Any) -> None:
    with security_harness.sync_channel(stratum.target) as channel:
        pool = pool_service_pb2_grpc.PoolServiceStub(channel)
        gpu_host = agents(stratum.target, "gpu-host", "--gpus", "2xA100:80G", "--label", "zone=a")
        agents(stratum.target, "t4-host", "--gpus", "T4")
        agent = wait_state(pool, "gpu-host", State.AGENT_STATE_READY)
        wait_state(pool, "t4-host", State.AGENT_STATE_READY)
        assert [g.model for g in agent.inventory.gpus] == ["A100", "A100"]
        assert agent.labels["zone"] == "a"
        assert agent.inventory.cpu_millis >= 1000

        listed = pool.ListAgents(pool_service_pb2.ListAgentsRequest(page_size=1))
        assert [a.agent_id for a in listed.agents] == ["gpu-host"]
        rest = pool.ListAgents(
            pool_service_pb2.ListAgentsRequest(page_size=1, page_token=listed.next_page_token)
        )
        assert [a.agent_id for a in rest.agents] == ["t4-host"] and rest.next_page_token == ""

        stats = pool.GetPoolStats(pool_service_pb2.GetPoolStatsRequest()).stats
        assert stats.total_gpus == 3 and stats.agents_ready == 2
        assert {(m.model, m.total) for m in stats.gpus_by_model} == {("A100", 2), ("T4", 1)}

        gpu_host.send_signal(signal.SIGKILL)
        gpu_host.wait()
        wait_state(pool, "gpu-host", State.AGENT_STATE_LOST, timeout=15)
        assert (
            pool.GetAgent(pool_service_pb2.GetAgentRequest(agent_id="t4-host")).agent.state
            == State.AGENT_STATE_READY
        )

        # The same host coming back is READY again.
        agents(stratum.target, "gpu-host", "--gpus", "2xA100:80G")
        wait_state(pool, "gpu-host", State.AGENT_STATE_READY)


def test_cordon_and_drain_survive_reconnects(stratum: Any, agents: Any) -> None:
    with security_harness.sync_channel(stratum.target) as channel:
        pool = pool_service_pb2_grpc.PoolServiceStub(channel)
        first = agents(stratum.target, "host-c")
        wait_state(pool, "host-c", State.AGENT_STATE_READY)
        cordoned = pool.CordonAgent(
            pool_service_pb2.CordonAgentRequest(request_id="r1", agent_id="host-c")
        ).agent
        assert cordoned.state == State.AGENT_STATE_CORDONED
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
        agents(stratum.target, "host-c")
        time.sleep(1.0)
        assert (
            pool.GetAgent(pool_service_pb2.GetAgentRequest(agent_id="host-c")).agent.state
            == State.AGENT_STATE_CORDONED
        )
        drained = pool.DrainAgent(
            pool_service_pb2.DrainAgentRequest(request_id="r2", agent_id="host-c")
        ).agent
        assert drained.state == State.AGENT_STATE_DRAINING
        ready = pool.UncordonAgent(
            pool_service_pb2.UncordonAgentRequest(request_id="r3", agent_id="host-c")
        ).agent
        assert ready.state == State.AGENT_STATE_READY


def test_errors_carry_status_code_reason_and_field(stratum: Any) -> None:
    with security_harness.sync_channel(stratum.target) as channel:
        pool = pool_service_pb2_grpc.PoolServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            pool.GetAgent(pool_service_pb2.GetAgentRequest(agent_id="nobody"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        info, _ = rpc_errors.details_of(missing.value)
        assert info is not None
        assert (info.reason, info.domain, info.metadata["agent_id"]) == (
            "ERROR_REASON_AGENT_NOT_FOUND", "cosmos.dev", "nobody",
        )  # fmt: skip

        with pytest.raises(grpc.RpcError) as empty:
            pool.CordonAgent(pool_service_pb2.CordonAgentRequest(request_id="r", agent_id=""))
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, violations = rpc_errors.details_of(empty.value)
        assert [v.field for v in violations] == ["agent_id"]

        with pytest.raises(grpc.RpcError) as bad_token:
            pool.ListAgents(pool_service_pb2.ListAgentsRequest(page_token="not-a-token"))
        info, violations = rpc_errors.details_of(bad_token.value)
        assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info is not None and info.reason == "ERROR_REASON_INVALID_PAGE_TOKEN"
        assert [v.field for v in violations] == ["page_token"]
