"""The one error hierarchy of Cosmos.

Every error raised on purpose by Cosmos code derives from :class:`CosmosError`. Errors that a gRPC
handler may raise carry the status code and ``google.rpc`` details they map to, so the runtime turns
them into rich statuses in one place (:mod:`cosmos.runtime.rpc_errors`).

The whole tree, each class with the module that defines it (``tests/runtime/test_errors_tree.py``
keeps it complete and true)::

    CosmosError                             cosmos.errors                     root of every error on purpose
    ├── ConfigError                         cosmos.errors                     a setting is missing or invalid
    │   └── PortInUseError                  cosmos.errors                     a listening address is taken
    ├── ProcessStartError                   cosmos.errors                     a child process did not start
    ├── RpcError                            cosmos.errors                     answers a gRPC call
    │   ├── InvalidArgumentError            cosmos.errors                     INVALID_ARGUMENT + violations
    │   │   ├── OutsideStorageRoot          cosmos.security.storage           a URI outside the caller's area
    │   │   ├── OutsideStorageRootError     cosmos.client.errors              the same, client side
    │   │   └── UnknownProfileError         cosmos.client.errors              no such profile or ladder
    │   ├── FailedPreconditionError         cosmos.errors                     FAILED_PRECONDITION
    │   │   ├── AlreadyTerminalError        cosmos.client.errors              the target already ended
    │   │   ├── UnsatisfiableResourcesError cosmos.client.errors              no agent could ever run the job
    │   │   └── UnsupportedRuntimeError     cosmos.client.errors              no agent has the runtime
    │   ├── NotFoundError                   cosmos.errors                     NOT_FOUND
    │   │   ├── EncodeNotFoundError         cosmos.client.errors              no such encode
    │   │   ├── JobNotFoundError            cosmos.client.errors              no such job
    │   │   └── WorkflowNotFoundError       cosmos.client.errors              no such workflow
    │   ├── AlreadyExistsError              cosmos.errors                     ALREADY_EXISTS
    │   │   └── RequestIdReusedError        cosmos.client.errors              request_id reused
    │   ├── AbortedError                    cosmos.errors                     ABORTED: re-read and retry
    │   ├── UnauthenticatedError            cosmos.errors                     UNAUTHENTICATED
    │   ├── PermissionDeniedError           cosmos.errors                     PERMISSION_DENIED
    │   │   └── ForbiddenExecutableError    cosmos.client.errors              executable not allowed
    │   ├── UnavailableError                cosmos.errors                     UNAVAILABLE: retry later
    │   │   └── NotLeaderError              cosmos.stratum.leader             ask the leader instead
    │   └── ResourceExhaustedError          cosmos.errors                     RESOURCE_EXHAUSTED
    ├── PublishError                        cosmos.runtime.publisher          JetStream refused a publish
    ├── S3Error                             cosmos.runtime.s3_errors          an S3 operation failed
    │   ├── ChecksumMismatch                cosmos.runtime.s3_errors          read is not what was written
    │   ├── InvalidS3Uri                    cosmos.runtime.s3_errors          not an s3://bucket/key URI
    │   ├── S3AccessDenied                  cosmos.runtime.s3_errors          credentials missing or refused
    │   ├── S3NotFound                      cosmos.runtime.s3_errors          no such object or bucket
    │   └── S3Unavailable                   cosmos.runtime.s3_errors          unreachable after the retries
    ├── SecretsError                        cosmos.security.secrets           sealed secrets cannot be opened
    ├── InvalidJobError                     cosmos.client.errors              build() refused (a ValueError)
    ├── JobError                            cosmos.client.errors              the job did not succeed
    │   ├── JobCancelledError               cosmos.client.errors              CANCELLED
    │   ├── JobFailedError                  cosmos.client.errors              FAILED
    │   └── JobTimedOutError                cosmos.client.errors              TIMED_OUT
    ├── StepError                           cosmos.sdk.worker                 a handler fails its step
    ├── MediaError                          cosmos.optimus.media.ffmpeg       a media CLI failure
    │   ├── FfmpegError                     cosmos.optimus.media.ffmpeg       ffmpeg exited non-zero
    │   ├── InputError                      cosmos.optimus.media.ffmpeg       bad input or usage (exit 2)
    │   │   ├── CorruptMedia                cosmos.optimus.media.ffmpeg       a truncated or corrupt file
    │   │   ├── OutputExists                cosmos.optimus.media.publish      publish would replace files
    │   │   └── InjectedFault               cosmos.optimus.media.resume       the fault a drill asked for
    │   └── VerifyError                     cosmos.optimus.media.verify       the package failed a check
    ├── UnknownLadderError                  cosmos.optimus.profiles           no such ladder (a KeyError)
    ├── UnknownProfileError                 cosmos.optimus.profiles           no such profile (a KeyError)
    ├── Conflict                            cosmos.plato.store                a compare-and-set lost
    ├── TooLarge                            cosmos.plato.records              a header outgrows one message
    ├── WorkflowFailed                      cosmos.plato.engine.core          fails the workflow at once
    ├── StepError                           cosmos.plato.testing              a test handler fails its step
    ├── InexactNumber                       cosmos.protocol.values            int beyond 2^53 (a ValueError)
    ├── SyntaxProblem                       cosmos.plato.language.expr_tokens an expression is malformed
    ├── TemplateProblem                     cosmos.plato.language.templates   a template cannot be compiled
    ├── Abort                               cosmos.plato.language.yaml_reader YAML too big or deep
    ├── LeadershipLost                      cosmos.stratum.leader             this replica is leader no more
    ├── PlacementError                      cosmos.stratum.scheduling.cluster does not fit (a ValueError)
    ├── UnsupportedRuntime                  cosmos.stratum.agent.containers   runtime not on this agent
    ├── SandboxError                        cosmos.stratum.agent.sandbox      a sandbox cannot be set up
    ├── Refused                             cosmos.stratum.agent.attempt      an attempt cannot start
    ├── Stopped                             cosmos.stratum.agent.attempt      cancelled between processes
    ├── Detached                            cosmos.cli.encode_watch           the user stopped watching
    └── StagingError                        cosmos.stratum.agent.stores       an artifact could not be staged
        ├── InvalidArtifact                 cosmos.stratum.agent.stores       malformed path or URI
        ├── UnsupportedScheme               cosmos.stratum.agent.stores       no store for the URI's scheme
        ├── InputFailed                     cosmos.stratum.agent.stores       an input could not be fetched
        │   └── InputMissing                cosmos.stratum.agent.stores       the input does not exist
        ├── OutputFailed                    cosmos.stratum.agent.stores       an output could not be stored
        │   └── OutputExists                cosmos.stratum.agent.stores       the destination holds files
        ├── StorageUnavailable              cosmos.stratum.agent.stores       the store failed after retries
        ├── OutsideStorageRoot              cosmos.stratum.agent.stores       a file:// URI outside the area
        └── NoSpace                         cosmos.stratum.agent.stores       the disk is full

A class that is also a builtin error (``KeyError``, ``ValueError``) says so: it was one before it
joined the tree, and callers catch it as one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cosmos.common.v1 import errors_pb2

if TYPE_CHECKING:
    import grpc

Reason = errors_pb2.ErrorReason
"""``cosmos.common.v1.ErrorReason``: the machine-readable causes (``Reason.ERROR_REASON_NOT_LEADER``).
Errors are raised with one of its values, so a misspelt reason fails type checking, not a client."""


def reason_name(reason: Reason.ValueType) -> str:
    """The value's name: what ``google.rpc.ErrorInfo.reason`` carries on the wire."""
    return Reason.Name(reason)


class _StatusCode:
    """An error class's gRPC status code, named when the class is defined and looked up in ``grpc``
    when first read: a process that only raises and reports errors (a job step, the CLI) need not load
    grpc (about 45 ms of each chunk job's start). An instance may set its own (a received error): it
    is kept in the instance, which a descriptor without ``__set__`` leaves to be read first."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type | None = None) -> grpc.StatusCode:
        import grpc

        return grpc.StatusCode[self.name]


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

    code = _StatusCode("INTERNAL")
    reason: str = reason_name(Reason.ERROR_REASON_UNSPECIFIED)
    """``google.rpc.ErrorInfo.reason``: a :data:`Reason` value's name (a name this build may not know
    when the error was received from a newer server)."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason.ValueType | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason_name(reason)
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)


class InvalidArgumentError(RpcError):
    """The request is malformed; each offending field is named in ``violations``."""

    code = _StatusCode("INVALID_ARGUMENT")
    reason = reason_name(Reason.ERROR_REASON_INVALID_ARGUMENT)


def invalid(
    field: str,
    description: str,
    *,
    message: str | None = None,
    reason: Reason.ValueType | None = None,
    metadata: Mapping[str, str] | None = None,
) -> InvalidArgumentError:
    """INVALID_ARGUMENT for one offending ``field``: ``description`` is its violation and, unless
    ``message`` says otherwise, the message is ``"<field>: <description>"``."""
    return InvalidArgumentError(
        f"{field}: {description}" if message is None else message,
        reason=reason,
        metadata=metadata,
        violations=[FieldViolation(field, description)],
    )


def require(
    value: object, field: str, description: str = "is required", *, message: str | None = None
) -> None:
    """Raise :func:`invalid` for ``field`` when ``value`` is empty (a required request field left unset);
    the message is ``"<field> is required"`` unless ``message`` says otherwise."""
    if not value:
        raise invalid(field, description, message=f"{field} is required" if message is None else message)


class FailedPreconditionError(RpcError):
    """The request is well formed but the system is not in a state to accept it."""

    code = _StatusCode("FAILED_PRECONDITION")


class NotFoundError(RpcError):
    """The named resource does not exist."""

    code = _StatusCode("NOT_FOUND")


class AlreadyExistsError(RpcError):
    """A resource with the same identity exists with different content."""

    code = _StatusCode("ALREADY_EXISTS")


class AbortedError(RpcError):
    """A concurrency conflict (stale attempt, lost compare-and-set); the caller may re-read and retry."""

    code = _StatusCode("ABORTED")


class UnauthenticatedError(RpcError):
    """The call carries no valid credentials (missing, expired, malformed, not the platform's)."""

    code = _StatusCode("UNAUTHENTICATED")
    reason = reason_name(Reason.ERROR_REASON_UNAUTHENTICATED)


class PermissionDeniedError(RpcError):
    """The caller is known but may not do this; ``metadata`` names the missing permission."""

    code = _StatusCode("PERMISSION_DENIED")
    reason = reason_name(Reason.ERROR_REASON_PERMISSION_DENIED)


class UnavailableError(RpcError):
    """A dependency (NATS, another service) cannot be reached right now; retrying later may succeed."""

    code = _StatusCode("UNAVAILABLE")
    reason = reason_name(Reason.ERROR_REASON_SERVICE_UNAVAILABLE)
    retry_delay: float = 1.0
    """Seconds a caller should wait before retrying (sent as ``google.rpc.RetryInfo``)."""


class ResourceExhaustedError(RpcError):
    """The caller made too many calls in a short time, or a quota is spent; retry later."""

    code = _StatusCode("RESOURCE_EXHAUSTED")
    reason = reason_name(Reason.ERROR_REASON_RATE_LIMITED)
