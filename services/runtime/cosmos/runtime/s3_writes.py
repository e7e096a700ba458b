"""Writing objects: files streamed up (multipart above one part, their SHA-256 as metadata, verified
once stored), small byte strings, whole directory trees."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from pathlib import Path

import obstore

from cosmos.runtime.s3_errors import ChecksumMismatch, InvalidS3Uri, join_uri, parse_uri
from cosmos.runtime.s3_transport import READ_CHUNK, SHA256_META, ObjectInfo, S3Transport


class S3Writes(S3Transport):
    """The uploads of :class:`cosmos.runtime.s3.S3Client`."""

    async def upload_file(self, path: Path, uri: str, *, content_type: str | None = None) -> ObjectInfo:
        """Upload the file at ``path`` to ``uri`` (multipart above :attr:`part_size`), its SHA-256 as
        metadata; verified by size (and ETag = MD5 for a single part) once stored."""
        bucket, key = parse_uri(uri)
        if not key or key.endswith("/"):
            raise InvalidS3Uri(f"{uri!r} names no object key", uri)
        size, sha256, md5 = await asyncio.to_thread(_digest, path)
        attributes: dict[str, str] = {SHA256_META: sha256}
        if content_type:
            attributes["Content-Type"] = content_type
        store = self.store(bucket)

        async def put() -> ObjectInfo:
            # The path, not a Python file object: obstore reads the file in Rust, without calling
            # back into Python (and the GIL) from its threads for every chunk.
            result = await obstore.put_async(
                store,
                key,
                path,
                attributes=attributes,
                chunk_size=self.part_size,
                max_concurrency=self.max_concurrency,
            )
            etag = (result.get("e_tag") or "").strip('"')
            meta = await obstore.head_async(store, key)
            if meta["size"] != size:
                raise ChecksumMismatch(f"upload {uri}: stored {meta['size']} bytes, sent {size}", uri)
            if size <= self.part_size and etag and "-" not in etag and etag != md5:
                raise ChecksumMismatch(f"upload {uri}: the stored ETag {etag} is not the MD5 {md5}", uri)
            return ObjectInfo(uri, size, sha256, etag)

        info: ObjectInfo = await self._retrying(uri, "upload to", put)
        return info

    async def put_bytes(self, uri: str, data: bytes, *, attributes: Mapping[str, str] | None = None) -> None:
        """Store small ``data`` (a marker, a manifest) at ``uri`` as is: no checksum metadata unless given."""
        bucket, key = parse_uri(uri)
        store = self.store(bucket)

        async def put() -> None:
            await obstore.put_async(store, key, data, attributes=dict(attributes or {}))

        await self._retrying(uri, "upload to", put)

    async def upload_tree(self, top: Path, prefix_uri: str) -> list[ObjectInfo]:
        """Upload every file under directory ``top`` to ``prefix_uri/<relative path>``."""
        out = []
        files = await asyncio.to_thread(lambda: sorted(p for p in top.rglob("*") if p.is_file()))
        for path in files:
            rel = path.relative_to(top).as_posix()
            out.append(await self.upload_file(path, join_uri(prefix_uri, rel)))
        return out


def _digest(path: Path) -> tuple[int, str, str]:
    """Size, SHA-256 and MD5 of a file, read once in 1 MiB pieces."""
    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest(), md5.hexdigest()
