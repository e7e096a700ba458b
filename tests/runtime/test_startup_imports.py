"""What a process loads at start-up: every server a test starts, every job step and every CLI call
pays for its imports again (about a quarter of a server's start-up was aiohttp, which only its HTTP
endpoints need; a third of the CLI's was nats-py and the gRPC server, which it never needs; half of
a chunk job's was grpc, for the status codes of errors it never sends)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SERVER_SIDE = (
    "nats",
    "aiohttp",
    "cosmos.runtime.server",
    "cosmos.runtime.metrics",
    "cosmos.runtime.telemetry",
)
"""Loaded by the servers, never needed to call one."""


def loaded(module: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after importing ``module``."""
    probe = f"import sys, {module}\nprint(' '.join(m for m in {watched!r} if m in sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.parametrize("module", ["cosmos.cli.platform", "cosmos.cli.encode", "cosmos.cli.output"])
def test_a_platform_command_loads_nothing_of_the_server_side(module: str) -> None:
    assert loaded(module, SERVER_SIDE) == []


@pytest.mark.parametrize("module", ["cosmos.optimus.server", "cosmos.stratum.agent.main"])
def test_a_server_loads_its_http_stack_only_to_serve_http(module: str) -> None:
    # Optimus's webhook and every server's metrics endpoint import aiohttp when they start. (Plato
    # and Stratum load it anyway: nats-py imports it for its WebSocket transport.)
    assert loaded(module, ("aiohttp",)) == []


@pytest.mark.parametrize("module", ["cosmos.optimus.server", "cosmos.plato.server", "cosmos.stratum.server"])
def test_a_server_loads_the_tracing_sdk_only_to_export(module: str) -> None:
    # Without an exporter, spans are not recorded and only the API propagates context.
    assert loaded(module, ("opentelemetry.sdk", "opentelemetry.instrumentation.grpc")) == []


def test_a_chunk_job_loads_no_grpc() -> None:
    # Every chunk of an encode starts `python -m cosmos.optimus.media`; it raises Cosmos errors but
    # never answers an RPC, so their status codes are looked up in grpc only when read.
    assert loaded("cosmos.optimus.media.cli", ("grpc",)) == []
