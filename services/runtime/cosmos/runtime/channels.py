"""Client channels between Cosmos processes: mutual TLS, keepalive for long streams, tracing on every call.

:func:`connect` is the one way a Cosmos process (or the CLI) dials a Cosmos server: it presents the
process's certificate (re-read when renewed), or a platform token, and checks that the server is the
role it meant to reach; with ``--insecure`` it dials plaintext (loopback development only).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import grpc

from cosmos import errors
from cosmos.runtime import propagation, telemetry
from cosmos.runtime.server import KEEPALIVE_OPTIONS
from cosmos.security import tls
from cosmos.security.config import Security


def _wrap(make: Any) -> grpc.aio.Channel:
    """``make(interceptors=...)`` with tracing: client spans when exporting, else context only."""
    if telemetry.exporting():
        channel: grpc.aio.Channel = make(interceptors=telemetry.client_interceptors())
        return channel
    # Nothing exported: no client spans, and no interceptor (each adds a task per call); the
    # context still goes along in the metadata.
    return propagation.Channel(make(interceptors=None))


def insecure_channel(target: str) -> grpc.aio.Channel:
    """A plaintext grpc.aio channel to ``target`` (``HOST:PORT``) that propagates the trace."""
    return _wrap(partial(grpc.aio.insecure_channel, target, options=KEEPALIVE_OPTIONS))


def connect(target: str, role: str, security: Security) -> grpc.aio.Channel:
    """A channel to the ``role`` server (optimus, plato, stratum) at ``target``."""
    if security.insecure:
        return insecure_channel(target)
    options = [*KEEPALIVE_OPTIONS, *tls.server_name_options(role)]
    if security.tls is None:
        if not security.token or security.ca is None:
            raise errors.ConfigError(
                f"no credentials to reach {role} at {target}: give a certificate (--pki-dir or --tls-*), "
                "a token with its CA, or --insecure on loopback"
            )
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=security.ca.read_bytes()),
            grpc.access_token_call_credentials(security.token),
        )
        return _wrap(partial(grpc.aio.secure_channel, target, creds, options=options))
    return tls.ReloadingChannel(
        security.tls, lambda creds: _wrap(partial(grpc.aio.secure_channel, target, creds, options=options))
    )
