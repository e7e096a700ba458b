"""``python -m cosmos.stratum.sim``: replay the Alibaba GPU trace through the Stratum scheduler."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cosmos.stratum.scheduling import Policy
from cosmos.stratum.sim.replay import reference_mix, replay
from cosmos.stratum.sim.report import goals, render_table
from cosmos.stratum.sim.trace import DEFAULT_NODES, DEFAULT_PODS, find_trace_dir, load_nodes, load_pods


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cosmos.stratum.sim",
        description="Replay a GPU cluster trace, inflated past capacity, through the real scheduler.",
    )
    parser.add_argument(
        "--trace-dir", type=Path, help="trace folder (default: $COSMOS_TRACE_DIR or ../shared/...)"
    )
    parser.add_argument(
        "--nodes-file", default=DEFAULT_NODES, help=f"node list in the trace dir ({DEFAULT_NODES})"
    )
    parser.add_argument(
        "--pods", default=DEFAULT_PODS, help=f"pod list in the trace dir or a path ({DEFAULT_PODS})"
    )
    parser.add_argument(
        "--policies",
        default=",".join(p.value for p in Policy),
        help="comma-separated policies (default: all of fgd,best-fit,first-fit)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the inflation resampling (42)")
    parser.add_argument(
        "--inflation",
        type=float,
        default=1.3,
        help="stop when arrived GPU demand reaches this x capacity (1.3)",
    )
    parser.add_argument("--limit", type=int, help="replay at most this many tasks (quick runs)")
    parser.add_argument(
        "--nodes", type=int, help="use an evenly spaced sample of this many nodes (quick runs)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    try:
        args.policies = [Policy(name.strip()).value for name in args.policies.split(",") if name.strip()]
    except ValueError as exc:
        parser.error(f"--policies: {exc}; choose from {', '.join(p.value for p in Policy)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    trace_dir: Path = args.trace_dir or find_trace_dir()
    pods_path = Path(args.pods)
    if not pods_path.is_file():
        pods_path = trace_dir / args.pods
    pods = load_pods(pods_path)
    nodes_path = trace_dir / args.nodes_file
    mix = reference_mix(pods)
    results = []
    cluster = load_nodes(nodes_path, sample=args.nodes)
    for policy in args.policies:
        nodes = load_nodes(nodes_path, sample=args.nodes)
        results.append(
            replay(nodes, pods, policy, inflation=args.inflation, seed=args.seed, limit=args.limit, mix=mix)
        )
    report = {
        "trace": {"nodes_file": str(nodes_path), "pods_file": str(pods_path), "pods": len(pods)},
        "cluster": {
            "nodes": len(cluster),
            "gpus": sum(len(node.gpus) for node in cluster),
            "cpu_milli": sum(node.cpu_milli for node in cluster),
        },
        "params": {
            "policies": args.policies,
            "seed": args.seed,
            "inflation": args.inflation,
            "limit": args.limit,
            "node_sample": args.nodes,
        },
        "policies": {result.policy: result.as_json() for result in results},
        "goals": goals(results),
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(report, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
