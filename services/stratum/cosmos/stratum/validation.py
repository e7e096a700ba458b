"""Refusing impossible jobs at the door, naming the offending field.

A job that only has to wait (the pool is busy) is queued; a job that no agent could ever run (too
big for every agent, a GPU model nobody has, an image without a container runtime) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlparse

from cosmos import errors
from cosmos.security import storage
from cosmos.security.job_policy import JobPolicy
from cosmos.stratum.agent import containers
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.v1 import job_pb2

SCHEMES = ("file", "s3")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# GPU models a job may name even when no agent of the pool has one right now (it then cannot be
# placed and is refused as unsatisfiable); any other name is a typo and refused as unknown.
KNOWN_GPU_MODELS = frozenset(
    {
        "A10",
        "A10G",
        "A16",
        "A30",
        "A40",
        "A100",
        "A800",
        "B100",
        "B200",
        "GB200",
        "H20",
        "H100",
        "H200",
        "H800",
        "L4",
        "L20",
        "L40",
        "L40S",
        "P4",
        "P40",
        "P100",
        "T4",
        "V100",
        "V100M16",
        "V100M32",
        "G2",
        "G3",
        "RTX4000",
        "RTX5000",
        "RTX6000",
        "RTX8000",
    }
)


class CapacityOracle(Protocol):
    """What validation asks the allocator."""

    def could_ever_fit(self, spec: job_pb2.JobSpec) -> str | None:
        """None if some agent could run ``spec`` once idle, else why not."""
        ...


def check_spec(
    spec: job_pb2.JobSpec,
    registry: AgentRegistry,
    allocator: CapacityOracle,
    policy: JobPolicy | None = None,
    pool_complete: bool = True,
) -> None:
    """Raise :class:`InvalidArgumentError` (every bad field), :class:`PermissionDeniedError` (outside
    the tenant's allow-list) or :class:`FailedPreconditionError`. With ``pool_complete`` False (agents
    may still be reconnecting) whether an agent could run the job is left to the dispatcher's wait."""
    bad: list[errors.FieldViolation] = []
    if not spec.argv or not spec.argv[0]:
        bad.append(
            errors.FieldViolation(
                "spec.argv", "must name a program (argv[0]); argv is a list, never a shell string"
            )
        )
    res = spec.resources
    if res.cpu_millis < 0:
        bad.append(errors.FieldViolation("spec.resources.cpu_millis", f"{res.cpu_millis} is negative"))
    if res.memory_bytes < 0:
        bad.append(errors.FieldViolation("spec.resources.memory_bytes", f"{res.memory_bytes} is negative"))
    gpu = res.gpu
    if gpu.share < 0 or gpu.share > 1:
        bad.append(errors.FieldViolation("spec.resources.gpu.share", f"{gpu.share} is outside (0, 1]"))
    if gpu.share and gpu.count:
        bad.append(
            errors.FieldViolation(
                "spec.resources.gpu.share", "set either count (whole GPUs) or share, not both"
            )
        )
    pool = {g.model.upper() for a in registry.sorted() for g in a.inventory.gpus}
    for i, model in enumerate(gpu.models):
        if model.upper() not in KNOWN_GPU_MODELS | pool:
            have = ", ".join(sorted(pool)) or "no GPUs"
            bad.append(
                errors.FieldViolation(
                    f"spec.resources.gpu.models[{i}]", f"unknown GPU model {model!r}; the pool has {have}"
                )
            )
    if spec.timeout.seconds < 0 or spec.timeout.nanos < 0:
        bad.append(errors.FieldViolation("spec.timeout", "must not be negative"))
    for field, artifacts in (("inputs", spec.inputs), ("outputs", spec.outputs)):
        for i, artifact in enumerate(artifacts):
            scheme = urlparse(artifact.uri).scheme
            if scheme not in SCHEMES:
                bad.append(
                    errors.FieldViolation(
                        f"spec.{field}[{i}].uri",
                        f"scheme {scheme or '(none)'!r} is not supported; use file:// or s3://",
                    )
                )
            if not artifact.path or artifact.path.startswith("/") or ".." in artifact.path.split("/"):
                bad.append(
                    errors.FieldViolation(
                        f"spec.{field}[{i}].path", "must be a relative path inside the job's work dir"
                    )
                )
    for name in sorted(spec.secrets):
        # The name is shown and logged like an env name; never the value (so it is not echoed here).
        if not _ENV_NAME.match(name) or name.upper().startswith("COSMOS_"):
            bad.append(
                errors.FieldViolation(
                    f"spec.secrets[{name!r}]",
                    "must be an environment variable name that does not start with COSMOS_",
                )
            )
        elif name in spec.env:
            bad.append(errors.FieldViolation(f"spec.secrets[{name!r}]", "is also in spec.env; set it once"))
    if bad:
        raise errors.InvalidArgumentError(
            f"invalid job: {bad[0].field}: {bad[0].description}", violations=bad
        )
    if policy is not None:
        policy.check(spec)
    if not pool_complete:
        return
    engines = containers.acceptable_engines(spec)
    if spec.image and not any(set(engines) & set(a.inventory.runtimes) for a in registry.sorted()):
        # Checked before the resources: a job with an image is refused for the runtime it lacks.
        raise errors.FailedPreconditionError(
            f"jobs with an image need an agent with {' or '.join(engines) or 'a container runtime'}; "
            "no agent in the pool has one",
            reason=errors.Reason.ERROR_REASON_UNSUPPORTED_RUNTIME,
            metadata={"image": spec.image},
        )
    reason = allocator.could_ever_fit(spec)
    if reason is not None:
        raise errors.InvalidArgumentError(
            f"no agent could ever run this job: {reason}",
            reason=errors.Reason.ERROR_REASON_UNSATISFIABLE_RESOURCES,
            violations=[errors.FieldViolation("spec.resources", reason)],
        )


def check_storage(spec: job_pb2.JobSpec, roots: Sequence[storage.Root]) -> None:
    """:class:`~cosmos.security.storage.OutsideStorageRoot` naming every artifact URI outside
    ``<root>/<spec.tenant>`` (``file://`` and ``s3://`` roots alike).
    Whether an input exists is the agent's to find out when it stages it: a
    submit retried with its idempotency key must not fail because a finished job's input is gone.

    A job reads and writes its own tenant's area only, whoever submitted it: the agent checks again
    at staging time against ``spec.tenant`` and knows nothing else about the submitter.
    """
    bad: list[errors.FieldViolation] = []
    for field, artifacts in (("inputs", spec.inputs), ("outputs", spec.outputs)):
        for i, artifact in enumerate(artifacts):
            try:
                storage.check_any(artifact.uri, roots, spec.tenant, f"spec.{field}[{i}].uri")
            except storage.OutsideStorageRoot as exc:
                bad.extend(exc.violations)
    if bad:
        raise storage.OutsideStorageRoot(f"invalid job: {bad[0].field}: {bad[0].description}", violations=bad)
