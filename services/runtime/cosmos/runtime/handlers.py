"""Wrapping the behaviour of a gRPC method handler: what every server interceptor here does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

Behaviour = Callable[..., Any]
"""A handler's behaviour: ``(request or request iterator, context) -> response or response iterator``."""


async def items(result: Any) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour's ``result``: an async iterator of them, or an awaitable
    for a handler that writes with ``context.write()`` and returns None (then nothing)."""
    if isinstance(result, Awaitable):
        await result
        return
    async for item in result:
        yield item


def wrap(
    handler: Any, unary: Callable[[Behaviour], Behaviour], stream: Callable[[Behaviour], Behaviour]
) -> Any:
    """``handler`` (a ``grpc.RpcMethodHandler``: a namedtuple with exactly one of its four behaviours
    set) with that behaviour wrapped, by ``unary`` when it answers with one response, by ``stream`` when
    it streams them; None stays None (no such method)."""
    if handler is None:
        return None
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=unary(handler.unary_unary))
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=unary(handler.stream_unary))
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=stream(handler.unary_stream))
    if handler.stream_stream is not None:
        return handler._replace(stream_stream=stream(handler.stream_stream))
    return handler


def guarded(handler: Any, admit: Callable[[Any], None]) -> Any:
    """``handler`` with ``admit(request)`` run before its behaviour, unary or streaming: what it
    raises answers the call instead (a precondition: the request's shape, a dependency being up)."""

    def unary(fn: Behaviour) -> Behaviour:
        async def call(request: Any, context: Any) -> Any:
            admit(request)
            result = fn(request, context)
            return await result if isinstance(result, Awaitable) else result

        return call

    def stream(fn: Behaviour) -> Behaviour:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            admit(request)
            async for item in items(fn(request, context)):
                yield item

        return call

    return wrap(handler, unary, stream)
