"""Shared fixtures: real NATS servers and real Cosmos server processes on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cosmos.runtime.config import Address, free_port
from cosmos.stack import natsd

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def wait_serving(
    target: str, service: str = "", timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until ``service`` at ``target`` answers SERVING (fail early if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
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


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A real NATS server with JetStream in a temporary store dir."""
    port = free_port()
    argv = natsd.nats_server_argv(Address("127.0.0.1", port), tmp_path / "nats")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    stop_process(proc)


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


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``cosmos <name> --listen 127.0.0.1:<free> <args>`` and wait until it is SERVING."""
    started: list[ServiceProcess] = []

    def start(name: str, *args: str, wait: bool = True) -> ServiceProcess:
        target = f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "cosmos.cli", name, "--listen", target, *args]
        service = ServiceProcess(argv, target, tmp_path / f"{name}-{len(started)}.log")
        started.append(service)
        if wait:
            try:
                wait_serving(target, proc=service.proc)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{service.output()}") from exc
        return service

    yield start
    for service in reversed(started):
        service.stop()
