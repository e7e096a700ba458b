"""TLS for gRPC: mutual TLS on servers and clients, with certificate files reloaded when they change.

A server requires a client certificate signed by the platform CA on its main port; it re-reads its
certificate, key and CA whenever their files change (checked at each new handshake, so a renewed
certificate is served without a restart). A client presents its own certificate and checks the server
is the role it meant to reach: it asks for the name ``<role>.cosmos`` (see :mod:`cosmos.security.pki`).
Client channels re-read their files too: :class:`ReloadingChannel` opens a new channel for new calls
once the files changed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any

import grpc

from cosmos import errors
from cosmos.security import pki

log = logging.getLogger(__name__)

RELOAD_CHECK_S = 5.0
"""Clients look at their certificate files at most this often."""


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """A workload's certificate, key and the CA it trusts."""

    ca: Path
    """PEM bundle of the CA(s) whose certificates are accepted."""
    cert: Path
    """This workload's certificate (PEM)."""
    key: Path
    """Its private key (PEM, 0600)."""

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> TlsFiles:
        """``<dir>/ca.pem``, ``<dir>/<name>.pem``, ``<dir>/<name>-key.pem``."""
        paths = pki.Paths.named(directory, name)
        return cls(directory / "ca.pem", paths.cert, paths.key)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """CA, certificate and key bytes; :class:`ConfigError` naming the unreadable file."""
        out = []
        for path in (self.ca, self.cert, self.key):
            try:
                out.append(path.read_bytes())
            except OSError as exc:
                raise errors.ConfigError(f"TLS file {path}: {exc.strerror or exc}") from exc
        return out[0], out[1], out[2]

    def stamp(self) -> tuple[float, ...]:
        """Modification times of the three files (changes when any is replaced)."""
        stamps = []
        for path in (self.ca, self.cert, self.key):
            try:
                stamps.append(os.stat(path).st_mtime_ns)
            except OSError:
                stamps.append(-1)
        return tuple(stamps)


def server_credentials(files: TlsFiles, *, require_client_cert: bool = True) -> grpc.ServerCredentials:
    """Credentials serving ``files``' certificate, reloaded at the next handshake after they change.

    With ``require_client_cert`` a client must present a certificate the CA signed (mutual TLS);
    without, clients are not asked for one (callers then prove who they are with a token).
    """
    ca, cert, key = files.read()
    loaded = {"stamp": files.stamp()}

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        stamp = files.stamp()
        if stamp == loaded["stamp"]:
            return None
        try:
            ca, cert, key = files.read()
        except errors.ConfigError as exc:
            log.warning(
                "TLS files unreadable; keeping the previous ones", extra={"fields": {"error": str(exc)}}
            )
            return None
        loaded["stamp"] = stamp
        log.info("TLS certificate reloaded", extra={"fields": {"cert": str(files.cert)}})
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    return grpc.dynamic_ssl_server_credentials(
        grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca),
        fetch,  # type: ignore[arg-type]  # returning None means unchanged, as grpc documents
        require_client_authentication=require_client_cert,
    )


class HttpsServerContext:
    """An HTTPS server's TLS context from ``files`` (the Optimus webhook's, the console's), re-read
    when renewed (``cosmos up`` and ``cosmos pki`` renew the files in place; the gRPC ports reload
    them the same way): each handshake checks the files' stamp, and a changed one puts a fresh context
    on that connection. No client certificate is asked for: webhook senders prove themselves with
    the HMAC, console users with a platform token."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.stamp = files.stamp()
        self.current = self._load()

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.files.cert, self.files.key)
        context.sni_callback = self._handshake
        return context

    def _handshake(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        stamp = self.files.stamp()
        if stamp != self.stamp:
            try:
                fresh = self._load()
            except (OSError, ssl.SSLError) as exc:  # mid-rewrite: keep the old one, try next time
                log.warning("https certificate not reloaded", extra={"fields": {"error": str(exc)}})
                return
            self.stamp, self.current = stamp, fresh
            log.info("https certificate reloaded", extra={"fields": {"cert": str(self.files.cert)}})
        if connection.context is not self.current:
            connection.context = self.current


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Client credentials presenting ``files``' certificate and trusting its CA."""
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def server_name_options(role: str) -> list[tuple[str, Any]]:
    """Channel options making the client check that the server is a ``role`` (not merely on the CA)."""
    return [("grpc.ssl_target_name_override", pki.server_name(role))]


class ReloadingChannel(grpc.aio.Channel):
    """A secure channel that opens a fresh inner channel once its certificate files changed.

    Calls already running finish on the channel they started on; new calls use the new one. ``make``
    builds an inner channel from credentials (and is where interceptors and options go).
    """

    def __init__(self, files: TlsFiles, make: Any) -> None:
        self._files = files
        self._make = make
        self._stamp = files.stamp()
        self._checked = time.monotonic()
        self._inner: grpc.aio.Channel = make(channel_credentials(files))
        self._old: list[grpc.aio.Channel] = []

    def _current(self) -> grpc.aio.Channel:
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK_S:
            self._checked = now
            stamp = self._files.stamp()
            if stamp != self._stamp:
                try:
                    creds = channel_credentials(self._files)
                except errors.ConfigError as exc:
                    log.warning(
                        "TLS files unreadable; keeping the channel", extra={"fields": {"error": str(exc)}}
                    )
                else:
                    self._stamp = stamp
                    self._old.append(self._inner)
                    self._inner = self._make(creds)
                    log.info("client certificate reloaded", extra={"fields": {"cert": str(self._files.cert)}})
        return self._inner

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)

    async def close(self, grace: float | None = None) -> None:
        for channel in [*self._old, self._inner]:
            await channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._current().channel_ready()

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Deferred(self, "unary_unary", args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Deferred(self, "unary_stream", args, kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Deferred(self, "stream_unary", args, kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Deferred(self, "stream_stream", args, kwargs)


class _Deferred:
    """A multi-callable bound to whichever inner channel is current when it is called."""

    __slots__ = ("_args", "_cache", "_channel", "_kind", "_kwargs")

    def __init__(self, channel: ReloadingChannel, kind: str, args: Any, kwargs: Any) -> None:
        self._channel = channel
        self._kind = kind
        self._args = args
        self._kwargs = kwargs
        self._cache: tuple[Any, Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel._current()
        cache = self._cache
        if cache is None or cache[0] is not inner:
            cache = (inner, getattr(inner, self._kind)(*self._args, **self._kwargs))
            self._cache = cache
        return cache[1](*args, **kwargs)
