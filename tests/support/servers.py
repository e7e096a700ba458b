"""Running Cosmos servers in tests: waiting for health, stopping politely."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import security_harness
from grpc_health.v1 import health_pb2, health_pb2_grpc


def wait_serving(
    target: str, service: str = "", timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until ``service`` at ``target`` answers SERVING (fail early if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    # gRPC waits a second before it reconnects after a refused connection: a server that starts
    # listening just after the first try would sit SERVING unseen for most of that second.
    quick = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
             ("grpc.max_reconnect_backoff_ms", 200)]  # fmt: skip
    with security_harness.sync_channel(target, options=quick) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"{target} not SERVING after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM, wait, SIGKILL if needed; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ServiceProcess:
    """A ``cosmos <service>`` process started by a test."""

    def __init__(self, argv: list[str], target: str, log: Path) -> None:
        self.target = target
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ})

    def stop(self) -> int:
        code = stop_process(self.proc)
        self._out.close()
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")
