"""Shared fixtures: real NATS servers and real Cosmos server processes on free loopback ports; the
test layers (``unit`` in process, ``integration`` everything else, ``slow`` minutes long)."""

from __future__ import annotations

import collections
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import security_harness
from plato_harness import PlatoClient
from servers import ServiceProcess, stop_process, wait_serving
from stratum_harness import Agents

from cosmos.plato.v1 import workflow_service_pb2_grpc
from cosmos.runtime.config import Address, free_port
from cosmos.stack import natsd, seaweed


def _is_unit(item: pytest.Item) -> bool:
    """Marked ``unit``, by itself or its module, and not ``integration`` closer (a test of a unit
    module that needs a port or a process is marked ``integration`` itself)."""
    layer = next((m.name for m in item.iter_markers() if m.name in ("unit", "integration")), None)
    return layer == "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is in one layer: ``unit``, or else ``integration`` (``-m integration`` selects those).

    The workers of ``make test`` take whole files in this order, and a long file taken last leaves the
    others idle: files with a ``slow`` test go first, then the others by their number of integration
    tests (a rough measure of their time), the in-process ones last, to fill the end."""
    for item in items:
        if not _is_unit(item):
            item.add_marker(pytest.mark.integration)  # select unit tests with "unit and not integration"
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    integration = collections.Counter(item.path for item in items if item.get_closest_marker("integration"))
    # Stable: the order within a file is kept.
    items.sort(key=lambda item: (item.path not in slow_files, -integration[item.path]))


class OutOfProcess(AssertionError):
    """A ``unit`` test tried to reach outside its process."""


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``unit`` test starts no process, opens no connection and serves no port: what makes the unit
    layer fast and runnable anywhere. A test that needs any of it is an integration test."""
    if not _is_unit(request.node):
        return

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise OutOfProcess(
                f"a unit test may not {what}: drop its `unit` mark (it is an integration test)"
            )

        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a process"))
    monkeypatch.setattr(socket.socket, "connect", refuse("open a connection"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("open a connection"))
    monkeypatch.setattr(socket.socket, "bind", refuse("serve a port"))
    monkeypatch.setattr(grpc.aio, "server", refuse("serve gRPC"))
    monkeypatch.setattr(grpc.aio, "secure_channel", refuse("open a gRPC channel"))
    monkeypatch.setattr(grpc.aio, "insecure_channel", refuse("open a gRPC channel"))


def _start_nats(argv: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc


@pytest.fixture(autouse=True)
def stopped_last() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test's others depend on (NATS), stopped once every other fixture has stopped its
    own: services stop as in production, with NATS still up, whatever order a test names its fixtures
    in (without it, a test naming ``start_service`` before ``nats_url`` stopped NATS first, and every
    service then stopped against a NATS that was gone)."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in reversed(procs):
        stop_process(proc)


@pytest.fixture
def nats_url(tmp_path: Path, stopped_last: list[subprocess.Popen[bytes]]) -> str:
    """A real, locked-down NATS server with JetStream in a temporary store dir (see
    :func:`security_harness.nats_argv`: clients connect with :func:`security_harness.nats_options`)."""
    port = free_port()
    argv = security_harness.nats_argv(Address("127.0.0.1", port), tmp_path / "nats")
    stopped_last.append(_start_nats(argv, port))
    return f"nats://127.0.0.1:{port}"


@pytest.fixture
def insecure_nats_url(tmp_path: Path, stopped_last: list[subprocess.Popen[bytes]]) -> str:
    """The open NATS server of ``--insecure`` stacks (plaintext, anonymous), for tests of NATS clients
    that are not about security."""
    port = free_port()
    argv = natsd.nats_server_argv(Address("127.0.0.1", port), tmp_path / "nats-open")
    stopped_last.append(_start_nats(argv, port))
    return f"nats://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def shared_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One open NATS server for the whole session (for each xdist worker), shared by the tests of NATS
    clients that name their own streams and buckets, each under its :func:`nats_prefix`.

    Tests of Plato and Stratum keep a server each (``nats_url``): the streams, buckets and subjects
    they use are protocol constants, the same in every test. (A server start costs about 50 ms.)"""
    port = free_port()
    argv = natsd.nats_server_argv(Address("127.0.0.1", port), tmp_path_factory.mktemp("shared-nats"))
    proc = _start_nats(argv, port)
    yield f"nats://127.0.0.1:{port}"
    stop_process(proc)


@pytest.fixture
def nats_prefix() -> str:
    """A name no other test of the session starts with: for the streams, buckets and subjects a test
    makes on :func:`shared_nats_url` (a NATS name token: letters and digits)."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    """``cosmos agent`` processes a test starts (each with its certificate); stopped at the end."""
    started = Agents(tmp_path)
    yield started
    started.stop_all()


def _service_starter(log_dir: Path, started: list[ServiceProcess]) -> Callable[..., ServiceProcess]:
    def start(name: str, *args: str, wait: bool = True) -> ServiceProcess:
        target = f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "cosmos.cli", name, "--listen", target,
                *security_harness.service_args(name), *args]  # fmt: skip
        service = ServiceProcess(argv, target, log_dir / f"{name}-{len(started)}.log")
        started.append(service)
        if wait:
            try:
                wait_serving(target, proc=service.proc)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{service.output()}") from exc
        return service

    return start


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``cosmos <name> --listen 127.0.0.1:<free> <args>`` and wait until it is SERVING."""
    started: list[ServiceProcess] = []
    yield _service_starter(tmp_path, started)
    for service in reversed(started):
        service.stop()


@pytest.fixture(scope="module")
def module_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like :func:`nats_url`, one for a whole test module: for the servers of
    :func:`module_start_service` (stopped after them)."""
    port = free_port()
    argv = security_harness.nats_argv(Address("127.0.0.1", port), tmp_path_factory.mktemp("nats"))
    proc = _start_nats(argv, port)
    yield f"nats://127.0.0.1:{port}"
    stop_process(proc)


@pytest.fixture(scope="module")
def module_start_service(
    tmp_path_factory: pytest.TempPathFactory, module_nats_url: str
) -> Iterator[Callable[..., ServiceProcess]]:
    """Like :func:`start_service`, for servers a whole module's tests share: tests that leave nothing
    behind another could see (refusals, reads), where a stack per test would only cost its start-up."""
    started: list[ServiceProcess] = []
    yield _service_starter(tmp_path_factory.mktemp("services"), started)
    for service in reversed(started):
        service.stop()


@pytest.fixture
async def plato(start_service: Callable[..., ServiceProcess], nats_url: str) -> AsyncIterator[PlatoClient]:
    """A real Plato server (``cosmos plato``) on the test's NATS, and a client of it."""
    service = start_service("plato", "--nats", nats_url)
    async with security_harness.channel(service.target) as channel:
        yield PlatoClient(
            service.target, nats_url, channel, workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        )


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[seaweed.S3Server]:
    """A real SeaweedFS S3 gateway (authentication on, bucket ``cosmos`` created) on free ports."""
    with seaweed.standalone(tmp_path / "seaweed") as server:
        yield server
