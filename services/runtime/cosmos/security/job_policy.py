"""Which executables and images each tenant's jobs may use: the job policy Stratum enforces on every
job and Optimus checks an encode's image against before it starts one (``--job-policy FILE`` of both).
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cosmos import errors
from cosmos.stratum.v1 import job_pb2


@dataclass(frozen=True)
class TenantRules:
    """What one tenant's jobs may use; None: anything, an empty list: nothing."""

    executables: tuple[str, ...] | None = None
    """``argv[0]`` patterns: a bare name matches exactly that bare ``argv[0]`` (found on ``PATH``); a
    pattern with a ``/`` is a glob matched against an absolute ``argv[0]`` (``/usr/bin/*``)."""
    images: tuple[str, ...] | None = None
    """Globs matched against ``spec.image`` (``registry.example.com/media/*``)."""

    def executable_allowed(self, argv0: str) -> bool:
        """Whether ``argv0`` matches one of :attr:`executables`."""
        if self.executables is None:
            return True
        path = posixpath.normpath(argv0) if argv0.startswith("/") else ""
        for pattern in self.executables:
            if "/" not in pattern:
                if argv0 == pattern:
                    return True
            elif path and fnmatch.fnmatchcase(path, pattern):
                return True
        return False

    def image_allowed(self, image: str) -> bool:
        """Whether ``image`` matches one of :attr:`images`."""
        return self.images is None or any(fnmatch.fnmatchcase(image, p) for p in self.images)


@dataclass(frozen=True)
class JobPolicy:
    """Per-tenant allow-lists of executables and images (Nomad's driver allow-list is the model).

    The file (``cosmos stratum --job-policy FILE``)::

        tenants:
          acme: {executables: [python3, /usr/bin/*], images: []}   # no container jobs
          "*": {executables: [python3]}                              # every other tenant

    A tenant without an entry gets ``*``'s; without that either, it may run nothing. Within an entry
    an omitted key allows anything, an empty list nothing. Stratum is the gate: agents do not check.
    """

    tenants: Mapping[str, TenantRules]

    @classmethod
    def load(cls, path: Path) -> JobPolicy:
        """Read and check a policy file (a mistake is a :class:`ConfigError` at start-up)."""
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise errors.ConfigError(f"--job-policy {path}: {exc}") from exc
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: Any, source: str = "policy") -> JobPolicy:
        """A policy from the file's parsed YAML."""
        tenants = data.get("tenants") if isinstance(data, dict) else None
        if not isinstance(tenants, dict):
            raise errors.ConfigError(f"{source}: expected a mapping 'tenants: {{TENANT: {{...}}}}'")
        rules: dict[str, TenantRules] = {}
        for tenant, entry in tenants.items():
            entry = entry or {}
            if not isinstance(entry, dict) or set(entry) - {"executables", "images"}:
                raise errors.ConfigError(
                    f"{source}: tenants.{tenant}: only 'executables' and 'images' are known"
                )
            rules[str(tenant)] = TenantRules(
                executables=_patterns(entry, "executables", f"{source}: tenants.{tenant}"),
                images=_patterns(entry, "images", f"{source}: tenants.{tenant}"),
            )
        return cls(rules)

    def rules(self, tenant: str) -> TenantRules:
        """The tenant's rules (``*``'s when it has none; nothing allowed when neither exists)."""
        return self.tenants.get(tenant) or self.tenants.get("*") or TenantRules((), ())

    def check(self, spec: job_pb2.JobSpec) -> None:
        """Raise PERMISSION_DENIED (ERROR_REASON_FORBIDDEN_EXECUTABLE) naming the field it refuses."""
        tenant = spec.tenant or "default"
        rules = self.rules(tenant)
        refused: list[tuple[str, str]] = []
        if spec.argv and not rules.executable_allowed(spec.argv[0]):
            refused.append(("spec.argv[0]", spec.argv[0]))
        if spec.image and not rules.image_allowed(spec.image):
            refused.append(("spec.image", spec.image))
        if refused:
            field, value = refused[0]
            raise errors.PermissionDeniedError(
                f"{field} {value!r} is not allowed for tenant {tenant!r} by the job policy",
                reason=errors.Reason.ERROR_REASON_FORBIDDEN_EXECUTABLE,
                violations=[
                    errors.FieldViolation(f, f"{v!r} is not on tenant {tenant!r}'s allow-list")
                    for f, v in refused
                ],
            )


def _patterns(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise errors.ConfigError(f"{where}.{key}: expected a list of names or patterns")
    return tuple(value)
