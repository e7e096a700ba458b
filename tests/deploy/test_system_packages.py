"""scripts/install-system-packages.sh, which `make install` runs: a no-op when everything is there
(fast and silent: it runs on every `make install`), and nothing at all for a user who is not root."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-system-packages.sh"
PACKAGES = ("podman", "runc", "catatonit", "mmdebstrap", "uidmap")


def installed(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return done.stdout == "install ok installed"


def test_it_does_nothing_quickly_when_the_packages_are_installed() -> None:
    if os.geteuid() != 0 or shutil.which("dpkg-query") is None:
        pytest.skip("needs root on Debian (dpkg), where the script installs packages")
    if not all(installed(p) for p in PACKAGES):
        pytest.skip(f"not all of {', '.join(PACKAGES)} are installed here (make install installs them)")
    started = time.monotonic()
    done = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""
    assert time.monotonic() - started < 5


def test_it_leaves_a_non_root_user_alone(tmp_path: Path) -> None:
    # As if not root: `id -u` answers 1000, and apt-get would record any call.
    calls = tmp_path / "calls"
    for name, body in (
        ("id", "echo 1000"),
        ("apt-get", f"echo apt-get >> {calls}"),
        ("dpkg-query", "exit 1"),
    ):
        exe = tmp_path / name
        exe.write_text(f"#!/bin/sh\n{body}\n")
        exe.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert not calls.exists()
