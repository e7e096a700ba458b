"""The Prometheus scrape config and the Grafana dashboard in deploy/: they parse, the scrape config
finds exactly the Cosmos pods' ``metrics`` ports, the dashboard queries only metrics the code exports,
and docs/metrics.md lists every one of them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics_core import Metric

# Every module that declares metrics: importing them registers them on the process registry.
from cosmos.optimus import metrics as optimus_metrics
from cosmos.plato import metrics as plato_metrics
from cosmos.runtime import metrics
from cosmos.stratum import metrics as stratum_metrics
from cosmos.stratum.agent import metrics as agent_metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "cosmos-dashboard.json"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RBAC = DEPLOY / "prometheus" / "rbac.yaml"
DOC = REPO / "docs" / "metrics.md"
MODULES = (optimus_metrics, plato_metrics, stratum_metrics, agent_metrics)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def cosmos_families() -> dict[str, Metric]:
    """Every ``cosmos_*`` family of the registry, by its name."""
    assert all(m.REGISTRY is metrics.REGISTRY for m in MODULES)
    return {f.name: f for f in metrics.REGISTRY.collect() if f.name.startswith("cosmos_")}


def exported_series() -> dict[str, str]:
    """Series name (what a query names) -> family, for every ``cosmos_*`` family."""
    names: dict[str, str] = {}
    for family in cosmos_families().values():
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = family.name
    return names


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_the_dashboard_is_grafana_json_querying_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert "datasource" in names
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    exported = exported_series()
    queried: set[str] = set()
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            for name in re.findall(r"\b(cosmos_[a-z0-9_]+)", expr):
                assert name in exported, f"{panel['title']!r} queries {name}, which nothing exports"
                queried.add(exported[name])
    # The dashboard shows every family (a metric nobody looks at is one nobody needs).
    assert set(cosmos_families()) - queried == set()


def test_the_dashboard_shows_what_issue_14_asks_for() -> None:
    text = DASHBOARD.read_text()
    for wanted in (
        "cosmos_rpc_requests_total",  # rate and errors
        "cosmos_rpc_duration_seconds_bucket",  # latency
        "cosmos_plato_workflows_total",
        "cosmos_plato_steps_total",
        "cosmos_plato_step_duration_seconds_bucket",
        "cosmos_stratum_queue_depth",
        "cosmos_stratum_queue_oldest_age_seconds",
        "cosmos_stratum_placements_total",
        'cosmos_stratum_gpus{state=\\"allocated\\"}',
        "cosmos_stratum_gpu_fragmentation_ratio",
        "cosmos_stratum_agents",
        "cosmos_stratum_job_progress_ratio",
        "cosmos_nats_consumer_pending",
    ):
        assert wanted in text, wanted


def test_docs_list_every_metric_with_its_labels() -> None:
    doc = DOC.read_text()
    for name, family in cosmos_families().items():
        shown = name + "_total" if family.type == "counter" else name
        assert f"`{shown}`" in doc, f"docs/metrics.md does not list {shown}"
    # Labels: the row of each metric names them.
    rows = {line.split("`")[1]: line for line in doc.splitlines() if line.startswith("| `cosmos_")}
    for collector in list(metrics.REGISTRY._collector_to_names):  # the declared label names
        labelnames = getattr(collector, "_labelnames", ())
        name = getattr(collector, "_name", "")
        if not name.startswith("cosmos_") or name.startswith("cosmos_test"):
            continue
        kind = getattr(collector, "_type", "")
        shown = name + "_total" if kind == "counter" else name
        for label in labelnames:
            assert f"`{label}`" in rows[shown], f"docs/metrics.md: {shown} does not name its label {label}"
    assert "docs/metrics.md" in (REPO / "README.md").read_text()


def test_the_scrape_config_keeps_the_cosmos_pods_metrics_ports() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "cosmos"]
    assert job.get("metrics_path", "/metrics") == metrics.PATH
    assert job.get("scheme", "http") == "http"
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and sd["namespaces"]["names"] == ["cosmos"]
    keeps = {
        tuple(rule["source_labels"]): rule["regex"]
        for rule in job["relabel_configs"]
        if rule.get("action") == "keep"
    }
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == "metrics"
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_part_of",)] == "cosmos"
    targets = {rule.get("target_label") for rule in job["relabel_configs"]}
    # Never a label the metrics carry themselves (it would be renamed exported_<label>).
    carried = {"service", "method", "code", "state", "definition", "step", "job_id", "agent_id", "model",
               "queue", "stream", "consumer", "outcome"}  # fmt: skip
    assert {"component", "pod"} <= targets and not targets & carried


def test_the_discovery_rbac_validates_and_grants_only_reading_pods() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(RBAC)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    role = next(d for d in yaml.safe_load_all(RBAC.read_text()) if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == "cosmos"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
