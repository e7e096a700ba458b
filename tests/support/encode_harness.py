"""Encode tests' shared set-up: a test clip made by the media tool, and the embedded stack on free ports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cosmos.runtime.config import free_port
from cosmos.stack.embedded import EmbeddedStack, StackConfig


def make_clip(path: Path, *, seconds: int, size: str, fps: int = 24) -> Path:
    """A synthetic clip with audio at ``path`` (``cosmos.optimus.media make-test-clip``)."""
    done = subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", "make-test-clip", "--out", str(path),
         "--seconds", str(seconds), "--size", size, "--fps", str(fps)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return path


def embedded_stack(data_dir: Path) -> EmbeddedStack:
    """The whole embedded stack (secure, with its local agent) on free ports, its data in ``data_dir``."""
    return EmbeddedStack(
        StackConfig(
            optimus_port=free_port(),
            plato_port=free_port(),
            stratum_port=free_port(),
            nats_port=free_port(),
            data_dir=data_dir,
            token_port_offset=0,
        )
    )
