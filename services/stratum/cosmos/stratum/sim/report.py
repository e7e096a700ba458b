"""The simulator's report: the goals check and the plain-text table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cosmos.stratum.sim.replay import CHECKPOINTS, PolicyResult

UNALLOCATED_GOAL = 0.7
"""FGD should leave at most this fraction of best-fit's unallocated GPUs at saturation."""
THROUGHPUT_GOAL = 5000.0
"""FGD should place at least this many jobs per second."""


def goals(results: list[PolicyResult]) -> dict[str, Any]:
    """Whether FGD met its goals against best-fit (``None`` where a policy was not run)."""
    by_policy = {result.policy: result for result in results}
    fgd, best_fit = by_policy.get("fgd"), by_policy.get("best-fit")
    ratio = None
    if fgd is not None and best_fit is not None and best_fit.unallocated_gpus_end > 0:
        ratio = fgd.unallocated_gpus_end / best_fit.unallocated_gpus_end
    return {
        "unallocated_fgd_over_best_fit": ratio,
        "unallocated_goal": UNALLOCATED_GOAL,
        "unallocated_met": None if ratio is None else ratio <= UNALLOCATED_GOAL,
        "fgd_placements_per_second": None if fgd is None else fgd.placements_per_second,
        "throughput_goal": THROUGHPUT_GOAL,
        "throughput_met": None if fgd is None else fgd.placements_per_second >= THROUGHPUT_GOAL,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_table(report: dict[str, Any], results: list[PolicyResult]) -> str:
    """The human-readable report: header, one row per policy, definitions, goals."""
    cluster, params, trace = report["cluster"], report["params"], report["trace"]
    headers = [
        "policy",
        *(f"alloc@{p}%" for p in CHECKPOINTS),
        "unalloc GPUs@100%",
        "unalloc GPUs@end",
        "frag@80%",
        "frag@end",
        "failed",
        "placements/s",
    ]
    rows = [
        [
            result.policy,
            *(_pct(result.allocation_ratio.get(f"{p}%")) for p in CHECKPOINTS),
            _num(result.unallocated_gpus_at_100),
            _num(result.unallocated_gpus_end),
            _pct(result.fragmentation_ratio.get("80%")),
            _pct(result.fragmentation_ratio_end),
            f"{result.tasks_failed:,}",
            _num(result.placements_per_second, 0),
        ]
        for result in results
    ]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    end = max((result.arrived_workload for result in results), default=0.0)
    tasks = max((result.tasks_arrived for result in results), default=0)
    out = [
        f"Stratum scheduler simulator: {cluster['nodes']:,} nodes, {cluster['gpus']:,} GPUs; "
        f"{Path(trace['pods_file']).name} ({trace['pods']:,} tasks), inflated to {_pct(end)} "
        f"({tasks:,} tasks), seed {params['seed']}"
        + (f", limit {params['limit']:,}" if params["limit"] else ""),
        "",
        line(headers),
        line(["-" * w for w in widths]),
        *(line(row) for row in rows),
        "",
        "alloc@x%: allocated GPU / capacity when arrived GPU demand reaches x% of capacity; unalloc GPUs:",
        "capacity - allocated (GPUs) at 100% and at the end (saturation); frag: fragmented / idle GPU",
        "(paper's measure, trace's GPU task mix); failed: tasks that fit nowhere on arrival (dropped);",
        "placements/s: placed tasks / wall time spent in the scheduler (submit + schedule + cancel).",
    ]
    goal = report["goals"]
    if goal["unallocated_fgd_over_best_fit"] is not None:
        verdict = "met" if goal["unallocated_met"] else "NOT met"
        out.append(
            f"goal: FGD unallocated GPUs at saturation <= {goal['unallocated_goal']}x best-fit: "
            f"{goal['unallocated_fgd_over_best_fit']:.2f}x ({verdict})"
        )
    if goal["fgd_placements_per_second"] is not None:
        verdict = "met" if goal["throughput_met"] else "NOT met"
        out.append(
            f"goal: FGD >= {goal['throughput_goal']:,.0f} placements/s: "
            f"{goal['fgd_placements_per_second']:,.0f} ({verdict})"
        )
    return "\n".join(out) + "\n"
