"""Plain-text tables for the benchmarks' terminal reports (first column left-aligned, the rest right)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def cell(value: object) -> str:
    """A value as a table cell: None is "-"."""
    return "-" if value is None else str(value)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], fmt: Callable[[object], str] = cell
) -> str:
    """``rows`` under ``headers``, a dashed rule between, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
