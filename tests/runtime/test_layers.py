"""The layers hold (import-linter's contracts) and docs/architecture.md draws them as they are."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import layers_diagram  # noqa: E402


def test_the_import_contracts_hold() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") == 4, done.stdout


def test_components_fold_modules_and_contracts() -> None:
    assert layers_diagram.component("cosmos.plato.engine.machine") == "plato"
    assert layers_diagram.component("cosmos.plato.v1.engine_pb2") == "contracts"
    assert layers_diagram.component("cosmos.common.v1.access_pb2") == "contracts"
    assert layers_diagram.component("cosmos.errors") == "runtime"
    assert layers_diagram.component("cosmos") == ""


def test_the_diagram_shows_the_graph_and_is_current() -> None:
    found = layers_diagram.edges()
    assert ("sdk", "protocol") in found and ("plato", "protocol") in found
    assert ("plato", "sdk") not in found and ("sdk", "plato") not in found  # the loop is gone
    text = layers_diagram.DOC.read_text()
    assert layers_diagram.render(text, layers_diagram.mermaid(found)) == text, (
        "docs/architecture.md: the layers diagram is stale; run scripts/layers_diagram.py --write"
    )
