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

import asyncio
import os
import stat
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from cosmos import errors
from cosmos.runtime import s3
from cosmos.security import storage
from cosmos.stratum.agent.file_store import FileStore, file_uri_path
from cosmos.stratum.agent.s3_store import S3ObjectStore
from cosmos.stratum.agent.stores import (
    NO_SPACE_ERRNOS,
    InputFailed,
    InputMissing,
    InvalidArtifact,
    NoSpace,
    OutputExists,
    OutputFailed,
    OutsideStorageRoot,
    Owner,
    StagingError,
    StorageUnavailable,
    Store,
    UnsupportedScheme,
    no_space,
)
from cosmos.stratum.v1 import job_pb2

# The stores and errors live apart (stores, file_store, s3_store); the agent and its tests know them
# as staging's.
__all__ = [
    "NO_SPACE_ERRNOS",
    "FileStore",
    "InputFailed",
    "InputMissing",
    "InvalidArtifact",
    "NoSpace",
    "OutputExists",
    "OutputFailed",
    "OutsideStorageRoot",
    "Owner",
    "S3ObjectStore",
    "StagingError",
    "StorageUnavailable",
    "Store",
    "StoreRegistry",
    "UnsupportedScheme",
    "artifact_path",
    "check",
    "default_registry",
    "file_uri_path",
    "no_space",
    "stage_inputs",
    "stage_outputs",
]


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
