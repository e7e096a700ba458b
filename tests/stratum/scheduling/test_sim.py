"""The trace-driven simulator on a small sample of the shipped Alibaba trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from cosmos.stratum.sim.__main__ import main
from cosmos.stratum.sim.trace import DEFAULT_PODS, TRACE_ENV, find_trace_dir, load_nodes, load_pods

pytestmark = pytest.mark.unit

POLICY_KEYS = {
    "policy",
    "tasks_arrived",
    "tasks_placed",
    "tasks_failed",
    "failed_gpu_demand",
    "arrived_workload",
    "allocation_ratio",
    "allocation_ratio_end",
    "unallocated_gpus_at_100",
    "unallocated_gpus_end",
    "fragmentation_ratio",
    "fragmentation_ratio_end",
    "scheduler_seconds",
    "placements_per_second",
    "decisions_per_second",
}


def test_trace_is_found_and_read() -> None:
    trace = find_trace_dir()
    nodes = load_nodes(trace / "openb_node_list_gpu_node.csv")
    assert len(nodes) == 1213 and sum(len(n.gpus) for n in nodes) == 6212
    sample = load_nodes(trace / "openb_node_list_gpu_node.csv", sample=100)
    assert len(sample) == 100 and len({n.gpus[0].model for n in sample}) > 3  # keeps the model mix
    pods = load_pods(trace / DEFAULT_PODS)
    assert len(pods) == 8152
    assert all(a.creation_time <= b.creation_time for a, b in pairwise(pods))


def test_json_report_on_a_sampled_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "80", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"trace", "cluster", "params", "policies", "goals"}
    assert report["cluster"]["nodes"] == 80
    assert set(report["policies"]) == {"fgd", "fgd-paper", "best-fit", "first-fit"}
    for result in report["policies"].values():
        assert set(result) == POLICY_KEYS
        assert (
            set(result["allocation_ratio"])
            == set(result["fragmentation_ratio"])
            == {"50%", "80%", "100%", "120%"}
        )
        assert result["arrived_workload"] >= 1.3
        # Early on everything fits; at saturation some GPUs stay unallocated and tasks fail.
        assert result["allocation_ratio"]["50%"] == pytest.approx(0.5, abs=0.02)
        assert 0.8 < result["allocation_ratio_end"] < 1.0
        assert result["unallocated_gpus_end"] > 0 and result["tasks_failed"] > 0
        assert 0 < result["fragmentation_ratio_end"] <= 1
        assert result["placements_per_second"] > 0
    fgd, best_fit = report["policies"]["fgd"], report["policies"]["best-fit"]
    assert fgd["unallocated_gpus_end"] < best_fit["unallocated_gpus_end"]
    goals = report["goals"]
    assert goals["unallocated_fgd_over_best_fit"] == pytest.approx(
        fgd["unallocated_gpus_end"] / best_fit["unallocated_gpus_end"]
    )
    assert set(goals) >= {"unallocated_met", "throughput_met", "fgd_placements_per_second"}


@pytest.mark.integration  # out of process (a port, a process or a connection)
def test_table_from_the_command_line(tmp_path: Path) -> None:
    env = {**os.environ, TRACE_ENV: str(find_trace_dir())}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cosmos.stratum.sim",
            "--nodes",
            "40",
            "--limit",
            "150",
            "--policies",
            "fgd,best-fit",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # the trace is found through the environment, not the working directory
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "40 nodes" in lines[0] and "limit 150" in lines[0]
    header = next(line for line in lines if line.startswith("policy"))
    for column in ("alloc@50%", "alloc@120%", "unalloc GPUs@end", "frag@end", "failed", "placements/s"):
        assert column in header
    rows = [line.split()[0] for line in lines if line.startswith(("fgd ", "best-fit "))]
    assert rows == ["fgd", "best-fit"]
    assert any(line.startswith("goal: FGD unallocated") for line in lines)


def test_limit_and_bad_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "40", "--limit", "100", "--policies", "first-fit", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["policies"]["first-fit"]
    assert result["tasks_arrived"] == 100
    assert result["allocation_ratio"]["120%"] is None  # stopped before that much arrived
    with pytest.raises(SystemExit) as exit_info:
        main(["--policies", "worst-fit"])
    assert exit_info.value.code == 2
