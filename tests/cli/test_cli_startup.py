"""The CLI's platform commands start light: a ``cosmos workflows list`` loads the gRPC client and the
contracts, never the server side (nats-py and the aiohttp it loads, the gRPC server, telemetry,
metrics), which once tripled its start-up (0.48 s to 0.17 s on the development machine)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Loaded by the servers, never needed to call one.
SERVER_SIDE = (
    "nats",
    "aiohttp",
    "cosmos.runtime.server",
    "cosmos.runtime.metrics",
    "cosmos.runtime.telemetry",
)


@pytest.mark.parametrize("module", ["cosmos.cli.platform", "cosmos.cli.encode", "cosmos.cli.output"])
def test_a_platform_command_loads_nothing_of_the_server_side(module: str) -> None:
    probe = f"import sys, {module}\nprint(' '.join(m for m in {SERVER_SIDE!r} if m in sys.modules))\n"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == [], f"{module} loads {loaded.stdout.strip()}"
