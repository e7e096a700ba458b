"""The Protobuf contracts pass buf's build, lint (STANDARD + COMMENTS) and format checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), f"buf not found at {BUF}; install the buf-bin dev dependency"
    return subprocess.run(
        [str(BUF), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("build",), id="build"),
        pytest.param(("lint",), id="lint"),
        pytest.param(("format", "--diff", "--exit-code"), id="format"),
    ],
)
def test_buf(args: tuple[str, ...]) -> None:
    result = _buf(*args)
    assert result.returncode == 0, f"buf {' '.join(args)} failed:\n{result.stdout}{result.stderr}"


def test_lint_config_has_no_ignores_for_our_module() -> None:
    config = (REPO_ROOT / "buf.yaml").read_text()
    assert "STANDARD" in config and "COMMENTS" in config
    assert "protos/cosmos" not in config, "our own protos must not be lint-ignored"
