"""Turning :class:`cosmos.errors.RpcError` into rich ``google.rpc.Status`` answers.

Handlers raise; this interceptor answers with the error's status code, its message, an ``ErrorInfo``
(reason, domain ``cosmos.dev``, metadata) and, for field problems, a ``BadRequest`` with one violation
per field. Clients read them back with :func:`details_of`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from cosmos import errors
from cosmos.runtime import handlers

DOMAIN = "cosmos.dev"
log = logging.getLogger(__name__)


def status_proto(error: errors.RpcError) -> status_pb2.Status:
    """The ``google.rpc.Status`` answering ``error``: its code, message, ``ErrorInfo`` and ``BadRequest``."""
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata))
    details.append(info)
    if error.violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
        details.append(bad)
    code: int = error.code.value[0]
    return status_pb2.Status(code=code, message=error.message, details=details)


def to_status(error: errors.RpcError) -> grpc.Status:
    """The rich status answering ``error`` (for ``context.abort_with_status``)."""
    return rpc_status.to_status(status_proto(error))


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a status number (UNKNOWN for one gRPC does not define)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


def _error_classes(cls: type[errors.RpcError]) -> dict[grpc.StatusCode, type[errors.RpcError]]:
    found: dict[grpc.StatusCode, type[errors.RpcError]] = {}
    for sub in cls.__subclasses__():
        found.setdefault(sub.code, sub)
        for code, deeper in _error_classes(sub).items():
            found.setdefault(code, deeper)
    return found


def _details(
    status: status_pb2.Status | None,
) -> tuple[error_details_pb2.ErrorInfo | None, list[error_details_pb2.BadRequest.FieldViolation]]:
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[error_details_pb2.BadRequest.FieldViolation] = []
    for detail in status.details if status else []:
        found = error_details_pb2.ErrorInfo()
        if detail.Unpack(found):  # False when the detail is of another type
            info = found
            continue
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations.extend(bad.field_violations)
    return info, violations


def from_status(status: status_pb2.Status) -> errors.RpcError:
    """The error a ``google.rpc.Status`` (e.g. one result of a batch call) stands for, details included.

    Raised by a handler, it answers with the same code, message, ``ErrorInfo`` and violations.
    """
    code = status_code(status.code)
    info, violations = _details(status)
    cls = _error_classes(errors.RpcError).get(code, errors.RpcError)
    error = cls(
        status.message,
        reason=info.reason if info is not None and info.reason else None,
        metadata=dict(info.metadata) if info is not None else {},
        violations=[errors.FieldViolation(v.field, v.description) for v in violations],
    )
    error.code = code
    return error


def details_of(
    err: grpc.aio.AioRpcError | grpc.RpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, list[error_details_pb2.BadRequest.FieldViolation]]:
    """The ``ErrorInfo`` and field violations carried by a failed call, if any."""
    return _details(rpc_status.from_call(err))  # type: ignore[arg-type]


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # grpc-stubs lags grpcio
    """Answers every :class:`RpcError` raised by a handler with its rich status."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        return handlers.wrap(await continuation(handler_call_details), _wrap_unary, _wrap_stream)


def _wrap_unary(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: Any) -> Any:
        try:
            result = fn(request, context)
            return await result if isinstance(result, Awaitable) else result
        except errors.RpcError as exc:
            await context.abort_with_status(to_status(exc))
        except NotImplementedError:
            await _abort_unimplemented(context)

    return call


def _wrap_stream(fn: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for item in handlers.items(fn(request, context)):
                yield item
        except errors.RpcError as exc:
            await context.abort_with_status(to_status(exc))
        except NotImplementedError:
            await _abort_unimplemented(context)

    return call


async def _abort_unimplemented(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # Generated base servicers raise NotImplementedError; answer UNIMPLEMENTED rather than UNKNOWN.
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented yet")
