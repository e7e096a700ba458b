"""The errors the Cosmos client raises: one tree, rooted in :class:`cosmos.errors.CosmosError`.

A failed call to a Cosmos service becomes the class of its gRPC status code, or a narrower one when
the ``google.rpc.ErrorInfo`` reason says more (e.g. ``NOT_FOUND`` + ``ERROR_REASON_JOB_NOT_FOUND`` is
:class:`JobNotFoundError`, which is a :class:`~cosmos.errors.NotFoundError`). Every API error keeps
``code``, ``reason``, ``metadata`` (the ids involved) and ``violations`` (the fields a
``BadRequest`` named); the original ``grpc.aio.AioRpcError`` is its ``__cause__``. Catch as narrowly
or as broadly as the code needs::

    CosmosError
    ├── ConfigError                        no context, unreadable config or credentials
    ├── InvalidJobError                    Job.builder().build() found problems (never sent)
    ├── JobError                           the job ran and did not succeed (handle.result())
    │   ├── JobFailedError                 non-zero exit, lost inputs, retries exhausted
    │   ├── JobCancelledError
    │   └── JobTimedOutError
    └── RpcError                           a Cosmos service answered with an error status
        ├── InvalidArgumentError           INVALID_ARGUMENT
        │   ├── OutsideStorageRootError      ERROR_REASON_OUTSIDE_STORAGE_ROOT
        │   └── UnknownProfileError          ERROR_REASON_UNKNOWN_PROFILE
        ├── NotFoundError                  NOT_FOUND
        │   ├── JobNotFoundError             ERROR_REASON_JOB_NOT_FOUND
        │   ├── EncodeNotFoundError          ERROR_REASON_ENCODE_NOT_FOUND
        │   └── WorkflowNotFoundError        ERROR_REASON_WORKFLOW_NOT_FOUND
        ├── AlreadyExistsError             ALREADY_EXISTS
        │   └── RequestIdReusedError         ERROR_REASON_REQUEST_ID_REUSED
        ├── FailedPreconditionError        FAILED_PRECONDITION
        │   ├── UnsatisfiableResourcesError  ERROR_REASON_UNSATISFIABLE_RESOURCES
        │   ├── UnsupportedRuntimeError      ERROR_REASON_UNSUPPORTED_RUNTIME
        │   └── AlreadyTerminalError         ERROR_REASON_ALREADY_TERMINAL
        ├── AbortedError                   ABORTED (retry with the same request_id)
        ├── UnauthenticatedError           UNAUTHENTICATED
        ├── PermissionDeniedError          PERMISSION_DENIED
        │   └── ForbiddenExecutableError     ERROR_REASON_FORBIDDEN_EXECUTABLE
        ├── ResourceExhaustedError         RESOURCE_EXHAUSTED (rate limited)
        └── UnavailableError               UNAVAILABLE (StratumClient retries it; see below)

``StratumClient`` retries ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` with backoff for as long as it
takes (a server restart is not the caller's failure, as everywhere in Cosmos); bound a call with
``asyncio.timeout`` to give up sooner. Codes with no class of their own (``INTERNAL``,
``UNKNOWN``...) are a plain :class:`RpcError` whose ``code`` says which.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from cosmos.errors import (
    AbortedError,
    AlreadyExistsError,
    ConfigError,
    CosmosError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    Reason,
    ResourceExhaustedError,
    RpcError,
    UnauthenticatedError,
    UnavailableError,
    reason_name,
)
from cosmos.runtime import rpc_errors
from cosmos.stratum.v1 import job_pb2

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "AlreadyTerminalError",
    "ConfigError",
    "CosmosError",
    "EncodeNotFoundError",
    "FailedPreconditionError",
    "ForbiddenExecutableError",
    "InvalidArgumentError",
    "InvalidJobError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobNotFoundError",
    "JobTimedOutError",
    "NotFoundError",
    "OutsideStorageRootError",
    "PermissionDeniedError",
    "RequestIdReusedError",
    "ResourceExhaustedError",
    "RpcError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnknownProfileError",
    "UnsatisfiableResourcesError",
    "UnsupportedRuntimeError",
    "WorkflowNotFoundError",
    "from_grpc",
]


class InvalidJobError(CosmosError, ValueError):
    """``JobBuilder.build()`` found problems; ``violations`` names each field by its JobSpec path."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        lines = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid job: {lines}")


class JobError(CosmosError):
    """The job reached a terminal state other than SUCCEEDED; ``job`` is its final snapshot."""

    def __init__(self, job: job_pb2.Job) -> None:
        self.job = job
        state = job_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        why = job.failure_reason or job.result.error or job.result.failure_code
        tail = job.result.stderr_tail.strip().splitlines()[-1:] if job.result.stderr_tail else []
        super().__init__(f"job {job.job_id} {state}: {why}" + (f" ({tail[0]})" if tail else ""))

    @property
    def result(self) -> job_pb2.JobResult:
        """How the last attempt ended (exit code, signal, failure class and code, stderr tail)."""
        return self.job.result


class JobFailedError(JobError):
    """The job FAILED: its program exited non-zero, or an input, output or retry budget failed."""


class JobCancelledError(JobError):
    """The job was CANCELLED (by this client or anyone else)."""


class JobTimedOutError(JobError):
    """The job ran past its timeout and was killed (TIMED_OUT)."""


class OutsideStorageRootError(InvalidArgumentError):
    """A URI lies outside the caller's storage roots."""

    reason = reason_name(Reason.ERROR_REASON_OUTSIDE_STORAGE_ROOT)


class UnknownProfileError(InvalidArgumentError):
    """A profile or ladder name is not in the catalogue."""

    reason = reason_name(Reason.ERROR_REASON_UNKNOWN_PROFILE)


class JobNotFoundError(NotFoundError):
    """No such job (or not one this caller's tenant may see)."""

    reason = reason_name(Reason.ERROR_REASON_JOB_NOT_FOUND)


class EncodeNotFoundError(NotFoundError):
    """No such encode."""

    reason = reason_name(Reason.ERROR_REASON_ENCODE_NOT_FOUND)


class WorkflowNotFoundError(NotFoundError):
    """No such workflow."""

    reason = reason_name(Reason.ERROR_REASON_WORKFLOW_NOT_FOUND)


class RequestIdReusedError(AlreadyExistsError):
    """The request_id was used before for a different request."""

    reason = reason_name(Reason.ERROR_REASON_REQUEST_ID_REUSED)


class UnsatisfiableResourcesError(FailedPreconditionError):
    """No agent in the pool could ever run the job (resources, GPU models)."""

    reason = reason_name(Reason.ERROR_REASON_UNSATISFIABLE_RESOURCES)


class UnsupportedRuntimeError(FailedPreconditionError):
    """No agent has the requested runtime."""

    reason = reason_name(Reason.ERROR_REASON_UNSUPPORTED_RUNTIME)


class AlreadyTerminalError(FailedPreconditionError):
    """The target already ended and cannot change."""

    reason = reason_name(Reason.ERROR_REASON_ALREADY_TERMINAL)


class ForbiddenExecutableError(PermissionDeniedError):
    """The job's executable or image is not on its tenant's allow-list."""

    reason = reason_name(Reason.ERROR_REASON_FORBIDDEN_EXECUTABLE)


_BY_REASON: dict[str, type[RpcError]] = {
    cls.reason: cls
    for cls in (
        OutsideStorageRootError,
        UnknownProfileError,
        JobNotFoundError,
        EncodeNotFoundError,
        WorkflowNotFoundError,
        RequestIdReusedError,
        UnsatisfiableResourcesError,
        UnsupportedRuntimeError,
        AlreadyTerminalError,
        ForbiddenExecutableError,
    )
}
_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        AbortedError,
        UnauthenticatedError,
        PermissionDeniedError,
        ResourceExhaustedError,
        UnavailableError,
    )
}


def from_grpc(exc: grpc.aio.AioRpcError) -> RpcError:
    """The :class:`RpcError` subclass a failed call stands for (raise it ``from exc``)."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]  # aio errors carry the trailers too
    if status is None:  # no rich details (e.g. the connection failed before any server answered)
        status = status_pb2.Status(code=exc.code().value[0], message=exc.details() or exc.code().name)
    plain = rpc_errors.from_status(status)
    # A reason is trusted only with the code it is documented with: a reason sent with another code
    # would otherwise put the error under a branch its code does not belong to.
    by_reason = _BY_REASON.get(plain.reason)
    cls = by_reason if by_reason is not None and by_reason.code == plain.code else _BY_CODE.get(plain.code)
    if cls is None:
        return plain
    error = cls(plain.message, metadata=plain.metadata, violations=plain.violations)
    error.code, error.reason = plain.code, plain.reason
    return error
