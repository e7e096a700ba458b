"""The ``s3://`` store: objects (or prefixes, as directories) through :mod:`cosmos.runtime.s3`, streamed
and verified, optionally cached per host and version.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from cosmos.runtime import s3
from cosmos.stratum.agent.file_store import link_or_copy
from cosmos.stratum.agent.stores import (
    InputFailed,
    InputMissing,
    OutputExists,
    OutputFailed,
    Owner,
    StagingError,
    StorageUnavailable,
    Store,
    no_space,
)


class S3ObjectStore(Store):
    """``s3://bucket/key`` URIs through :class:`cosmos.runtime.s3.S3Client` (streamed, verified).

    With a ``cache`` directory (on the work dirs' file system), an input object is downloaded once
    per host and version (its ETag) and hard-linked into each job's work dir: the encode's chunk
    jobs all read one source, and only the first of them fetches it. Like a ``file://`` input, a
    hard link shares its data: jobs treat inputs as read-only. The cache is not evicted (yet).
    """

    def __init__(self, client: s3.S3Client | None = None, cache: Path | None = None) -> None:
        self._client = client
        self.cache = cache
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def client(self) -> s3.S3Client:
        """The client, made on first use: an agent that never sees an s3:// URI needs no config."""
        if self._client is None:
            self._client = s3.S3Client()
        return self._client

    async def fetch(self, uri: str, dest: Path) -> None:
        try:
            if not uri.endswith("/") and await self.client.exists(uri):
                if self.cache is None:
                    await self.client.download_file(uri, dest)
                else:
                    await self._cached(uri, dest)
            else:
                await self.client.download_tree(uri, dest)
        except s3.S3NotFound as exc:
            raise InputMissing(f"input {uri!r} does not exist: {exc.message}") from exc
        except s3.S3Error as exc:
            raise self._classify(exc, f"input {uri!r} could not be fetched") from exc
        except OSError as exc:
            full = no_space(exc, f"cannot write input {uri!r} to {dest}")
            raise (full or InputFailed(f"input {uri!r} could not be written to {dest}: {exc}")) from exc

    async def store(self, src: Path, uri: str, owner: Owner | None = None) -> str:
        try:
            if await asyncio.to_thread(src.is_dir):
                # Like a file:// directory output: never mix with (or overwrite) objects already there,
                # unless they are this very tree (a retried attempt whose upload had completed).
                there = await self.client.list_objects(uri)
                if there:
                    if sorted(there) != await asyncio.to_thread(_tree, src, uri):
                        raise OutputExists(f"{uri} already holds other objects; they are left as they are")
                    return uri
                await self.client.upload_tree(src, uri)
            else:
                await self.client.upload_file(src, uri)
        except s3.S3Error as exc:
            cls = self._classify(exc, f"output could not be stored to {uri!r}")
            raise (cls if isinstance(cls, StorageUnavailable) else OutputFailed(str(cls))) from exc
        return uri

    async def _cached(self, uri: str, dest: Path) -> None:
        assert self.cache is not None
        etag = await self.client.etag(uri)
        name = hashlib.sha256(f"{uri}\n{etag}".encode()).hexdigest()
        cached = self.cache / name
        # One download per object version at a time; concurrent jobs wait for it and then link.
        async with self._locks.setdefault(name, asyncio.Lock()):
            if not await asyncio.to_thread(cached.is_file):
                await self.client.download_file(uri, cached)
        await asyncio.to_thread(link_or_copy, cached, dest, True)

    @staticmethod
    def _classify(exc: s3.S3Error, doing: str) -> StagingError:
        if exc.transient:
            return StorageUnavailable(f"{doing}: {exc.message}")
        return InputFailed(f"{doing}: {exc.message}")


def _tree(top: Path, uri: str) -> list[tuple[str, int]]:
    """``(key, size)`` of every file under ``top`` as uploaded below ``uri``."""
    _, prefix = s3.parse_uri(uri)
    base = prefix.rstrip("/") + "/" if prefix else ""
    return sorted(
        (base + p.relative_to(top).as_posix(), p.stat().st_size) for p in top.rglob("*") if p.is_file()
    )
