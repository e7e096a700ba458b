"""The one error hierarchy of Cosmos.

Every error raised on purpose by Cosmos code derives from :class:`CosmosError`. Errors that a gRPC
handler may raise carry the status code and ``google.rpc`` details they map to, so the runtime turns
them into rich statuses in one place (:mod:`cosmos.runtime.rpc_errors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc


class CosmosError(Exception):
    """Root of every error Cosmos raises on purpose."""


class ConfigError(CosmosError):
    """A setting (flag, environment variable, file) is missing or invalid."""


class PortInUseError(ConfigError):
    """A listening address is already taken by another process."""

    def __init__(self, host: str, port: int, owner: str, setting: str = "") -> None:
        self.host = host
        self.port = port
        self.owner = owner
        self.setting = setting
        hint = f"; choose another with {setting}" if setting else ""
        super().__init__(f"{owner}: {host}:{port} is already in use{hint}")


class ProcessStartError(CosmosError):
    """A child process (NATS, a service, an agent) did not start or did not become ready."""

    def __init__(self, name: str, reason: str, log_path: str | None = None) -> None:
        self.name = name
        self.reason = reason
        self.log_path = log_path
        where = f" (log: {log_path})" if log_path else ""
        super().__init__(f"{name} did not start: {reason}{where}")


@dataclass(frozen=True)
class FieldViolation:
    """One offending request field, reported as a ``google.rpc.BadRequest`` field violation."""

    field: str
    """Path of the field in the request, e.g. ``spec.resources.cpu_millis``."""
    description: str
    """What is wrong with it, in words a caller can act on."""


class RpcError(CosmosError):
    """An error that answers a gRPC call: a status code, a reason and optional details."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "ERROR_REASON_UNSPECIFIED"
    """``google.rpc.ErrorInfo.reason``: a ``cosmos.common.v1.ErrorReason`` value name."""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)


class InvalidArgumentError(RpcError):
    """The request is malformed; each offending field is named in ``violations``."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "ERROR_REASON_INVALID_ARGUMENT"


class FailedPreconditionError(RpcError):
    """The request is well formed but the system is not in a state to accept it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFoundError(RpcError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(RpcError):
    """A resource with the same identity exists with different content."""

    code = grpc.StatusCode.ALREADY_EXISTS


class AbortedError(RpcError):
    """A concurrency conflict (stale attempt, lost compare-and-set); the caller may re-read and retry."""

    code = grpc.StatusCode.ABORTED


class UnauthenticatedError(RpcError):
    """The call carries no valid credentials (missing, expired, malformed, not the platform's)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "ERROR_REASON_UNAUTHENTICATED"


class PermissionDeniedError(RpcError):
    """The caller is known but may not do this; ``metadata`` names the missing permission."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "ERROR_REASON_PERMISSION_DENIED"


class UnavailableError(RpcError):
    """A dependency (NATS, another service) cannot be reached right now; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "ERROR_REASON_SERVICE_UNAVAILABLE"
    retry_delay: float = 1.0
    """Seconds a caller should wait before retrying (sent as ``google.rpc.RetryInfo``)."""


class ResourceExhaustedError(RpcError):
    """The caller made too many calls in a short time, or a quota is spent; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "ERROR_REASON_RATE_LIMITED"
