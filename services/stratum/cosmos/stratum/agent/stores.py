"""What every store is and how staging fails: the :class:`Store` interface a URI scheme is served
by, the owner of what it stores, and :class:`StagingError` with its reason codes.

:mod:`cosmos.stratum.agent.staging` is where they are used (and what the rest of the agent imports).
"""

from __future__ import annotations

import abc
import errno
from pathlib import Path

from cosmos import errors


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
