"""What every S3 transfer stands on: the obstore store of each bucket (path-style for S3-compatible
services, ``object_store``'s own retries of each request) and the retry policy over a whole transfer
(:meth:`S3Transport._retrying`: exponential backoff while the failure is transient)."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import datetime
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from obstore.store import S3Store

from cosmos.runtime.s3_config import S3Config
from cosmos.runtime.s3_errors import translate

T = TypeVar("T")

SHA256_META = "cosmos-sha256"
"""User metadata key holding the object's SHA-256 (hex), set by every upload made here."""
PART_SIZE = 16 * 1024 * 1024
"""Multipart part size: above it an upload goes multipart. 16 MiB measured best here (8-64 tried)."""
READ_CHUNK = 1024 * 1024
EXIT_GRACE = 0.05
"""Seconds a process that used S3 lets obstore's threads finish at exit (see :func:`_let_obstore_finish`)."""


def _let_obstore_finish() -> None:
    """Release the GIL for a moment before the interpreter finalizes.

    obstore hands each result to asyncio from one of its Tokio threads (``loop.call_soon_threadsafe``,
    which writes to the loop's wake-up socket with the GIL released). The loop can run the result
    before that write returns; a short-lived process (``asyncio.run(client.upload_file(...))``) then
    exits, and the thread, taking the GIL back after finalization began, is ended by
    ``pthread_exit`` unwinding through Rust frames: SIGABRT, "Fatal Python error: Aborted" with no
    Python frame (about 1 run in 50 on a loaded machine). Sleeping here, in an ``atexit`` callback
    (before finalization), lets such a thread take the GIL and return first.
    """
    time.sleep(EXIT_GRACE)


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """An object as stored: its URI, size, SHA-256 (hex) and ETag."""

    uri: str
    size: int
    sha256: str
    etag: str


@functools.cache
def _register_exit_grace() -> None:
    """Once per process, and only in one that makes an S3 client."""
    atexit.register(_let_obstore_finish)


class S3Transport:
    """The stores and retry policy of an S3 client (:class:`cosmos.runtime.s3.S3Client` adds the
    transfers)."""

    def __init__(
        self,
        config: S3Config | None = None,
        *,
        part_size: int = PART_SIZE,
        max_concurrency: int = 4,
        attempts: int = 4,
        backoff: float = 0.2,
        request_retries: int = 3,
    ) -> None:
        self.config = config or S3Config.from_env()
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.attempts = attempts
        self.backoff = backoff
        self.request_retries = request_retries
        """object_store's own retries of one request (and of a GET stream cut short)."""
        self._stores: dict[str, S3Store] = {}
        _register_exit_grace()

    def store(self, bucket: str) -> S3Store:
        """The obstore store for ``bucket`` (cached)."""
        store = self._stores.get(bucket)
        if store is None:
            cfg = self.config
            kwargs: dict[str, Any] = {"region": cfg.region}
            if cfg.endpoint:
                # Path-style addressing: S3-compatible services (SeaweedFS) on an IP have no bucket DNS.
                kwargs["endpoint"] = cfg.endpoint
                kwargs["virtual_hosted_style_request"] = False
            if cfg.access_key_id and cfg.secret_access_key:
                kwargs["access_key_id"] = cfg.access_key_id
                kwargs["secret_access_key"] = cfg.secret_access_key
                if cfg.session_token:
                    kwargs["token"] = cfg.session_token
            store = S3Store(
                bucket,
                client_options={
                    "allow_http": bool(cfg.endpoint and cfg.endpoint.startswith("http://")),
                    "connect_timeout": datetime.timedelta(seconds=10),
                    "timeout": datetime.timedelta(minutes=5),
                },
                retry_config={
                    "max_retries": self.request_retries,
                    "backoff": {
                        "init_backoff": datetime.timedelta(milliseconds=100),
                        "max_backoff": datetime.timedelta(seconds=5),
                        "base": 2,
                    },
                    "retry_timeout": datetime.timedelta(minutes=2),
                },
                **kwargs,
            )
            self._stores[bucket] = store
        return store

    async def _retrying(self, uri: str, doing: str, attempt_fn: Callable[[], Awaitable[T]]) -> T:
        """``attempt_fn()``, again after a transient failure (exponential backoff, :attr:`attempts`
        in all); the failure as an :class:`~cosmos.runtime.s3_errors.S3Error`."""
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return await attempt_fn()
            except Exception as exc:
                err = translate(exc, uri, doing)
                if not err.transient or attempt == self.attempts:
                    raise err from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")
