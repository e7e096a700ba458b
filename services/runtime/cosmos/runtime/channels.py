"""Client channels between Cosmos processes: mutual TLS, keepalive for long streams, tracing on every call.

:func:`connect` is the one way a Cosmos process (or the CLI) dials a Cosmos server: it presents the
process's certificate (re-read when renewed), or a platform token, and checks that the server is the
role it meant to reach; with ``--insecure`` it dials plaintext (loopback development only).

Replicas: a target naming several addresses (``10.0.0.1:50053,10.0.0.2:50053``; ``localhost`` is
taken as 127.0.0.1) or a ``dns:///`` name that resolves to several spreads calls over them round
robin, and a call answered UNAVAILABLE before any reply (a replica down, or a Stratum follower
naming its leader) is tried again on the next one (:data:`REPLICAS_SERVICE_CONFIG`).
"""

from __future__ import annotations

import ipaddress
import json
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


REPLICAS_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
"""Channel settings for a target of several replicas: round robin, UNAVAILABLE retried elsewhere."""


def dial_target(target: str) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target for ``target`` and the options it needs (see the module doc on replicas)."""
    if target.startswith("dns:"):
        return target, [("grpc.service_config", json.dumps(REPLICAS_SERVICE_CONFIG))]
    if "," not in target:
        return target, []
    addresses = []
    for item in (part.strip() for part in target.split(",")):
        host, sep, port = item.rpartition(":")
        host = "127.0.0.1" if host == "localhost" else host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if not sep or not port.isdigit() or ip is None or ip.version != 4:
            raise errors.ConfigError(
                f"target {target!r}: {item!r} is not IPv4:PORT; name replicas by address "
                "(a:1,b:2) or by a DNS name resolving to all of them (dns:///name:port)"
            )
        addresses.append(f"{ip}:{port}")
    return "ipv4:" + ",".join(addresses), [("grpc.service_config", json.dumps(REPLICAS_SERVICE_CONFIG))]


def insecure_channel(target: str) -> grpc.aio.Channel:
    """A plaintext grpc.aio channel to ``target`` (``HOST:PORT``, or replicas) that propagates the trace."""
    dial, extra = dial_target(target)
    return _wrap(partial(grpc.aio.insecure_channel, dial, options=[*KEEPALIVE_OPTIONS, *extra]))


def connect(target: str, role: str, security: Security) -> grpc.aio.Channel:
    """A channel to the ``role`` server (optimus, plato, stratum) at ``target``."""
    if security.insecure:
        return insecure_channel(target)
    dial, extra = dial_target(target)
    options = [*KEEPALIVE_OPTIONS, *tls.server_name_options(role), *extra]
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
        return _wrap(partial(grpc.aio.secure_channel, dial, creds, options=options))
    return tls.ReloadingChannel(
        security.tls, lambda creds: _wrap(partial(grpc.aio.secure_channel, dial, creds, options=options))
    )
