"""Turning :class:`cosmos.errors.RpcError` into rich ``google.rpc.Status`` answers.

Handlers raise; this interceptor answers with the error's status code, its message, an ``ErrorInfo``
(reason, domain ``cosmos.dev``, metadata), for field problems a ``BadRequest`` with one violation per
field, and for UNAVAILABLE a ``RetryInfo``. Clients read them back with :func:`details_of`.

Answers stay small whatever a request held: messages, fields, descriptions and metadata are cut to
:data:`MAX_MESSAGE` / :data:`MAX_DETAIL` characters (a 1 MB id echoed into the trailer would exceed
gRPC's header limit and turn into RESOURCE_EXHAUSTED). What a handler did not mean to raise is still
answered with a code that says what happened (:func:`as_rpc_error`): NATS unreachable is UNAVAILABLE,
a downstream call's status is passed on, anything else is INTERNAL with a short message and logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from cosmos import errors
from cosmos.runtime import handlers

DOMAIN = "cosmos.dev"
MAX_MESSAGE = 1024
"""Characters of a status message at most."""
MAX_DETAIL = 256
"""Characters of a violation's field or description, or of a metadata key or value, at most."""
MAX_VIOLATIONS = 20
"""Field violations in one answer at most."""
NATS_RETRY_DELAY = 2.0
"""Seconds callers are asked to wait when NATS cannot be reached."""
log = logging.getLogger(__name__)


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    note = f"… ({len(text) - limit} more characters)"
    return text[: max(0, limit - len(note))] + note


def status_proto(error: errors.RpcError) -> status_pb2.Status:
    """The ``google.rpc.Status`` answering ``error``: its code, message, ``ErrorInfo``, ``BadRequest``
    and ``RetryInfo``, every text clipped (:func:`clip`)."""
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    metadata = {clip(k, 64): clip(v) for k, v in list(error.metadata.items())[:16]}
    info.Pack(error_details_pb2.ErrorInfo(reason=clip(error.reason, 64), domain=DOMAIN, metadata=metadata))
    details.append(info)
    if error.violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=clip(v.field), description=clip(v.description)
                    )
                    for v in error.violations[:MAX_VIOLATIONS]
                ]
            )
        )
        details.append(bad)
    if isinstance(error, errors.UnavailableError):
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_delay * 1000))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    code: int = error.code.value[0]
    return status_pb2.Status(code=code, message=clip(error.message, MAX_MESSAGE), details=details)


_CONSUMER_NOT_FOUND = 10014
"""JetStream's error code for a consumer that does not exist (any more)."""


def nats_unavailable(exc: BaseException) -> errors.UnavailableError:
    """UNAVAILABLE (with RetryInfo) for a NATS call that failed because NATS is out of reach."""
    error = errors.UnavailableError(
        f"NATS JetStream is not reachable right now ({type(exc).__name__}); retry with the same request_id",
        metadata={"dependency": "nats"},
    )
    error.retry_delay = NATS_RETRY_DELAY
    return error


def as_rpc_error(exc: Exception, method: str = "") -> errors.RpcError:
    """The answer to an exception a handler let through: :class:`RpcError` as it is; NATS out of reach
    UNAVAILABLE; a record or message NATS refuses as too big INVALID_ARGUMENT; a failed downstream
    call's status passed on; anything else INTERNAL (logged with its traceback here, never sent)."""
    if isinstance(exc, errors.RpcError):
        return exc
    answer = _nats_failure(exc)
    if answer is not None:
        return answer
    if isinstance(exc, grpc.aio.AioRpcError):
        try:
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        except ValueError:
            status = None
        if status is not None:
            return from_status(status)
        error = errors.RpcError(f"a downstream call failed: {exc.code().name}: {exc.details()}")
        error.code = exc.code()
        return error
    log.error("unexpected error in a handler", exc_info=exc, extra={"fields": {"method": method}})
    return errors.RpcError(f"internal error ({type(exc).__name__}); it was logged")


def _nats_failure(exc: Exception) -> errors.RpcError | None:
    """The answer to a NATS failure, None for anything else."""
    # Imported here: the CLI reads answers with this module (details_of), and nats-py (which loads
    # aiohttp) is a third of its start-up. The servers that raise these have loaded it long before.
    import nats.errors
    import nats.js.errors

    from cosmos.runtime.publisher import PublishError

    unreachable = (
        nats.errors.TimeoutError,
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.ConnectionDrainingError,
        nats.errors.NoServersError,
        nats.errors.NoRespondersError,
        nats.errors.OutboundBufferLimitError,
        nats.errors.StaleConnectionError,
        nats.errors.FlushTimeoutError,
        nats.errors.UnexpectedEOF,
        nats.js.errors.ServiceUnavailableError,
        nats.js.errors.NoStreamResponseError,
    )
    if (
        isinstance(exc, unreachable)
        or (
            # A publish answered 503 (no responders: the stream's leader is being elected after a NATS
            # node died) or never acknowledged (asyncio's TimeoutError from the publisher's ack wait) is
            # a failover in progress: the same request_id again succeeds once a new leader is in place.
            isinstance(exc, PublishError) and exc.code == 503
        )
        or isinstance(exc, TimeoutError)
        or (
            isinstance(exc, nats.js.errors.APIError)
            # 503: JetStream not ready. 10014, consumer not found: a read's ephemeral consumer (a KV
            # watch) is lost when nats-server restarts under it; the same read again works.
            and (getattr(exc, "code", None) == 503 or getattr(exc, "err_code", None) == _CONSUMER_NOT_FOUND)
        )
    ):
        return nats_unavailable(exc)
    if isinstance(exc, nats.errors.MaxPayloadError):
        return errors.InvalidArgumentError(
            "the request makes a record larger than the store accepts; send less",
            metadata={"dependency": "nats"},
        )
    return None


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
        metadata=dict(info.metadata) if info is not None else {},
        violations=[errors.FieldViolation(v.field, v.description) for v in violations],
    )
    error.code = code
    if info is not None and info.reason:
        error.reason = info.reason  # as sent: a newer server may send a name this build does not know
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
        except grpc.aio.AbortError:
            raise  # the handler answered itself (context.abort)
        except NotImplementedError:
            await _abort_unimplemented(context)
        except Exception as exc:
            await context.abort_with_status(to_status(as_rpc_error(exc)))

    return call


def _wrap_stream(fn: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for item in handlers.items(fn(request, context)):
                yield item
        except grpc.aio.AbortError:
            raise
        except NotImplementedError:
            await _abort_unimplemented(context)
        except Exception as exc:
            await context.abort_with_status(to_status(as_rpc_error(exc)))

    return call


async def _abort_unimplemented(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # Generated base servicers raise NotImplementedError; answer UNIMPLEMENTED rather than UNKNOWN.
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented yet")
