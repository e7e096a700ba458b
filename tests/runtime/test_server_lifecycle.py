"""The shared server runtime as a real process: health, graceful SIGTERM, port conflicts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import security_harness
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cosmos.plato.v1 import workflow_service_pb2, workflow_service_pb2_grpc

SLOW_SERVER = Path(__file__).with_name("slow_server.py")


def start_slow(delay: float, grace: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(SLOW_SERVER), str(delay), str(grace), str(security_harness.pki_dir())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT "), f"no port line: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    return proc, f"127.0.0.1:{line.split()[1]}"


def test_sigterm_lets_in_flight_call_finish_turns_not_serving_and_exits_0() -> None:
    proc, target = start_slow(delay=2.0, grace=10.0)
    try:
        with security_harness.sync_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert (
                health.Check(health_pb2.HealthCheckRequest(service="")).status
                == health_pb2.HealthCheckResponse.SERVING
            )
            statuses: list[int] = []
            watch = health.Watch(health_pb2.HealthCheckRequest(service="cosmos.plato.v1.WorkflowService"))

            def follow() -> None:
                try:
                    for reply in watch:
                        statuses.append(reply.status)
                except grpc.RpcError:
                    pass

            watcher = threading.Thread(target=follow, daemon=True)
            watcher.start()

            stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
            slow = stub.GetWorkflow.future(
                workflow_service_pb2.GetWorkflowRequest(workflow_id="wf-slow"), timeout=30
            )
            time.sleep(0.5)  # the call is now in flight on the server
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)

            reply = slow.result()
            assert reply.workflow.workflow_id == "wf-slow"
            assert time.monotonic() - started >= 1.0, "the call was answered before its work was done"
            watcher.join(timeout=15)
            assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses, statuses
            assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_unimplemented_methods_answer_unimplemented() -> None:
    proc, target = start_slow(delay=0.0, grace=1.0)
    try:
        with security_harness.sync_channel(target) as channel:
            stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            # The server is unharmed by it.
            assert (
                stub.GetWorkflow(
                    workflow_service_pb2.GetWorkflowRequest(workflow_id="x"), timeout=5
                ).workflow.workflow_id
                == "x"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_port_in_use_is_a_clear_error(start_service: Callable[..., Any]) -> None:
    first = start_service("optimus")
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "cosmos.cli",
            "optimus",
            "--listen",
            first.target,
            *security_harness.service_args("optimus"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2, second.stderr
    assert f"{first.target} is already in use" in second.stderr
    assert "--listen" in second.stderr


def test_tracing_follows_the_standard_otel_variables() -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "slow-under-test"}
    proc = subprocess.Popen(
        [sys.executable, str(SLOW_SERVER), "0", "1", str(security_harness.pki_dir())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    target = f"127.0.0.1:{proc.stdout.readline().split()[1]}"
    with security_harness.sync_channel(target) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        stub.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(workflow_id="traced"), timeout=5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert '"name": "/cosmos.plato.v1.WorkflowService/GetWorkflow"' in out
    assert '"service.name": "slow-under-test"' in out
