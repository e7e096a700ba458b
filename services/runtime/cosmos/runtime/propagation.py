"""Trace context without recording spans: what tracing costs when no exporter is configured.

The OpenTelemetry SDK and its gRPC instrumentation record every span whether or not anything exports
it; on the submit path that was about a third of a millisecond of CPU per hop. When nothing is
exported (see :mod:`cosmos.runtime.telemetry`) this module keeps only what others rely on, the W3C
context (``traceparent``, through the configured propagators):

- :class:`ServerInterceptor` makes the caller's context current for the RPC, or a new trace's when the
  caller sent none (so every request still has a trace id in the logs and downstream);
- :class:`Channel` adds the current context to the metadata of every call;
- :class:`PropagatingTracer` (the global tracer once :func:`install` ran) answers
  ``start_as_current_span`` with the current context unchanged, so code that opens spans, and
  ``inject_headers`` for NATS publishes, carry it on.

A process downstream that does export therefore parents its spans to the last hop that recorded one.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from cosmos.runtime import handlers

_installed = False
_rand = random.Random()


def install() -> None:
    """Make :class:`PropagatingTracer` the global tracer (once per process)."""
    global _installed
    if not _installed:
        trace.set_tracer_provider(PropagatingTracerProvider())
        _installed = True


def _new_root() -> SpanContext:
    # The same shape as the SDK's RandomIdGenerator, sampled as its default sampler would.
    trace_id = _rand.getrandbits(128) or 1
    span_id = _rand.getrandbits(64) or 1
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


class PropagatingTracer(trace.NoOpTracer):
    """Spans that record nothing and carry their parent's context (or a new trace's, at a root)."""

    def start_span(
        self, name: str, context: otel_context.Context | None = None, *args: Any, **kwargs: Any
    ) -> trace.Span:
        parent = trace.get_current_span(context)
        if isinstance(parent, NonRecordingSpan) and parent.get_span_context().is_valid:
            return parent
        parent_context = parent.get_span_context()
        return NonRecordingSpan(parent_context if parent_context.is_valid else _new_root())


class PropagatingTracerProvider(trace.NoOpTracerProvider):
    """Hands out :class:`PropagatingTracer`."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _TRACER


_TRACER = PropagatingTracer()


# --------------------------------------------------------------------------- server side


def incoming(metadata: Sequence[tuple[str, str | bytes]] | None) -> otel_context.Context:
    """The context a caller sent in its metadata; a new trace's if it sent none."""
    carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
    ctx = propagate.extract(carrier) if carrier else otel_context.Context()
    if trace.get_current_span(ctx).get_span_context().is_valid or not _installed:
        return ctx
    return trace.set_span_in_context(NonRecordingSpan(_new_root()), ctx)


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # grpc-stubs lags grpcio
    """Runs every RPC in the caller's trace context."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        ctx = incoming(handler_call_details.invocation_metadata)
        return handlers.wrap(
            await continuation(handler_call_details), lambda fn: _unary(fn, ctx), lambda fn: _stream(fn, ctx)
        )


def _unary(fn: Callable[..., Any], ctx: otel_context.Context) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: Any) -> Any:
        token = otel_context.attach(ctx)
        try:
            result = fn(request, context)
            return await result if isinstance(result, Awaitable) else result
        finally:
            otel_context.detach(token)

    return call


def _stream(fn: Callable[..., Any], ctx: otel_context.Context) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: Any) -> AsyncIterator[Any]:
        token = otel_context.attach(ctx)
        try:
            async for item in handlers.items(fn(request, context)):
                yield item
        finally:
            # A generator closed from another task ends in another context; nothing to undo there.
            with contextlib.suppress(ValueError):
                otel_context.detach(token)

    return call


# --------------------------------------------------------------------------- client side


def outgoing(metadata: Any) -> Any:
    """``metadata`` plus the current trace context (as the configured propagators write it)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return metadata
    if isinstance(metadata, grpc.aio.Metadata):
        extended = grpc.aio.Metadata(*metadata)
        for key, value in carrier.items():
            extended.add(key, value)
        return extended
    return (*(metadata or ()), *carrier.items())


class _Injecting:
    """A multi-callable that adds the trace context to each call's metadata."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        return self._inner(*args, metadata=outgoing(metadata), **kwargs)


class Channel(grpc.aio.Channel):
    """A channel whose calls carry the current trace context (no interceptor, no span)."""

    def __init__(self, inner: grpc.aio.Channel) -> None:
        self._inner = inner

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        await self._inner.close(None)
        return None

    async def close(self, grace: float | None = None) -> None:
        await self._inner.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._inner.channel_ready()

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Injecting(self._inner.unary_unary(*args, **kwargs))

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Injecting(self._inner.unary_stream(*args, **kwargs))

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Injecting(self._inner.stream_unary(*args, **kwargs))

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Injecting(self._inner.stream_stream(*args, **kwargs))
