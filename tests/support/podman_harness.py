"""Real podman for tests: whether it can run containers here, and the worker image (``make image``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build_worker_image.py"


def podman_unusable() -> str:
    """Why podman cannot run containers here ("" when it can)."""
    podman = shutil.which("podman")
    if podman is None:
        return "podman is not installed (as root on Debian, `make install` installs it)"
    done = subprocess.run([podman, "info"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"podman info fails: {done.stderr.strip()[-300:]}"
    return ""


def worker_image() -> str:
    """The worker image of this checkout, built by ``make image``'s script (cached by source hash);
    skips the test when it cannot be built here (no mmdebstrap), fails when the build fails."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(BUILD)], capture_output=True, text=True, check=False)
    if done.returncode == 2:
        pytest.skip(f"cannot build the worker image here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    print(f"worker image ready in {time.monotonic() - started:.1f}s: {done.stderr.strip()}")
    return done.stdout.strip()


def container_exists(name: str) -> bool:
    """Whether a container of that exact name exists (running or not)."""
    podman = shutil.which("podman")
    assert podman is not None
    done = subprocess.run(
        [podman, "ps", "-a", "-q", "--filter", f"name=^{name}$"], capture_output=True, text=True, check=True
    )
    return bool(done.stdout.strip())
