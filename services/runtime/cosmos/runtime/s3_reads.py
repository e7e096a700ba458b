"""Reading objects: files streamed down to a temporary file, verified, then renamed into place (a
transfer cut short resumes with a ranged read of the same object version); small objects whole;
streams; listings, ETags and presigned URLs; whole prefixes as directory trees."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import obstore
import obstore.exceptions as ox

from cosmos.runtime.s3_errors import (
    ChecksumMismatch,
    InvalidS3Uri,
    S3Error,
    S3NotFound,
    S3Unavailable,
    parse_uri,
    translate,
)
from cosmos.runtime.s3_transport import READ_CHUNK, SHA256_META, ObjectInfo, S3Transport


class S3Reads(S3Transport):
    """The downloads and look-ups of :class:`cosmos.runtime.s3.S3Client`."""

    async def download_file(self, uri: str, dest: Path) -> ObjectInfo:
        """Stream the object at ``uri`` to ``dest`` (a new or replaced file), verified; a transfer cut
        short resumes with a ranged read. Nothing is left at ``dest`` on failure."""
        bucket, key = parse_uri(uri)
        if not key:
            raise InvalidS3Uri(f"{uri!r} names no object key", uri)
        store = self.store(bucket)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        sha = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        state: dict[str, Any] = {"written": 0, "etag": None, "attrs": None, "size": None}
        try:
            with os.fdopen(fd, "wb") as out:

                async def fetch() -> None:
                    options: dict[str, Any] = {}
                    if state["written"]:
                        # Resume where the stream broke, from the same object version only.
                        options = {"range": {"offset": state["written"]}, "if_match": state["etag"]}
                    result = await obstore.get_async(store, key, options=options)  # type: ignore[arg-type]
                    if state["etag"] is None:
                        state["etag"] = result.meta["e_tag"]
                        state["attrs"] = dict(result.attributes)
                        state["size"] = result.meta["size"]
                    async for chunk in result.stream(min_chunk_size=READ_CHUNK):
                        data = memoryview(chunk)
                        out.write(data)
                        sha.update(data)
                        md5.update(data)
                        state["written"] += len(data)

                await self._retrying(uri, "download", fetch)
            info = _verify(uri, state, sha.hexdigest(), md5.hexdigest())
            # mkstemp made it 0600; a downloaded file gets the mode any new file would (jobs running
            # as another uid read their staged inputs).
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, dest)
            return info
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # the verified file was renamed away; anything left is partial

    async def get_bytes(self, uri: str) -> bytes:
        """The whole (small) object at ``uri``."""
        bucket, key = parse_uri(uri)
        store = self.store(bucket)

        async def get() -> bytes:
            result = await obstore.get_async(store, key)
            return bytes(await result.bytes_async())

        data: bytes = await self._retrying(uri, "download", get)
        return data

    async def exists(self, uri: str) -> bool:
        """Whether an object is stored exactly at ``uri``."""
        bucket, key = parse_uri(uri)
        store = self.store(bucket)

        async def head() -> bool:
            try:
                await obstore.head_async(store, key)
            except (FileNotFoundError, ox.NotFoundError) as exc:
                if "NoSuchBucket" in str(exc):
                    raise
                return False
            return True

        found: bool = await self._retrying(uri, "look up", head)
        return found

    async def etag(self, uri: str) -> str:
        """The object's ETag (changes when the object is replaced)."""
        bucket, key = parse_uri(uri)
        store = self.store(bucket)

        async def head() -> str:
            meta = await obstore.head_async(store, key)
            return str(meta["e_tag"] or meta["last_modified"])

        tag: str = await self._retrying(uri, "look up", head)
        return tag

    async def list_objects(self, prefix_uri: str) -> list[tuple[str, int]]:
        """``(key, size)`` of every object under ``prefix_uri`` (a ``/`` is added), sorted by key."""
        bucket, key = parse_uri(prefix_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        store = self.store(bucket)

        async def listing() -> list[tuple[str, int]]:
            out: list[tuple[str, int]] = []
            async for batch in obstore.list(store, prefix or None):
                out += [(m["path"], m["size"]) for m in batch]
            return sorted(out)

        found: list[tuple[str, int]] = await self._retrying(prefix_uri, "list", listing)
        return found

    def presign(self, uri: str, expires: datetime.timedelta = datetime.timedelta(hours=1)) -> str:
        """A presigned HTTP GET URL for ``uri``, valid for ``expires``."""
        bucket, key = parse_uri(uri)
        try:
            return obstore.sign(self.store(bucket), "GET", key, expires)
        except Exception as exc:
            raise translate(exc, uri, "presign") from exc

    async def fetch_over_http(self, prefix_uri: str, dest: Path) -> list[str]:
        """Download every object under ``prefix_uri`` into ``dest`` by plain HTTP GETs of presigned
        URLs (what a player given those URLs would do); the keys fetched, relative to the prefix.

        A manifest's relative segment URLs cannot carry a signature, so a player needs one presigned
        URL per object (or a public-read prefix): this fetches them all, for checking a publish."""
        _, key = parse_uri(prefix_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        bucket = parse_uri(prefix_uri)[0]
        names = []
        for name, _ in await self.list_objects(prefix_uri):
            rel = name[len(prefix) :]
            if not rel or any(p in ("", ".", "..") for p in rel.split("/")):
                raise S3Error(f"fetch {prefix_uri}: key {name!r} cannot be a local path", prefix_uri)
            url = self.presign(f"s3://{bucket}/{name}")
            await asyncio.to_thread(_http_get_to, url, dest.joinpath(*rel.split("/")))
            names.append(rel)
        return names

    async def download_tree(self, prefix_uri: str, dest: Path) -> list[ObjectInfo]:
        """Download every object under ``prefix_uri/`` into directory ``dest``, keeping relative keys.
        A key with ``..`` or an empty segment would land outside ``dest``: refused."""
        bucket, key = parse_uri(prefix_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        objects = await self.list_objects(prefix_uri)
        if not objects:
            raise S3NotFound(f"download {prefix_uri}: no object under this prefix", prefix_uri)
        out = []
        for name, _ in objects:
            rel = name[len(prefix) :]
            parts = rel.split("/")
            if not rel or any(p in ("", ".", "..") for p in parts):
                raise S3Error(f"download {prefix_uri}: key {name!r} cannot be a local path", prefix_uri)
            out.append(await self.download_file(f"s3://{bucket}/{name}", dest.joinpath(*parts)))
        return out

    async def stream(self, uri: str) -> AsyncIterator[bytes]:
        """The object's bytes as they arrive (no verification: for callers that check themselves)."""
        bucket, key = parse_uri(uri)
        try:
            result = await obstore.get_async(self.store(bucket), key)
            async for chunk in result.stream(min_chunk_size=READ_CHUNK):
                yield bytes(chunk)
        except Exception as exc:
            raise translate(exc, uri, "download") from exc


def _verify(uri: str, state: Mapping[str, Any], sha256: str, md5: str) -> ObjectInfo:
    """What a download wrote checked against the object: its size, the SHA-256 recorded at upload, else
    (written by others, one part) the ETag as MD5."""
    size, written = state["size"], state["written"]
    etag = (state["etag"] or "").strip('"')
    if written != size:
        raise ChecksumMismatch(f"download {uri}: got {written} bytes of {size}", uri)
    expected = (state["attrs"] or {}).get(SHA256_META)
    if expected is not None and expected != sha256:
        raise ChecksumMismatch(
            f"download {uri}: SHA-256 {sha256} differs from the {expected} recorded at upload", uri
        )
    single_part = bool(re.fullmatch(r"[0-9a-f]{32}", etag))  # a multipart ETag ends in -<parts>
    if expected is None and single_part and etag != md5:
        raise ChecksumMismatch(f"download {uri}: MD5 {md5} differs from the ETag {etag}", uri)
    return ObjectInfo(uri, written, sha256, etag)


def _http_get_to(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, dest.open("wb") as out:
            while chunk := resp.read(READ_CHUNK):
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise S3Error(f"HTTP GET of a presigned URL answered {exc.code}: {url.split('?')[0]}") from exc
    except OSError as exc:
        raise S3Unavailable(f"HTTP GET {url.split('?')[0]} failed: {exc}") from exc
