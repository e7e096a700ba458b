"""The ``unit`` layer holds: tests/conftest.py refuses a unit test every way out of its process."""

from __future__ import annotations

import socket
import subprocess

import grpc
import pytest

pytestmark = pytest.mark.unit


def test_a_unit_test_starts_no_process() -> None:
    with pytest.raises(AssertionError, match="a unit test may not start a process"):
        subprocess.run(["true"], check=True)


def test_a_unit_test_serves_no_port_and_opens_no_connection() -> None:
    with socket.socket() as sock:
        with pytest.raises(AssertionError, match="may not serve a port"):
            sock.bind(("127.0.0.1", 0))
        with pytest.raises(AssertionError, match="may not open a connection"):
            sock.connect(("127.0.0.1", 9))
    with pytest.raises(AssertionError, match="may not open a gRPC channel"):
        grpc.aio.insecure_channel("127.0.0.1:9")


@pytest.mark.integration
def test_an_integration_test_of_a_unit_module_may() -> None:
    assert subprocess.run(["true"], check=True).returncode == 0
