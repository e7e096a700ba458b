"""OpenTelemetry tracing configured from the standard ``OTEL_*`` variables.

Spans are exported only when asked: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or ``none``) or an
OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). The OTLP
protocol follows ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc`` default, or ``http/protobuf``).
``OTEL_SDK_DISABLED=true`` turns everything off. Resource attributes come from ``OTEL_SERVICE_NAME``
and ``OTEL_RESOURCE_ATTRIBUTES`` as usual.

With an exporter, every process records its spans with the SDK and the OpenTelemetry gRPC
instrumentation. Without one, recording spans nobody reads costs a third of a millisecond per hop, so
nothing is recorded, but the trace context still flows: a gRPC server continues the caller's context
(or begins a new trace when none came), its calls and NATS publishes carry that context on, and
``tracer.start_as_current_span`` keeps it current (:mod:`cosmos.runtime.propagation`). Log lines keep
their trace id, and a process further down that does export joins the caller's trace.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import propagate, trace

from cosmos import errors
from cosmos.runtime import propagation

# The SDK and the gRPC instrumentation are imported only by a process that exports (about 50 ms of
# every server's start otherwise, for code it never runs).
if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

_provider: TracerProvider | None = None


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    names = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not names:
        has_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return ["otlp"] if has_endpoint else []
    return [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
        )
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            return GrpcExporter()
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            return HttpExporter()
        raise errors.ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected grpc or http/protobuf")
    raise errors.ConfigError(f"OTEL_TRACES_EXPORTER={name!r}: expected otlp, console or none")


def exporting(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process records and exports spans (an exporter is configured, the SDK enabled)."""
    env = os.environ if env is None else env
    return env.get("OTEL_SDK_DISABLED", "").lower() != "true" and bool(_exporter_names(env))


def service_name(component: str) -> str:
    """The ``service.name`` of a Cosmos component (``optimus``, ``plato``, ``stratum``, ``agent``):
    ``cosmos-<component>``, under ``cosmos up`` and in the deploy manifests' ``OTEL_SERVICE_NAME``
    alike (tests/deploy checks they agree)."""
    return f"cosmos-{component}"


def configure_tracing(service_name: str, env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Install the global tracer provider for ``service_name`` once per process.

    Returns the SDK provider when spans are exported, else None (context is only propagated).
    """
    global _provider
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    if _provider is not None:
        return _provider
    names = _exporter_names(env)
    if not names:
        propagation.install()
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)
    _provider = provider
    return provider


def server_interceptors() -> list[Any]:
    """Interceptors that continue the caller's trace in every RPC (a server span when exporting)."""
    if exporting():
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        return [aio_server_interceptor()]  # type: ignore[no-untyped-call]
    return [propagation.ServerInterceptor()]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that open a client span per RPC and send its context in the metadata.

    Only when exporting; otherwise :func:`cosmos.runtime.channels.insecure_channel` sends the
    context without an interceptor.
    """
    if exporting():
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return list(aio_client_interceptors())  # type: ignore[no-untyped-call]
    return []


def inject_headers(headers: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """W3C trace context of the current span as message headers (for NATS publishes)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def batch_span(name: str, carriers: Sequence[Mapping[str, str]]) -> Any:
    """A span (context manager) for one piece of work done for several traces at once, e.g. a batched
    RPC: a child of the first carrier's trace (so a batch of one is simply part of its trace) and
    linked to every carrier's span, rather than a trace of its own that nobody's trace leads to."""
    contexts = [extract_context(c) for c in carriers]
    links = []
    for ctx in contexts:
        span_context = trace.get_current_span(ctx).get_span_context()
        if span_context.is_valid:
            links.append(trace.Link(span_context))
    tracer = trace.get_tracer("cosmos.runtime.telemetry")
    return tracer.start_as_current_span(
        name,
        context=contexts[0] if contexts else None,
        links=links,
        attributes={"cosmos.batch.size": len(carriers)},
    )


def extract_context(headers: Mapping[str, str] | None) -> Any:
    """The trace context carried by message headers, to parent a consumer's span."""
    return propagate.extract(dict(headers or {}))
