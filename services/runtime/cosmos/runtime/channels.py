"""Client channels between Cosmos processes: keepalive for long streams, tracing on every call."""

from __future__ import annotations

import grpc

from cosmos.runtime import propagation, telemetry
from cosmos.runtime.server import KEEPALIVE_OPTIONS


def insecure_channel(target: str) -> grpc.aio.Channel:
    """A plaintext grpc.aio channel to ``target`` (``HOST:PORT``) that propagates the trace."""
    if telemetry.exporting():
        return grpc.aio.insecure_channel(
            target, options=KEEPALIVE_OPTIONS, interceptors=telemetry.client_interceptors()
        )
    # Nothing exported: no client spans, and no interceptor (each adds a task per call); the
    # context still goes along in the metadata.
    return propagation.Channel(grpc.aio.insecure_channel(target, options=KEEPALIVE_OPTIONS))
