"""Client channels between Cosmos processes: keepalive for long streams, tracing on every call."""

from __future__ import annotations

import grpc

from cosmos.runtime import telemetry
from cosmos.runtime.server import KEEPALIVE_OPTIONS


def insecure_channel(target: str) -> grpc.aio.Channel:
    """A plaintext grpc.aio channel to ``target`` (``HOST:PORT``) that propagates the trace."""
    return grpc.aio.insecure_channel(
        target, options=KEEPALIVE_OPTIONS, interceptors=telemetry.client_interceptors()
    )
