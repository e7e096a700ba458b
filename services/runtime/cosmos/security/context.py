"""Client contexts: where the platform is and which credentials to call it with, as kubectl does.

A config file (``$COSMOS_CONFIG``, else ``~/.config/cosmos/config.yaml``) holds named contexts and the
current one. ``cosmos up`` writes the context ``local`` (its endpoints and the local admin's
certificate) and makes it current when none is, so the CLI, the SDK and stub code work with no flag::

    from cosmos.security import context
    from cosmos.plato.v1 import workflow_service_pb2_grpc

    channel = context.load().channel("plato")
    plato = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import grpc
import yaml

from cosmos import errors
from cosmos.runtime.s3 import S3Config
from cosmos.security.config import Security
from cosmos.security.tls import TlsFiles

SERVICES = ("optimus", "plato", "stratum")
DEFAULTS = {"optimus": "127.0.0.1:50051", "plato": "127.0.0.1:50052", "stratum": "127.0.0.1:50053"}


def config_path() -> Path:
    """The config file: ``$COSMOS_CONFIG``, else ``$XDG_CONFIG_HOME/cosmos/config.yaml``."""
    explicit = os.environ.get("COSMOS_CONFIG")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "cosmos" / "config.yaml"


@dataclasses.dataclass(frozen=True)
class Context:
    """One platform and the credentials to call it with."""

    name: str = "local"
    """The context's name."""
    endpoints: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULTS))
    """``HOST:PORT`` per service (optimus, plato, stratum), plus ``nats`` (a URL)."""
    ca: str = ""
    """CA bundle trusted for the servers."""
    cert: str = ""
    """Client certificate (mutual TLS)."""
    key: str = ""
    """Its private key."""
    token: str = ""
    """A platform token, when there is no certificate (then ``endpoints`` are token ports)."""
    insecure: bool = False
    """Plaintext to a ``--insecure`` development stack."""
    storage_root: str = ""
    """The platform's storage root as a local directory (``cosmos up`` records its own), where the CLI
    puts files for the caller's tenant (``<root>/<tenant>/...``); empty: unknown here."""
    s3_endpoint: str = ""
    """The embedded S3 gateway's URL (``cosmos up`` records it); empty: the AWS environment decides."""
    s3_identity: str = ""
    """Path of the embedded S3 server's identity file (0600) holding the access key the CLI signs with."""

    def s3_config(self) -> S3Config:
        """How to reach this platform's S3: the embedded server's endpoint and key when ``cosmos up``
        recorded them, else the standard AWS environment and files."""
        if not (self.s3_endpoint and self.s3_identity):
            return S3Config.from_env()
        try:
            ident = json.loads(Path(self.s3_identity).read_text())["identities"][0]["credentials"][0]
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise errors.ConfigError(
                f"context {self.name!r}: cannot read the S3 key {self.s3_identity}: {exc}"
            ) from exc
        return S3Config(self.s3_endpoint, "us-east-1", ident["accessKey"], ident["secretKey"])

    def security(self) -> Security:
        """The credentials as a :class:`Security`."""
        if self.insecure:
            return Security(insecure=True)
        if self.cert and self.key and self.ca:
            return Security(tls=TlsFiles(Path(self.ca), Path(self.cert), Path(self.key)))
        if self.token and self.ca:
            return Security(token=self.token, token_ca=Path(self.ca))
        raise errors.ConfigError(
            f"context {self.name!r} has no credentials (cert+key+ca, or token+ca); run `cosmos up` "
            f"or edit {config_path()}"
        )

    def endpoint(self, service: str) -> str:
        """Where ``service`` listens."""
        return self.endpoints.get(service) or DEFAULTS.get(service, "")

    def channel(self, service: str) -> grpc.aio.Channel:
        """A channel to ``service`` with this context's credentials."""
        from cosmos.runtime import channels

        return channels.connect(self.endpoint(service), service, self.security())


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise errors.ConfigError(f"{path}: unreadable Cosmos config ({exc})") from exc
    if not isinstance(data, dict):
        raise errors.ConfigError(f"{path}: expected a mapping with 'contexts'")
    return data


def load(name: str = "", path: Path | None = None) -> Context:
    """The context ``name`` (default: the current one, else built-in defaults with no credentials)."""
    path = path or config_path()
    data = _read(path)
    contexts = data.get("contexts") or {}
    wanted = name or os.environ.get("COSMOS_CONTEXT") or data.get("current-context") or ""
    if not wanted:
        return Context()
    entry = contexts.get(wanted)
    if not isinstance(entry, dict):
        known = ", ".join(sorted(contexts)) or "none"
        raise errors.ConfigError(f"no context {wanted!r} in {path} (known: {known})")
    fields = {f.name for f in dataclasses.fields(Context)}
    values = {k: v for k, v in entry.items() if k in fields}
    values["endpoints"] = {**DEFAULTS, **(entry.get("endpoints") or {})}
    return Context(name=wanted, **{k: v for k, v in values.items() if k != "name"})


def names(path: Path | None = None) -> tuple[list[str], str]:
    """The contexts the config file holds, and the current one ("" when none is)."""
    data = _read(path or config_path())
    return sorted(data.get("contexts") or {}), str(data.get("current-context") or "")


def use(name: str, path: Path | None = None) -> Path:
    """Make the context ``name`` the current one."""
    path = path or config_path()
    return save(load(name, path), make_current=True, path=path)


def delete(name: str, path: Path | None = None) -> Path:
    """Remove the context ``name`` (and make none current if it was)."""
    path = path or config_path()
    data = _read(path)
    contexts = data.get("contexts") or {}
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise errors.ConfigError(f"no context {name!r} in {path} (known: {known})")
    del contexts[name]
    if data.get("current-context") == name:
        data.pop("current-context")
    _write(path, data)
    return path


def save(context: Context, *, make_current: bool = False, path: Path | None = None) -> Path:
    """Write ``context`` into the config file (0600: it may hold a token)."""
    path = path or config_path()
    data = _read(path)
    contexts = data.setdefault("contexts", {})
    entry = dataclasses.asdict(context)
    entry.pop("name")
    contexts[context.name] = entry
    if make_current or not data.get("current-context"):
        data["current-context"] = context.name
    _write(path, data)
    return path


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(data, out, sort_keys=True)
    os.replace(tmp, path)
