"""Moving a job's files: inputs into its work dir before start, outputs out of it after success.

A job names its files as :class:`~cosmos.stratum.v1.job_pb2.Artifact` ``{uri, path}``: ``uri`` is where
the file lives outside the agent, ``path`` is where the job sees it, relative to its work dir. A
:class:`StoreRegistry` maps each URI scheme to a :class:`Store`; ``file://`` and ``s3://`` are built in
(:class:`S3ObjectStore`, credentials from the AWS environment); other stores (``gs://``, ``http(s)://``)
plug in by registering another :class:`Store`.

``s3://`` URIs are checked against the agent's ``s3://`` storage roots the same way (lexically: the
key must lie under ``<prefix>/<tenant>/``). An input URI naming one object is downloaded to the
artifact's path; one naming a prefix (no object at that key) is downloaded as a directory. Transfers
stream and verify checksums (:mod:`cosmos.runtime.s3`). A missing object fails the job for good
(``INPUT_MISSING``); an unavailable service (5xx, timeouts) transiently (``STORAGE_UNAVAILABLE``),
so the job is retried.

``file://`` URIs are checked against the agent's storage roots (:mod:`cosmos.security.storage`) with
the job's tenant right before each file is touched: Stratum checked them at submit, but a link made
since then must not lead out of the tenant's area, and a device must not be read. An output is
stored beside its destination and renamed into place; a destination directory that already holds
files is never replaced (the agent does not delete what it did not write).
"""

from __future__ import annotations

import abc
import asyncio
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from cosmos import errors
from cosmos.runtime import s3
from cosmos.security import storage
from cosmos.stratum.v1 import job_pb2


class StagingError(errors.CosmosError):
    """An artifact could not be staged; ``reason`` is a stable code, ``str()`` the human text."""

    reason = "STAGING_FAILED"


class InvalidArtifact(StagingError):
    """The artifact's ``path`` or ``uri`` is malformed (absolute path, ``..``, relative file URI)."""

    reason = "INVALID_SPEC"


class UnsupportedScheme(StagingError):
    """No store is registered for the URI's scheme."""

    reason = "UNSUPPORTED_SCHEME"


class InputFailed(StagingError):
    """An input could not be fetched (missing source, permission, network)."""

    reason = "INPUT_FAILED"


class OutputFailed(StagingError):
    """An output was not produced or could not be stored."""

    reason = "OUTPUT_FAILED"


class InputMissing(InputFailed):
    """The input object (or prefix) does not exist: the same on every run."""

    reason = "INPUT_MISSING"


class StorageUnavailable(StagingError):
    """The object store failed or was unreachable after the retries: worth another attempt."""

    reason = "STORAGE_UNAVAILABLE"


class OutsideStorageRoot(StagingError):
    """A ``file://`` URI lies outside the tenant's storage area (or names a device); never touched."""

    reason = "OUTSIDE_STORAGE_ROOT"


class NoSpace(StagingError):
    """The disk is full (or would be): staging stopped; the message names the path."""

    reason = "NO_SPACE"


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def no_space(exc: OSError, doing: str) -> NoSpace | None:
    """A :class:`NoSpace` naming what was being done and where, when ``exc`` is a full disk."""
    if exc.errno not in NO_SPACE_ERRNOS:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    return NoSpace(f"disk full: {doing}{where}: {exc.strerror or exc}")


class OutputExists(OutputFailed):
    """The destination directory already holds files; the agent never replaces it."""

    reason = "OUTPUT_EXISTS"


Owner = tuple[int, int]
"""A uid and gid."""


class Store(abc.ABC):
    """Fetches and stores files for the URI schemes it is registered for."""

    @abc.abstractmethod
    async def fetch(self, uri: str, dest: Path) -> None:
        """Make the file (or directory) at ``uri`` available at ``dest``; ``dest``'s parent exists.

        Raises :class:`InputFailed` when the source does not exist or cannot be read.
        """

    @abc.abstractmethod
    async def store(self, src: Path, uri: str, owner: Owner | None = None) -> str:
        """Copy ``src`` (a file or directory) to ``uri``; returns the final URI of the stored artifact.

        ``owner`` (uid, gid): who a stored file and the directories made for it belong to, where the
        store has owners (a local file system; the job's uid, so that its tenant can clean them up).
        Raises :class:`OutputFailed` when it cannot be written.
        """


class StoreRegistry:
    """Stores by URI scheme (lower case, without ``://``)."""

    def __init__(self, roots: Sequence[storage.Root] = ()) -> None:
        self._stores: dict[str, Store] = {}
        self.roots = tuple(roots)
        """Storage roots ``file://`` URIs must lie under (``<root>/<tenant>/...``); none: refused."""

    def register(self, scheme: str, store: Store) -> None:
        """Serve ``scheme`` URIs with ``store`` (replacing an earlier registration)."""
        self._stores[scheme.lower()] = store

    @property
    def schemes(self) -> list[str]:
        """Registered schemes, sorted."""
        return sorted(self._stores)

    def store_for(self, uri: str) -> Store:
        """The store for ``uri``'s scheme; :class:`UnsupportedScheme` names the scheme when there is none."""
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
        store = self._stores.get(scheme)
        if store is None:
            shown = repr(scheme) if scheme else "(none)"
            raise UnsupportedScheme(
                f"unsupported URI scheme {shown} in {uri!r}; this agent supports: "
                + ", ".join(f"{s}://" for s in self.schemes)
            )
        return store

    def guard(self, uri: str, tenant: str, field: str, *, is_input: bool) -> str:
        """The URI to touch for ``uri``: a ``file://`` URI is checked against :attr:`roots` for
        ``tenant`` (every entry of an input directory too) and replaced by its real path's URI;
        :class:`OutsideStorageRoot` when it may not be used. A missing input is the store's to
        report (:class:`InputFailed`)."""
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
        if scheme == "s3":
            try:
                return storage.check_object_uri(uri, self.roots, tenant, field)
            except errors.InvalidArgumentError as exc:
                raise OutsideStorageRoot(exc.message) from exc
        if scheme != "file" and not uri.startswith("/"):
            return uri  # another store governs its own URIs
        try:
            real = storage.check_uri(uri, self.roots, tenant, field)
            if is_input and real.is_dir():
                _check_tree(real, self.roots, tenant, field)
        except errors.InvalidArgumentError as exc:
            raise OutsideStorageRoot(exc.message) from exc
        return real.as_uri()


def _check_tree(top: Path, roots: Sequence[storage.Root], tenant: str, field: str) -> None:
    """Every entry of an input directory: links must stay in the area, no devices, FIFOs, sockets."""
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                storage.check_uri(path.as_uri(), roots, tenant, field)
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise storage.OutsideStorageRoot(f"{field}: {path} is a device, FIFO or socket")


def default_registry(
    roots: Sequence[storage.Root] = (),
    s3_client: s3.S3Client | None = None,
    s3_cache: Path | None = None,
) -> StoreRegistry:
    """A registry with the stores every agent has: ``file://`` and ``s3://`` under ``roots`` (S3
    credentials and endpoint from the AWS environment unless ``s3_client`` is given; objects cached
    per host in ``s3_cache`` when given)."""
    registry = StoreRegistry(roots)
    registry.register("file", FileStore())
    registry.register("s3", S3ObjectStore(s3_client, s3_cache))
    return registry


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
        await asyncio.to_thread(_copy, cached, dest, True)

    @staticmethod
    def _classify(exc: s3.S3Error, doing: str) -> StagingError:
        if exc.transient:
            return StorageUnavailable(f"{doing}: {exc.message}")
        return InputFailed(f"{doing}: {exc.message}")


def file_uri_path(uri: str) -> Path:
    """The local path of a ``file:///abs/path`` (or ``file://localhost/abs/path``) URI."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() != "file":
        raise InvalidArtifact(f"{uri!r} is not a file:// URI")
    if parts.netloc not in ("", "localhost"):
        raise InvalidArtifact(f"{uri!r}: file URIs on another host ({parts.netloc}) are not supported")
    if not parts.path.startswith("/"):
        raise InvalidArtifact(f"{uri!r}: a file URI needs an absolute path (file:///dir/name)")
    return Path(urllib.request.url2pathname(parts.path))


class FileStore(Store):
    """``file://`` URIs: local (or network-mounted) paths.

    Inputs are hard-linked when source and work dir share a file system (no copy of a large media
    file), else copied. A hard link shares the source's data: jobs must treat inputs as read-only and
    write their results to new paths. ``link=False`` always copies.
    """

    def __init__(self, *, link: bool = True) -> None:
        self.link = link

    async def fetch(self, uri: str, dest: Path) -> None:
        src = file_uri_path(uri)
        try:
            await asyncio.to_thread(_copy, src, dest, self.link)
        except FileNotFoundError as exc:
            raise InputFailed(f"input {uri!r} does not exist ({src})") from exc
        except OSError as exc:
            full = no_space(exc, f"cannot copy input {uri!r} to {dest}")
            if full is not None:
                raise full from exc
            raise InputFailed(f"input {uri!r} could not be copied: {exc}") from exc

    async def store(self, src: Path, uri: str, owner: Owner | None = None) -> str:
        dest = file_uri_path(uri)
        try:
            await asyncio.to_thread(_publish, src, dest, owner)
        except OSError as exc:
            full = no_space(exc, f"cannot store output {src.name!r} to {uri!r}")
            if full is not None:
                raise full from exc
            raise OutputFailed(f"output could not be stored to {uri!r}: {exc}") from exc
        return uri


def _tree(top: Path, uri: str) -> list[tuple[str, int]]:
    """``(key, size)`` of every file under ``top`` as uploaded below ``uri``."""
    _, prefix = s3.parse_uri(uri)
    base = prefix.rstrip("/") + "/" if prefix else ""
    return sorted(
        (base + p.relative_to(top).as_posix(), p.stat().st_size) for p in top.rglob("*") if p.is_file()
    )


def _copy(src: Path, dest: Path, link: bool) -> None:
    def copy_file(s: str, d: str) -> object:
        if link:
            try:
                os.link(s, d)
                return d
            except OSError:
                pass  # another file system, or links not permitted: fall back to copying
        return shutil.copy2(s, d)

    if not src.exists():
        raise FileNotFoundError(src)
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=copy_file)
    else:
        copy_file(str(src), str(dest))


def _publish(src: Path, dest: Path, owner: Owner | None = None) -> None:
    # Copy next to the destination, then rename: a reader never sees a half-written output. A file
    # replaces the file there (a retried attempt); a directory takes the place of nothing or of an
    # empty directory only: one holding files was not written by this attempt and is never removed.
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        for d in made:
            os.chown(d, *owner, follow_symlinks=False)
    if src.is_dir() and (dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir())))):
        raise OutputExists(f"{dest} already exists and is not an empty directory; it is left as it is")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        staged = tmp / dest.name
        if src.is_dir():
            shutil.copytree(src, staged)
        else:
            shutil.copy2(src, staged)
        if owner is not None:
            _chown_tree(staged, owner)
        try:
            os.replace(staged, dest)  # onto a directory that gained files meanwhile: refused (ENOTEMPTY)
        except OSError as exc:
            if src.is_dir() and dest.is_dir():
                raise OutputExists(f"{dest} gained files while the output was copied; left as it is") from exc
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only the copy made here


def _chown_tree(top: Path, owner: Owner) -> None:
    os.chown(top, *owner, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), *owner, follow_symlinks=False)


def artifact_path(work_dir: Path, path: str) -> Path:
    """``work_dir / path`` for an artifact's relative path; rejects absolute paths and ``..``."""
    rel = PurePosixPath(path)
    if not path or rel.is_absolute() or ".." in rel.parts or rel == PurePosixPath("."):
        raise InvalidArtifact(f"artifact path {path!r} must be relative to the work dir, without '..'")
    return work_dir.joinpath(*rel.parts)


def check(registry: StoreRegistry, artifacts: Iterable[job_pb2.Artifact], work_dir: Path) -> None:
    """Validate every artifact before anything runs: a job whose output could never be stored
    should fail in milliseconds, not after an hour-long encode."""
    for artifact in artifacts:
        artifact_path(work_dir, artifact.path)
        registry.store_for(artifact.uri)


async def stage_inputs(
    registry: StoreRegistry,
    inputs: Sequence[job_pb2.Artifact],
    work_dir: Path,
    tenant: str = storage.DEFAULT_TENANT,
) -> None:
    """Fetch every input to ``work_dir/<path>``, one after another, each checked for ``tenant``."""
    for i, artifact in enumerate(inputs):
        dest = artifact_path(work_dir, artifact.path)
        store = registry.store_for(artifact.uri)
        uri = await asyncio.to_thread(
            registry.guard, artifact.uri, tenant, f"spec.inputs[{i}].uri", is_input=True
        )
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        await store.fetch(uri, dest)


async def stage_outputs(
    registry: StoreRegistry,
    outputs: Sequence[job_pb2.Artifact],
    work_dir: Path,
    tenant: str = storage.DEFAULT_TENANT,
    owner: Owner | None = None,
) -> list[job_pb2.Artifact]:
    """Store every ``work_dir/<path>`` to its URI (checked for ``tenant``), made ``owner``'s where
    stores have owners; returns the stored artifacts with their final URIs."""
    stored = []
    for i, artifact in enumerate(outputs):
        src = await asyncio.to_thread(_output_source, work_dir, artifact.path)
        store = registry.store_for(artifact.uri)
        target = await asyncio.to_thread(
            registry.guard, artifact.uri, tenant, f"spec.outputs[{i}].uri", is_input=False
        )
        uri = await store.store(src, target, owner)
        stored.append(job_pb2.Artifact(uri=uri, path=artifact.path))
    return stored


def _output_source(work_dir: Path, path: str) -> Path:
    src = artifact_path(work_dir, path)
    if not src.exists():
        raise OutputFailed(f"output {path!r} was not produced by the job")
    # A job could leave a symlink to a file outside its work dir; never publish such a file.
    if not src.resolve().is_relative_to(work_dir.resolve()):
        raise OutputFailed(f"output {path!r} points outside the work dir")
    return src
