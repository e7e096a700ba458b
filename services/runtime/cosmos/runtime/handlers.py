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
