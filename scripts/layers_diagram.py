"""The layers diagram of docs/architecture.md, drawn from the import graph (grimp, import-linter's).

Every module is folded into its component (``cosmos.plato.engine.machine`` -> ``plato``; the generated
``cosmos.*.v1`` modules and ``cosmos.common`` -> ``contracts``), and an edge is drawn wherever some
module of one component imports one of another. ``--write`` puts the Mermaid graph between the
markers in docs/architecture.md; without it, the script exits 1 when the document is stale
(tests/runtime/test_layers.py runs that check in ``make test``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grimp

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BEGIN = "<!-- layers:begin (scripts/layers_diagram.py --write) -->"
END = "<!-- layers:end -->"
LAYERS = {
    "clients": ("cli", "client", "sdk", "runners"),
    "services": ("stack", "optimus", "plato", "stratum", "console"),
    "runtime": ("protocol", "runtime", "security"),
    "contracts": ("contracts",),
}
"""Subgraphs top to bottom: what each layer holds."""


def component(module: str) -> str:
    """The component a module belongs to."""
    parts = module.split(".")
    if len(parts) < 2:
        return ""
    if parts[1] == "common" or (len(parts) > 2 and parts[2] == "v1"):
        return "contracts"
    if parts[1] == "errors":  # the one error tree, beside the runtime that maps it to statuses
        return "runtime"
    return parts[1]


def edges() -> set[tuple[str, str]]:
    """(importer, imported) between components, from every import in the ``cosmos`` namespace."""
    graph = grimp.build_graph("cosmos")
    found = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = component(module), component(imported)
            if a and b and a != b:
                found.add((a, b))
    return found


def mermaid(found: set[tuple[str, str]]) -> str:
    """The diagram as a Mermaid block (sorted, so the text only changes when the graph does)."""
    known = {c for pair in found for c in pair}
    lines = ["```mermaid", "flowchart TB"]
    for layer, members in LAYERS.items():
        lines.append(f"  subgraph {layer}")
        lines += [f"    {m}" for m in members if m in known]
        lines.append("  end")
    lines += [f"  {a} --> {b}" for a, b in sorted(found) if b != "contracts"]
    lines.append("```")
    return "\n".join(lines)


def render(text: str, diagram: str) -> str:
    """``text`` with the block between the markers replaced by ``diagram``."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{diagram}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/architecture.md")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    fresh = render(text, mermaid(edges()))
    if args.write:
        DOC.write_text(fresh)
        return 0
    if fresh != text:
        print("docs/architecture.md: the layers diagram is stale; run scripts/layers_diagram.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
