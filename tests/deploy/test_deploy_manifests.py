"""The production manifests under ``deploy/``: they parse, cannot drift from the CLI, and they run.

- every Kubernetes document parses and ``kustomization.yaml`` lists exactly the files present;
- every ``cosmos`` container uses only flags and ``COSMOS_*`` variables its subcommand has, with values
  the CLI accepts, and overrides every loopback default (a pod must not dial 127.0.0.1);
- probes, Services and address wiring point at ports the containers really listen on;
- the NATS cluster configs form a real 3-node JetStream cluster that holds an R3 stream;
- the Cosmos servers, started from their manifests' own args and env (Kubernetes addresses mapped to
  loopback), become SERVING on their probes' ports against that cluster, and the agent registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
import yaml
from servers import wait_serving

from cosmos.runtime.config import free_port
from cosmos.stratum.v1 import agent_pb2, pool_service_pb2, pool_service_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
NATS_CONFIGS = DEPLOY / "nats"
NATS_SERVER = Path(sys.executable).parent / "nats-server"

SUBCOMMANDS = {"optimus", "plato", "stratum", "agent"}
SERVERS = {"optimus", "plato", "stratum"}
COSMOS_IMAGES = {"cosmos", "cosmos-gpu"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
CLUSTER_SCOPED = {"Namespace", "RuntimeClass", "ClusterRole", "ClusterRoleBinding", "StorageClass"}
NAMESPACE = "cosmos"
DEFAULT_GRACE_PERIOD = 10.0
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")

Doc = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Reading the manifests


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.iterdir() if p.suffix in {".yaml", ".yml"})


def load_docs() -> list[tuple[str, Doc]]:
    """``(file name, document)`` for every non-empty YAML document except the kustomization."""
    docs: list[tuple[str, Doc]] = []
    for path in yaml_files():
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


@dataclass(frozen=True)
class Container:
    """One container of a workload in the manifests."""

    file: str
    workload: Doc
    spec: Doc

    @property
    def pod(self) -> Doc:
        pod: Doc = self.workload["spec"]["template"]["spec"]
        return pod

    @property
    def id(self) -> str:
        return f"{self.file}:{self.workload['kind']}/{self.workload['metadata']['name']}/{self.spec['name']}"

    @property
    def tokens(self) -> list[str]:
        return [str(t) for t in [*self.spec.get("command", []), *self.spec.get("args", [])]]

    @property
    def image_name(self) -> str:
        image = str(self.spec.get("image", "")).split("@", 1)[0]
        return image.rsplit("/", 1)[-1].split(":", 1)[0]

    def cosmos_invocation(self) -> tuple[str, list[str]] | None:
        """``(subcommand, rest of argv)`` when the container runs ``cosmos`` (command or image entrypoint)."""
        command = [str(t) for t in self.spec.get("command", [])]
        args = [str(t) for t in self.spec.get("args", [])]
        if command:
            if Path(command[0]).name != "cosmos":
                return None
            argv = [*command[1:], *args]
        elif self.image_name in COSMOS_IMAGES:
            argv = args  # the image's ENTRYPOINT is ["cosmos"]
        else:
            return None
        assert argv, f"{self.id}: runs cosmos without a subcommand"
        return argv[0], argv[1:]

    @property
    def subcommand(self) -> str:
        invocation = self.cosmos_invocation()
        assert invocation is not None
        return invocation[0]

    def env(self) -> dict[str, Doc]:
        return {str(e["name"]): e for e in self.spec.get("env", [])}

    def literal_env(self) -> dict[str, str]:
        """Variables with a literal ``value`` (what ``env:`` sets without the downward API)."""
        return {name: str(e["value"]) for name, e in self.env().items() if "value" in e}

    def env_from_configmaps(self, configmaps: dict[str, Doc]) -> dict[str, str]:
        values: dict[str, str] = {}
        for source in self.spec.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref is not None and ref["name"] in configmaps:
                values.update({k: str(v) for k, v in (configmaps[ref["name"]].get("data") or {}).items()})
        return values

    def option(self, flag: str) -> str | None:
        """Value of ``--flag VALUE`` / ``--flag=VALUE`` in the argv, else of its ``COSMOS_*`` variable."""
        invocation = self.cosmos_invocation()
        assert invocation is not None
        sub, argv = invocation
        for i, token in enumerate(argv):
            if token == flag and i + 1 < len(argv):
                return argv[i + 1]
            if token.startswith(flag + "="):
                return token.split("=", 1)[1]
        return self.literal_env().get(f"COSMOS_{sub}_{flag.lstrip('-')}".upper().replace("-", "_"))

    def port_number(self, port: int | str) -> int:
        """A probe's or Service's port (number or container port name) as a number this container declares."""
        declared = {str(p.get("name", "")): int(p["containerPort"]) for p in self.spec.get("ports", [])}
        if isinstance(port, str) and not port.isdigit():
            assert port in declared, f"{self.id}: port name {port!r} not among {declared}"
            return declared[port]
        assert int(port) in declared.values(), f"{self.id}: port {port} not declared ({declared})"
        return int(port)


def workloads(docs: list[tuple[str, Doc]]) -> list[tuple[str, Doc]]:
    return [(f, d) for f, d in docs if d["kind"] in WORKLOAD_KINDS]


def containers(docs: list[tuple[str, Doc]]) -> list[Container]:
    found = []
    for file, doc in workloads(docs):
        pod = doc["spec"]["template"]["spec"]
        for spec in [*pod.get("initContainers", []), *pod["containers"]]:
            found.append(Container(file, doc, spec))
    return found


def configmaps(docs: list[tuple[str, Doc]]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "ConfigMap"}


def services(docs: list[tuple[str, Doc]]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Service"}


def selected_workload(docs: list[tuple[str, Doc]], service: Doc) -> Doc:
    """The one workload whose pod labels match the Service's selector."""
    selector = service["spec"]["selector"]
    matches = [
        d
        for _, d in workloads(docs)
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(matches) == 1, f"Service {service['metadata']['name']} selects {len(matches)} workloads"
    return matches[0]


def find(docs: list[tuple[str, Doc]], kind: str, name: str) -> Doc:
    for _, doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name} in deploy/kubernetes")


DOCS = load_docs()
CONTAINERS = containers(DOCS)
COSMOS_CONTAINERS = [c for c in CONTAINERS if c.cosmos_invocation() is not None]


def cosmos_ids(container: Container) -> str:
    return container.id


@functools.cache
def cli_help(subcommand: str, env_items: tuple[tuple[str, str], ...] = ()) -> str:
    """``cosmos SUBCOMMAND --help`` (unwrapped), with ``env_items`` set on top of a COSMOS_*-free env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_")}
    env.update({"COLUMNS": "1000", **dict(env_items)})
    result = subprocess.run(
        [sys.executable, "-m", "cosmos.cli", subcommand, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"cosmos {subcommand} --help: {result.returncode}\n{result.stderr}"
    return result.stdout


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


# --------------------------------------------------------------------------------------------------
# (a) the manifests parse; the kustomization lists exactly the files present


def test_every_kubernetes_document_parses_and_is_well_formed() -> None:
    assert DOCS, "no manifests under deploy/kubernetes"
    seen: set[tuple[str, str]] = set()
    for file, doc in DOCS:
        assert isinstance(doc, dict), f"{file}: a document is not a mapping"
        assert doc.get("apiVersion") and doc.get("kind"), f"{file}: document without apiVersion/kind"
        name = doc.get("metadata", {}).get("name")
        assert name, f"{file}: {doc['kind']} without metadata.name"
        key = (doc["kind"], name)
        assert key not in seen, f"{file}: duplicate {key}"
        seen.add(key)
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{file}: {key} not in {NAMESPACE}"
    assert ("Namespace", NAMESPACE) in seen


def test_kustomization_lists_exactly_the_files_present() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == NAMESPACE
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    present = {p.name for p in yaml_files()} - {"kustomization.yaml"}
    assert set(resources) == present
    assert {p.name for p in K8S.iterdir()} == present | {"kustomization.yaml"}, "non-manifest files"
    # Every cosmos image the manifests use can be re-pointed at a registry by the kustomization.
    assert {i["name"] for i in kustomization["images"]} == {c.image_name for c in COSMOS_CONTAINERS}


# --------------------------------------------------------------------------------------------------
# (b) manifests cannot drift from the CLI


def test_every_subcommand_is_deployed() -> None:
    assert {c.subcommand for c in COSMOS_CONTAINERS} == SUBCOMMANDS
    for container in CONTAINERS:
        if container.image_name in COSMOS_IMAGES:
            assert container.cosmos_invocation() is not None, f"{container.id}: cosmos image, no cosmos"


@pytest.mark.parametrize("container", COSMOS_CONTAINERS, ids=cosmos_ids)
def test_flags_and_environment_exist_in_the_subcommand_help(container: Container) -> None:
    sub, argv = container.cosmos_invocation() or ("", [])
    assert sub in SUBCOMMANDS, f"{container.id}: unknown subcommand {sub!r}"
    help_text = cli_help(sub)

    flags = [token.split("=", 1)[0] for token in argv if token.startswith("--")]
    assert flags, f"{container.id}: no flags at all"
    unknown_flags = [flag for flag in flags if not mentions(help_text, flag)]
    assert not unknown_flags, f"{container.id}: flags not in `cosmos {sub} --help`: {unknown_flags}"

    variables = {*container.env(), *container.env_from_configmaps(configmaps(DOCS))}
    cosmos_vars = sorted(v for v in variables if v.startswith("COSMOS_"))
    assert cosmos_vars, f"{container.id}: sets no COSMOS_* variable"
    unknown_vars = [v for v in cosmos_vars if not mentions(help_text, v)]
    assert not unknown_vars, f"{container.id}: variables not in `cosmos {sub} --help`: {unknown_vars}"

    # The values parse: the CLI reads its environment while building the parser and rejects bad ones.
    literal = {k: v for k, v in container.literal_env().items() if k.startswith("COSMOS_")}
    cli_help(sub, tuple(sorted(literal.items())))


@pytest.mark.parametrize("container", COSMOS_CONTAINERS, ids=cosmos_ids)
def test_no_setting_is_left_on_a_loopback_default(container: Container) -> None:
    """A pod listening on, or dialling, 127.0.0.1 is unreachable or reaches nothing."""
    help_text = cli_help(container.subcommand)
    loopback = r"^\s+(--[\w-]+) [A-Z_]+\s.*default (?:\w+://)?127\.0\.0\.1:\d+\)"
    loopback_flags = re.findall(loopback, help_text, re.M)
    assert loopback_flags, f"`cosmos {container.subcommand} --help` lists no address settings"
    for flag in loopback_flags:
        value = container.option(flag)
        assert value is not None, f"{container.id}: {flag} left on its loopback default"
        assert "127.0.0.1" not in value and "localhost" not in value, f"{container.id}: {flag}={value}"


@pytest.mark.parametrize("container", COSMOS_CONTAINERS, ids=cosmos_ids)
def test_stream_replication_matches_the_nats_cluster(container: Container) -> None:
    """Every stream-replicas setting a subcommand has is the NATS cluster size, not its R1 default."""
    nats_replicas = find(DOCS, "StatefulSet", "nats")["spec"]["replicas"]
    for flag in re.findall(r"^\s+(--[\w-]*replicas[\w-]*)\s", cli_help(container.subcommand), re.M):
        value = container.option(flag)
        assert value == str(nats_replicas), f"{container.id}: {flag}={value}, NATS has {nats_replicas} nodes"


def test_addresses_are_wired_to_services_that_expose_them() -> None:
    svcs = services(DOCS)
    wired: dict[str, str] = {}
    for container in COSMOS_CONTAINERS:
        for name, value in container.literal_env().items():
            match = re.fullmatch(r"(?:nats://)?([a-z][a-z0-9-]*):(\d+)", value)
            if not name.startswith("COSMOS_") or match is None:
                continue
            host, port = match.group(1), int(match.group(2))
            assert host in svcs, f"{container.id}: {name}={value}: no Service {host!r}"
            ports = {int(p["port"]) for p in svcs[host]["spec"]["ports"]}
            assert port in ports, f"{container.id}: {name}={value}: Service {host} exposes {ports}"
            wired[name] = value
    assert wired["COSMOS_PLATO_NATS"] == "nats://nats:4222"
    assert wired["COSMOS_STRATUM_NATS"] == "nats://nats:4222"
    assert wired["COSMOS_OPTIMUS_PLATO"] == "plato:50052"
    assert wired["COSMOS_OPTIMUS_STRATUM"] == "stratum:50053"
    assert wired["COSMOS_AGENT_STRATUM"] == "stratum:50053"


def test_variable_references_are_defined_before_use() -> None:
    """``$(VAR)`` in args and env expands only from variables defined earlier in ``env``."""
    for container in CONTAINERS:
        defined: set[str] = set()
        for entry in container.spec.get("env", []):
            for ref in re.findall(r"\$\((\w+)\)", str(entry.get("value", ""))):
                assert ref in defined, f"{container.id}: {entry['name']} uses $({ref}) before it is set"
            defined.add(entry["name"])
        for token in container.tokens:
            for ref in re.findall(r"\$\((\w+)\)", token):
                assert ref in defined, f"{container.id}: argument {token!r} uses undefined $({ref})"


# --------------------------------------------------------------------------------------------------
# (c) probes, Services and grace periods agree with what the containers do


@pytest.mark.parametrize("container", COSMOS_CONTAINERS, ids=cosmos_ids)
def test_servers_listen_on_all_interfaces_and_probes_use_that_port(container: Container) -> None:
    probes = {k: container.spec[k] for k in PROBES if k in container.spec}
    if container.subcommand not in SERVERS:
        assert not probes, f"{container.id}: the agent serves no port to probe"
        return
    listen = container.option("--listen")
    assert listen is not None, f"{container.id}: no --listen"
    host, _, port_text = listen.rpartition(":")
    assert host in {"0.0.0.0", "[::]"}, f"{container.id}: listens on {listen}, unreachable from other pods"
    port = int(port_text)
    assert container.port_number(port) == port
    assert {"readinessProbe", "livenessProbe"} <= probes.keys(), f"{container.id}: missing probes"
    for kind, probe in probes.items():
        assert "grpc" in probe, f"{container.id}: {kind} is not a gRPC health probe"
        assert container.port_number(probe["grpc"]["port"]) == port, f"{container.id}: {kind} port"
        assert probe["grpc"].get("service") == "", f"{container.id}: {kind} must check the overall status"


def test_every_probe_targets_a_declared_port() -> None:
    for container in CONTAINERS:
        for kind in PROBES:
            probe = container.spec.get(kind)
            if probe is None:
                continue
            action = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
            if action is not None:
                container.port_number(action["port"])


def test_services_select_one_workload_and_target_declared_ports() -> None:
    for name, svc in services(DOCS).items():
        workload = selected_workload(DOCS, svc)
        pod_containers = [c for c in CONTAINERS if c.workload is workload]
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            owners = []
            for container in pod_containers:
                with contextlib.suppress(AssertionError):
                    owners.append(container.port_number(target))
            assert owners, f"Service {name}: targetPort {target} is not a port of its pods"


def prestop_sleep(container: Container) -> float:
    command = container.spec.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return float(command[1]) if len(command) == 2 and command[0] == "sleep" else 0.0


@pytest.mark.parametrize("container", COSMOS_CONTAINERS, ids=cosmos_ids)
def test_termination_grace_outlasts_the_drain(container: Container) -> None:
    grace = float(container.option("--grace-period") or DEFAULT_GRACE_PERIOD)
    budget = container.pod.get("terminationGracePeriodSeconds", 30)
    assert budget > prestop_sleep(container) + grace, f"{container.id}: {budget}s leaves no room to drain"


def test_topology_replicas_and_rollout() -> None:
    assert find(DOCS, "Deployment", "plato")["spec"]["replicas"] == 2
    assert find(DOCS, "Deployment", "optimus")["spec"]["replicas"] == 2
    stratum = find(DOCS, "Deployment", "stratum")
    assert stratum["spec"]["replicas"] == 1
    assert stratum["spec"]["strategy"]["type"] == "Recreate", "two Stratums would split the agents"
    for name in ("plato", "optimus", "stratum"):
        assert find(DOCS, "Service", name)["spec"]["ports"][0]["appProtocol"] == "grpc"


def test_nats_statefulset_headless_service_and_cluster_routes() -> None:
    sts = find(DOCS, "StatefulSet", "nats")
    replicas = sts["spec"]["replicas"]
    assert replicas == 3
    headless = find(DOCS, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (nats_container,) = [c for c in CONTAINERS if c.workload is sts]
    mounts = {m["name"]: m["mountPath"] for m in nats_container.spec["volumeMounts"]}

    config = find(DOCS, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert re.search(rf"store_dir:\s*{re.escape(mounts['data'])}/", config), "JetStream store not on the PVC"
    cluster_port = nats_container.port_number("cluster")
    routes = re.findall(r"nats://([\w.-]+):(\d+)", config)
    service = sts["spec"]["serviceName"]
    assert routes == [(f"nats-{i}.{service}", str(cluster_port)) for i in range(replicas)]
    # Operators are told which stream replication the topology is built for.
    for text in [(K8S / "nats.yaml").read_text(), *(p.read_text() for p in NATS_CONFIGS.glob("*.conf"))]:
        assert "replicas=3" in text


def test_nats_kubernetes_config_is_accepted_by_nats_server(tmp_path: Path) -> None:
    """``nats-server -t`` is strict: unknown keys, bad units and unset variables fail."""
    conf = tmp_path / "nats.conf"
    conf.write_text(find(DOCS, "ConfigMap", "nats-config")["data"]["nats.conf"])
    env = {**os.environ, "SERVER_NAME": "nats-0"}
    result = subprocess.run(
        [str(NATS_SERVER), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sts = find(DOCS, "StatefulSet", "nats")
    env_names = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "SERVER_NAME" in env_names


def test_agents_are_daemonsets_on_labelled_nodes_named_after_the_node() -> None:
    agents = [c for c in COSMOS_CONTAINERS if c.subcommand == "agent"]
    assert {c.workload["metadata"]["name"] for c in agents} == {"cosmos-agent-cpu", "cosmos-agent-gpu"}
    for agent in agents:
        assert agent.workload["kind"] == "DaemonSet"
        assert agent.pod["nodeSelector"], f"{agent.id}: runs on every node"
        ref = re.fullmatch(r"\$\((\w+)\)", agent.option("--agent-id") or "")
        assert ref is not None, f"{agent.id}: --agent-id is not taken from the downward API"
        source = agent.env()[ref.group(1)]["valueFrom"]["fieldRef"]["fieldPath"]
        assert source == "spec.nodeName"
        work_dir = agent.option("--work-dir") or ""
        assert any(work_dir.startswith(m["mountPath"]) for m in agent.spec["volumeMounts"]), "work dir"
    gpu = next(a for a in agents if a.workload["metadata"]["name"] == "cosmos-agent-gpu")
    assert gpu.pod["runtimeClassName"] == "nvidia"
    assert int(gpu.spec["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu.image_name == "cosmos-gpu"
    assert "video" in gpu.literal_env()["NVIDIA_DRIVER_CAPABILITIES"], "NVENC needs the video capability"
    cpu = next(a for a in agents if a.workload["metadata"]["name"] == "cosmos-agent-cpu")
    assert "nvidia.com/gpu" not in str(cpu.spec["resources"]) and "runtimeClassName" not in cpu.pod


def test_tracing_is_an_optional_configmap_entry() -> None:
    otel = find(DOCS, "ConfigMap", "cosmos-otel")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in (K8S / "otel-configmap.yaml").read_text()
    assert all(k.startswith("OTEL_") for k in otel.get("data", {}))
    for container in COSMOS_CONTAINERS:
        refs = [s["configMapRef"] for s in container.spec.get("envFrom", []) if "configMapRef" in s]
        assert {"name": "cosmos-otel", "optional": True} in refs, f"{container.id}: no optional cosmos-otel"
        assert container.literal_env().get("OTEL_SERVICE_NAME"), f"{container.id}: no OTEL_SERVICE_NAME"


def test_pods_meet_the_restricted_pod_security_standard_and_have_resources() -> None:
    namespace = find(DOCS, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for container in CONTAINERS:
        pod, spec = container.pod, container.spec
        pod_ctx, ctx = pod.get("securityContext", {}), spec.get("securityContext", {})
        assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, container.id
        assert pod_ctx.get("runAsUser", 1) != 0 and ctx.get("runAsUser", 1) != 0, container.id
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", container.id
        assert ctx.get("allowPrivilegeEscalation") is False, container.id
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], container.id
        assert not ctx.get("privileged"), container.id
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), container.id
        assert all("hostPath" not in v for v in pod.get("volumes", [])), container.id
        assert pod.get("automountServiceAccountToken") is False, container.id
        resources = spec.get("resources", {})
        assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), f"{container.id}: requests"
        assert "memory" in resources.get("limits", {}), f"{container.id}: memory limit"


# --------------------------------------------------------------------------------------------------
# The image: deploy/Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_runs_cosmos_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    stages = [arg for op, arg in instructions if op == "FROM"]
    assert stages and all("PYTHON_IMAGE" in s for s in stages)
    base = next(arg for op, arg in instructions if op == "ARG" and arg.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim[\w.-]*", base)
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    assert ("ENTRYPOINT", '["cosmos"]') in final
    user = [arg for op, arg in final if op == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user[-1]), "USER must be a numeric non-root uid"
    uid = int(user[-1].split(":")[0])
    pods = {c.pod.get("securityContext", {}).get("runAsUser") for c in COSMOS_CONTAINERS}
    assert pods == {uid}, "the manifests' runAsUser should match the image's user"
    assert any("EXTRAS" in arg and "pip install" in arg for op, arg in instructions if op == "RUN")
    # The GPU agent image is built with EXTRAS=gpu: that extra must exist.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "gpu" in extras and "EXTRAS=gpu" in (DEPLOY / "Dockerfile").read_text()


def test_the_wheel_builds_from_exactly_what_the_dockerfile_copies(tmp_path: Path) -> None:
    """Hatchling, given only the Dockerfile's COPY sources, builds a wheel with every module and the CLI."""
    context = tmp_path / "context"
    context.mkdir()
    copies = [arg.split() for op, arg in dockerfile_instructions() if op == "COPY" and "--from" not in arg]
    assert copies
    for *sources, dest in copies:
        for source in sources:
            src = REPO / source
            assert src.exists(), f"COPY {source}: not in the repository"
            target = context / (source if dest.endswith("/") or dest in {".", "./"} else dest)
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("cosmos_media-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "cosmos = cosmos.cli.main:main" in entry_points
    hatch = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    for root, prefix in hatch["targets"]["wheel"]["sources"].items():
        for module in (REPO / root / "cosmos").rglob("*.py"):
            relative = module.relative_to(REPO / root).as_posix()
            assert (prefix + relative) in names, f"{relative} missing from the image's wheel"


# --------------------------------------------------------------------------------------------------
# (d) the NATS cluster configs form a real JetStream cluster


@dataclass(frozen=True)
class NatsNode:
    name: str
    client_port: int
    monitor_port: int
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass(frozen=True)
class NatsCluster:
    nodes: list[NatsNode]

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{n.client_port}" for n in self.nodes]

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log.read_text(errors='replace')[-2000:]}" for n in self.nodes)


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def monitor(port: int, path: str) -> tuple[int, Any]:
    try:
        with NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def cluster_formed(cluster: NatsCluster) -> bool:
    """Every node healthy and agreeing on a meta leader, which sees all its peers current."""
    metas = {}
    for node in cluster.nodes:
        try:
            health, _ = monitor(node.monitor_port, "/healthz")
            _, jsz = monitor(node.monitor_port, "/jsz")
        except OSError:
            return False
        meta = (jsz or {}).get("meta_cluster", {})
        if health != 200 or not meta.get("leader") or meta.get("cluster_size") != len(cluster.nodes):
            return False
        metas[node.name] = meta
    leaders = {meta["leader"] for meta in metas.values()}
    if len(leaders) != 1 or (leader := leaders.pop()) not in metas:
        return False
    peers = metas[leader].get("replicas") or []
    return len(peers) == len(cluster.nodes) - 1 and all(
        p.get("current") and not p.get("offline") for p in peers
    )


def localize_nats_configs(work: Path) -> dict[str, str]:
    """Copy deploy/nats to ``work`` with every port moved to a free loopback port; node config texts."""
    texts = {p.name: p.read_text() for p in sorted(NATS_CONFIGS.glob("*.conf"))}
    addresses = {m for text in texts.values() for m in re.findall(r"([\w.-]+):(\d{2,5})\b", text)}
    assert {host for host, _ in addresses} == {"127.0.0.1"}, f"non-loopback addresses: {addresses}"
    ports = sorted({int(port) for _, port in addresses})
    mapping: dict[int, int] = {}
    while len(mapping) < len(ports):
        candidate = free_port()
        if candidate not in mapping.values() and candidate not in ports:
            mapping[ports[len(mapping)]] = candidate
    work.mkdir(parents=True)
    nodes = {}
    for name, text in texts.items():
        moved = re.sub(r"127\.0\.0\.1:(\d+)\b", lambda m: f"127.0.0.1:{mapping[int(m.group(1))]}", text)
        (work / name).write_text(moved)
        if name.startswith("nats-"):
            nodes[name] = moved
    return nodes


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """The three deploy/nats node configs, on free loopback ports, store dirs under a temp dir."""
    work = tmp_path_factory.mktemp("nats") / "conf"
    node_configs = localize_nats_configs(work)
    assert sorted(node_configs) == ["nats-0.conf", "nats-1.conf", "nats-2.conf"]
    nodes: list[NatsNode] = []
    try:
        for file, text in node_configs.items():
            client = re.search(r"^listen:\s*127\.0\.0\.1:(\d+)", text, re.M)
            http = re.search(r"^http:\s*127\.0\.0\.1:(\d+)", text, re.M)
            store = re.search(r"store_dir:\s*\"?([^\"\s]+)", text)
            assert client and http and store, f"{file}: no client listen / http / store_dir"
            assert not Path(store.group(1)).is_absolute(), f"{file}: store_dir should be relative"
            log = work / f"{file}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [str(NATS_SERVER), "-c", file], cwd=work, stdout=out, stderr=subprocess.STDOUT
                )
            nodes.append(NatsNode(file.removesuffix(".conf"), int(client[1]), int(http[1]), proc, log))
        cluster = NatsCluster(nodes)
        deadline = time.monotonic() + 20
        while not cluster_formed(cluster):
            exited = [n.name for n in nodes if n.proc.poll() is not None]
            assert not exited, f"nats-server exited: {exited}\n{cluster.logs()}"
            assert time.monotonic() < deadline, f"no JetStream cluster after 20 s\n{cluster.logs()}"
            time.sleep(0.2)
        yield cluster
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.kill()
        for node in nodes:
            node.proc.wait(10)


@pytest.mark.timeout(60)
async def test_nats_cluster_configs_hold_a_stream_with_three_replicas(nats_cluster: NatsCluster) -> None:
    nc = await nats.connect(servers=nats_cluster.urls, connect_timeout=2, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 10
        while True:
            try:
                created = await js.add_stream(name="DEPLOY_R3", subjects=["deploy.r3.>"], num_replicas=3)
                break
            except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
                # A just-formed cluster may still answer "insufficient resources" for an R3 placement.
                assert time.monotonic() < deadline, (
                    f"cannot create an R3 stream: {exc!r}\n{nats_cluster.logs()}"
                )
                await asyncio.sleep(0.2)
        assert created.config.num_replicas == 3
        ack = await js.publish("deploy.r3.hello", b"hello", timeout=5)
        assert ack.stream == "DEPLOY_R3" and ack.seq == 1

        names = {node.name for node in nats_cluster.nodes}
        deadline = time.monotonic() + 15
        while True:
            info = await js.stream_info("DEPLOY_R3")
            cluster = info.cluster
            assert cluster is not None
            replicas = cluster.replicas or []
            if len(replicas) == 2 and all(r.current for r in replicas):
                break
            assert time.monotonic() < deadline, f"replicas never current: {cluster}"
            await asyncio.sleep(0.2)
        assert cluster.name == "cosmos"
        assert {cluster.leader, *(r.name for r in replicas)} == names
        assert info.state.messages == 1
        message = await js.get_msg("DEPLOY_R3", 1)
        assert message.data == b"hello"
    finally:
        await nc.close()


# --------------------------------------------------------------------------------------------------
# The servers, run from their manifests against that cluster

STACK = ("plato", "stratum", "optimus", "cosmos-agent-cpu")
DOWNWARD_API = {"spec.nodeName": "node-a", "metadata.name": "pod-0", "metadata.namespace": NAMESPACE}


@dataclass
class ManifestStack:
    """Plato, Stratum, Optimus and the CPU agent, each run with its container's own args and env."""

    containers: dict[str, Container]
    local_ports: dict[str, dict[int, int]]
    """workload -> containerPort -> the loopback port it got here."""
    procs: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]

    def output(self) -> str:
        return "\n".join(
            f"--- {n}\n{log.read_text(errors='replace')[-3000:]}" for n, log in self.logs.items()
        )

    def wait_probes(self) -> None:
        """Every probe of every server, as the kubelet would run it, answers SERVING."""
        for name, container in self.containers.items():
            for kind in PROBES:
                probe = container.spec.get(kind)
                if probe is None:
                    continue
                port = self.local_ports[name][container.port_number(probe["grpc"]["port"])]
                try:
                    wait_serving(f"127.0.0.1:{port}", probe["grpc"]["service"], proc=self.procs[name])
                except AssertionError as exc:
                    raise AssertionError(f"{name} {kind}: {exc}\n{self.output()}") from exc


def start_manifest_stack(cluster: NatsCluster, work: Path) -> ManifestStack:
    """Kubernetes names become loopback: ``0.0.0.0:P`` a free port, ``svc:port`` what the Service selects."""
    by_name = {c.workload["metadata"]["name"]: c for c in COSMOS_CONTAINERS}
    containers = {name: by_name[name] for name in STACK}
    local_ports = {
        name: {int(p["containerPort"]): free_port() for p in c.spec.get("ports", [])}
        for name, c in containers.items()
    }
    dial: dict[tuple[str, int], int] = {}
    for svc_name, svc in services(DOCS).items():
        workload = selected_workload(DOCS, svc)
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            name = workload["metadata"]["name"]
            if name in containers:
                dial[(svc_name, int(port["port"]))] = local_ports[name][containers[name].port_number(target)]
            elif workload["kind"] == "StatefulSet" and name == "nats" and port["name"] == "client":
                dial[(svc_name, int(port["port"]))] = cluster.nodes[0].client_port

    def localize(value: str, name: str, env: dict[str, str]) -> str:
        value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)
        if listen := re.fullmatch(r"(?:0\.0\.0\.0|\[::\]):(\d+)", value):
            return f"127.0.0.1:{local_ports[name][int(listen[1])]}"
        address = re.fullmatch(r"(nats://)?([a-z][a-z0-9-]*):(\d+)", value)
        if address and (address[2], int(address[3])) in dial:
            return f"{address[1] or ''}127.0.0.1:{dial[(address[2], int(address[3]))]}"
        for mount in containers[name].spec.get("volumeMounts", []):
            if value.startswith(mount["mountPath"]):
                return str(work / name / mount["name"]) + value[len(mount["mountPath"]) :]
        return value

    stack = ManifestStack(containers, local_ports, {}, {})
    for name, container in containers.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COSMOS_", "OTEL_"))}
        env["OTEL_SDK_DISABLED"] = "true"
        for entry in container.spec.get("env", []):
            if "value" in entry:
                env[entry["name"]] = localize(str(entry["value"]), name, env)
            else:
                env[entry["name"]] = DOWNWARD_API[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        sub, argv = container.cosmos_invocation() or ("", [])
        args = [localize(token, name, env) for token in argv]
        stack.logs[name] = work / f"{name}.log"
        with stack.logs[name].open("wb") as out:
            stack.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "cosmos.cli", sub, *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
    return stack


@pytest.fixture(scope="module")
def manifest_stack(
    nats_cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManifestStack]:
    stack = start_manifest_stack(nats_cluster, tmp_path_factory.mktemp("stack"))
    try:
        yield stack
    finally:
        for proc in stack.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def stream_replicas(urls: list[str]) -> dict[str, int]:
    """``{stream: num_replicas}`` of every stream in the cluster."""
    nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=3)
    try:
        infos = await nc.jetstream().streams_info()
        return {str(info.config.name): info.config.num_replicas or 1 for info in infos}
    finally:
        await nc.close()


@pytest.mark.timeout(90)
def test_servers_started_from_their_manifests_serve_and_the_agent_registers(
    manifest_stack: ManifestStack, nats_cluster: NatsCluster
) -> None:
    manifest_stack.wait_probes()
    stratum = f"127.0.0.1:{manifest_stack.local_ports['stratum'][50053]}"
    with grpc.insecure_channel(stratum) as channel:
        pool = pool_service_pb2_grpc.PoolServiceStub(channel)
        deadline = time.monotonic() + 20
        while True:
            agents = pool.ListAgents(pool_service_pb2.ListAgentsRequest(), timeout=2).agents
            ready = [a for a in agents if a.state == agent_pb2.AgentState.AGENT_STATE_READY]
            if ready:
                break
            assert time.monotonic() < deadline, f"no agent READY: {agents}\n{manifest_stack.output()}"
            time.sleep(0.2)
    (agent,) = ready
    assert agent.agent_id == DOWNWARD_API["spec.nodeName"], "the agent id is the node name"
    assert dict(agent.labels) == {"pool": "cpu", "node": DOWNWARD_API["spec.nodeName"]}
    work = manifest_stack.logs["cosmos-agent-cpu"].parent / "cosmos-agent-cpu" / "work"
    assert work.is_dir(), "the agent's --work-dir is on its volume"

    # Whatever streams the servers created are replicated on every NATS node.
    replicas = asyncio.run(stream_replicas(nats_cluster.urls))
    nodes = find(DOCS, "StatefulSet", "nats")["spec"]["replicas"]
    assert all(r == nodes for r in replicas.values()), f"streams not replicated on {nodes} nodes: {replicas}"


@pytest.mark.timeout(90)
def test_servers_stop_within_their_termination_grace_period(manifest_stack: ManifestStack) -> None:
    """As the kubelet stops a pod: SIGTERM after the preStop sleep, SIGKILL when the grace period is over."""
    manifest_stack.wait_probes()
    for proc in reversed(manifest_stack.procs.values()):
        proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    outcome: dict[str, int | str] = {}
    for name, proc in manifest_stack.procs.items():
        container = manifest_stack.containers[name]
        budget = container.pod.get("terminationGracePeriodSeconds", 30) - prestop_sleep(container)
        try:
            outcome[name] = proc.wait(max(0.0, start + budget - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            outcome[name] = f"still running after {budget:.0f} s: SIGKILL"
    assert all(code == 0 for code in outcome.values()), f"unclean stops {outcome}\n{manifest_stack.output()}"
