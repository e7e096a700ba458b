"""Checking a ``SubmitEncode`` request before anything starts: source and output inside the caller's
storage area (:mod:`cosmos.security.storage`), the source readable, the profiles known, the output
writable and not holding files Cosmos did not publish, and the ``image`` an allowed OCI reference.

Everything here looks at the request and the local file system only; the ``s3://`` checks, which ask
S3, are :mod:`cosmos.optimus.s3_checks`'.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from cosmos import errors
from cosmos.optimus import profiles as catalog
from cosmos.optimus.media import publish
from cosmos.optimus.v1 import encode_service_pb2
from cosmos.optimus.view import QUALITY_MODES
from cosmos.security import auth, job_policy, storage

IMAGE_SCRATCH = ".cosmos-work"
"""Under the tenant's storage area: the scratch directories of the encodes that run in an image."""
IMAGE_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
"""What ``image`` may look like: an OCI image reference (``localhost/cosmos-worker:0.1.0``, a digest)."""


def image_problem(
    image: str, policy: job_policy.JobPolicy | None, tenant: str
) -> tuple[errors.Reason.ValueType, str] | None:
    """Why ``image`` cannot run the chunk encodes of ``tenant`` — (reason, description) — or None.

    The allow-list is Stratum's job policy (``--job-policy``, the same file): refused here, at submit,
    rather than by Stratum at each chunk's SubmitJob once the encode has split its source."""
    if not IMAGE_REFERENCE.fullmatch(image):
        return errors.Reason.ERROR_REASON_INVALID_ARGUMENT, f"{image!r} is not an image reference"
    if policy is not None and not policy.rules(tenant or "default").image_allowed(image):
        return (
            errors.Reason.ERROR_REASON_FORBIDDEN_EXECUTABLE,
            f"{image!r} is not on tenant {tenant or 'default'!r}'s allow-list of images (job policy)",
        )
    return None


def is_s3(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() == "s3"


def refuse_foreign_output(output: Path) -> None:
    """FAILED_PRECONDITION (OUTPUT_EXISTS) when ``output`` holds anything but an earlier Cosmos publish.

    Publishing never replaces what Cosmos did not write, even with ``overwrite``: refusing here saves
    an encode that would fail at its last step. An earlier Cosmos publish passes (this very encode
    submitted again is deduplicated; another one publishes only with ``overwrite``).
    """
    if output.is_dir() and (not any(output.iterdir()) or publish.holds_only_a_publish(output)):
        return
    if not output.exists() and not output.is_symlink():
        return
    what = "is not a directory" if not output.is_dir() else "holds files Cosmos did not publish"
    raise errors.FailedPreconditionError(
        f"output_uri: {output} {what}; choose another output (overwrite replaces only a Cosmos publish)",
        reason=errors.Reason.ERROR_REASON_OUTPUT_EXISTS,
        violations=[errors.FieldViolation("output_uri", f"{output} {what}")],
    )


def validate(
    request: encode_service_pb2.SubmitEncodeRequest,
    storage_roots: Sequence[storage.Root],
    policy: job_policy.JobPolicy | None,
) -> tuple[Path, list[catalog.Profile], Path]:
    """The request's source, profiles and output, or the error that refuses it.

    INVALID_ARGUMENT naming every bad field at once (its reason the last specific one found:
    OUTSIDE_STORAGE_ROOT, SOURCE_UNREADABLE, UNKNOWN_PROFILE); then PERMISSION_DENIED for an image
    the tenant's job policy does not allow (:func:`image_problem`); then, for a file output,
    FAILED_PRECONDITION when it cannot be created or holds what Cosmos did not publish. An ``s3://``
    source's existence and output's objects are :mod:`cosmos.optimus.s3_checks`' (S3 calls)."""
    violations: list[errors.FieldViolation] = []
    reason = errors.Reason.ERROR_REASON_INVALID_ARGUMENT
    source = output = Path()
    caller = auth.current()

    def inside_roots(uri: str, field: str) -> Path:
        if is_s3(uri):
            # An object URI: checked lexically; the path stands for it (s3://bucket/key -> s3:/...).
            return Path(
                storage.check_object_uri(
                    uri, storage_roots, caller.tenant, field, all_tenants=caller.all_tenants
                )
            )
        return storage.check_uri(uri, storage_roots, caller.tenant, field, all_tenants=caller.all_tenants)

    try:
        if not request.source_uri:
            raise errors.invalid("source_uri", "is required")
        source = inside_roots(request.source_uri, "source_uri")
        if is_s3(request.source_uri):
            pass  # existence is checked by SubmitEncode (an S3 call)
        elif not source.is_file() or not os.access(source, os.R_OK):
            reason = errors.Reason.ERROR_REASON_SOURCE_UNREADABLE
            raise errors.invalid(
                "source_uri", f"{source} does not exist or is not a readable file", reason=reason
            )
    except storage.OutsideStorageRoot as exc:
        reason = storage.REASON
        violations.extend(exc.violations)
    except errors.InvalidArgumentError as exc:
        violations.extend(exc.violations)
    if request.quality and request.quality not in QUALITY_MODES:
        violations.append(errors.FieldViolation("quality", f"unknown quality mode {request.quality}"))
    chosen: list[catalog.Profile] = []
    try:
        chosen = catalog.resolve(list(request.profiles), request.ladder)
    except KeyError as exc:
        reason = errors.Reason.ERROR_REASON_UNKNOWN_PROFILE
        field = "profiles"
        for i, name in enumerate(request.profiles):
            if name not in catalog.names():
                field = f"profiles[{i}]"
        if request.ladder and field == "profiles":
            field = "ladder"
        # The catalog's errors say what is wrong and what is known; a bare KeyError is the name.
        known = isinstance(exc, catalog.UnknownProfileError | catalog.UnknownLadderError)
        said = str(exc) if known else f"unknown {field.split('[')[0]} {exc.args[0] if exc.args else exc!s}"
        violations.append(errors.FieldViolation(field, said))
    try:
        if not request.output_uri:
            raise errors.invalid("output_uri", "is required")
        output = inside_roots(request.output_uri, "output_uri")
    except storage.OutsideStorageRoot as exc:
        reason = storage.REASON
        violations.extend(exc.violations)
    except errors.InvalidArgumentError as exc:
        violations.extend(exc.violations)
    if request.priority < 0:
        violations.append(errors.FieldViolation("priority", "must not be negative"))
    forbidden = None
    if request.image:
        problem = image_problem(request.image, policy, caller.tenant)
        if problem is not None and problem[0] == errors.Reason.ERROR_REASON_INVALID_ARGUMENT:
            violations.append(errors.FieldViolation("image", problem[1]))
        forbidden = problem
    if violations:
        raise errors.InvalidArgumentError(
            f"invalid encode: {violations[0].field}: {violations[0].description}",
            reason=reason,
            violations=violations,
        )
    if forbidden is not None:
        raise errors.PermissionDeniedError(
            f"image: {forbidden[1]}",
            reason=forbidden[0],
            violations=[errors.FieldViolation("image", forbidden[1])],
        )
    if is_s3(request.output_uri):
        return source, chosen, output  # the agent refuses a prefix holding other objects on upload
    parent = next((p for p in [output, *output.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise errors.FailedPreconditionError(
            f"output_uri: {output} cannot be created (no writable parent directory)",
            reason=errors.Reason.ERROR_REASON_OUTPUT_UNWRITABLE,
            violations=[
                errors.FieldViolation("output_uri", f"{parent or output} is not a writable directory")
            ],
        )
    refuse_foreign_output(output)
    return source, chosen, output


def image_scratch(storage_roots: Sequence[storage.Root], tenant: str) -> Path:
    """Where an encode in an image keeps its scratch: ``<storage root>/<tenant>/.cosmos-work``.

    Its chunk encodes are container jobs, which see only their work dir: each chunk is staged in
    and the encoded files copied out as ``file://`` job artifacts, and Stratum and the agent take
    those only inside the tenant's storage area (docs/security.md), not in Optimus's work root."""
    roots = storage.file_roots(storage_roots)
    if not roots:
        what = "an encode in an image needs a file storage root for its scratch (none is configured)"
        raise errors.FailedPreconditionError(
            f"image: {what}",
            reason=storage.REASON,
            violations=[errors.FieldViolation("image", what)],
        )
    return storage.tenant_area(roots[0], tenant) / IMAGE_SCRATCH
