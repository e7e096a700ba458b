"""Storage roots: where a tenant's input and output URIs may point.

An operator configures one or more *roots* (``--storage-root``, a ``file://`` URI, an absolute path or
an ``s3://bucket[/prefix]`` URI). A tenant may name files under ``<root>/<tenant>/...`` only; an admin
(:attr:`Principal.all_tenants`) may name any tenant's area under the roots. Without a configured
root every file URI is refused: nothing on a host is reachable by default.

:func:`check_uri` is the one check Optimus, Stratum and the agents run. It judges the URI after
normalisation and again after following symbolic links (for the longest prefix that exists), so a
link inside the area that points elsewhere is caught, and it refuses device files, FIFOs and sockets
(``/dev/zero`` as a source would never end). Every refusal is ``INVALID_ARGUMENT`` with
``ERROR_REASON_OUTSIDE_STORAGE_ROOT`` and a field violation naming the request field.

Object roots (:class:`S3Root`) are judged lexically by :func:`check_object_uri` (an object store has
no links or devices): the bucket must be one a root names, the key must lie strictly under
``<prefix>/<tenant>/``, and empty, ``.`` and ``..`` segments are refused (S3 would store them as
literal names, but a local copy of such a key would leave its directory). :func:`check_any` runs the
check that fits the URI's scheme.

The check is made at submit and repeated where the files are touched (agent staging), because a
link can be created between the two; it is not a substitute for file-system permissions.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from cosmos import errors
from cosmos.runtime import config

__all__ = [
    "DEFAULT_TENANT",
    "OutsideStorageRoot",
    "Root",
    "S3Root",
    "add_argument",
    "area_of",
    "check_any",
    "check_object_uri",
    "check_uri",
    "parse_roots",
    "roots_from_args",
    "tenant_area",
]

REASON = errors.Reason.ERROR_REASON_OUTSIDE_STORAGE_ROOT
DEFAULT_TENANT = "default"
"""The tenant of callers that have none (as everywhere else)."""


class OutsideStorageRoot(errors.InvalidArgumentError):
    """A URI a caller may not use: outside its area, through ``..`` or a link, a device, a bad scheme."""

    reason = errors.reason_name(REASON)


def _refuse(field: str, uri: str, why: str) -> OutsideStorageRoot:
    description = f"{uri!r} {why}"
    return OutsideStorageRoot(
        f"{field}: {description}", violations=[errors.FieldViolation(field, description)]
    )


@dataclasses.dataclass(frozen=True)
class S3Root:
    """An object-store root: tenants' objects lie under ``s3://<bucket>/<prefix>/<tenant>/``."""

    bucket: str
    prefix: str = ""
    """Key prefix without leading or trailing ``/`` (empty: the bucket's top)."""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def area(self, tenant: str) -> str:
        """``<prefix>/<tenant>/``: the key prefix of a tenant's objects."""
        return f"{self.prefix}/{tenant}/" if self.prefix else f"{tenant}/"


Root = Path | S3Root
"""A storage root: a local directory or an object-store prefix."""

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


def _parse_s3_root(item: str) -> S3Root:
    parts = urlsplit(item)
    prefix = parts.path.strip("/")
    if not _BUCKET.match(parts.netloc) or parts.query or parts.fragment:
        raise errors.ConfigError(
            f"storage root {item!r}: give s3://<bucket>[/<prefix>] with a valid bucket name"
        )
    if any(seg in ("", ".", "..") for seg in prefix.split("/")) and prefix:
        raise errors.ConfigError(f"storage root {item!r}: the prefix has an empty, '.' or '..' segment")
    return S3Root(parts.netloc, prefix)


def parse_roots(values: Iterable[str]) -> tuple[Root, ...]:
    """Roots from flag values (each may hold several, comma-separated); :class:`ConfigError` for a
    root that is not a ``file://`` or ``s3://`` URI or an absolute path (the message names the scheme)."""
    roots: list[Root] = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            if item.startswith("/"):
                path = item
            else:
                parts = urlsplit(item)
                if parts.scheme == "s3":
                    s3root = _parse_s3_root(item)
                    if s3root not in roots:
                        roots.append(s3root)
                    continue
                if parts.scheme != "file":
                    scheme = parts.scheme or "(none)"
                    raise errors.ConfigError(
                        f"storage root {item!r}: scheme {scheme!r} is not supported; "
                        "give a file:// or s3:// URI or an absolute path"
                    )
                if parts.netloc not in ("", "localhost"):
                    raise errors.ConfigError(f"storage root {item!r}: a file URI names no other host")
                path = unquote(parts.path)
            pure = PurePosixPath(path)
            if not pure.is_absolute() or ".." in pure.parts or pure == PurePosixPath("/"):
                raise errors.ConfigError(f"storage root {item!r} must be an absolute directory other than /")
            if Path(pure) not in roots:
                roots.append(Path(pure))
    return tuple(roots)


def add_argument(parser: argparse.ArgumentParser, prefix: str) -> None:
    """``--storage-root`` (repeatable, or comma-separated; env ``<PREFIX>_STORAGE_ROOT``)."""
    var = config.env_name(prefix, "--storage-root")
    from_env = [os.environ[var]] if os.environ.get(var) else []
    parser.add_argument(
        "--storage-root",
        dest="storage_roots",
        action="append",
        default=None,
        metavar="ROOT",
        help=(
            "directory (file:// URI) or s3://bucket[/prefix] holding the tenants' files as "
            "<root>/<tenant>/...; repeatable or "
            f"comma-separated; without any, file URIs are refused (env {var}; default none)"
        ),
    )
    parser.set_defaults(storage_roots_env=from_env)


def roots_from_args(args: argparse.Namespace) -> tuple[Root, ...]:
    """The roots given by :func:`add_argument`'s flag, else by its environment variable."""
    given: Sequence[str] = args.storage_roots or getattr(args, "storage_roots_env", [])
    return parse_roots(given)


def tenant_area(root: Path, tenant: str) -> Path:
    """``<root>/<tenant>``, the directory a tenant's URIs lie in."""
    return root / _tenant_name(tenant or DEFAULT_TENANT)


def _tenant_name(tenant: str) -> str:
    # A tenant is one path component: "a/b" or ".." would name another area.
    if not tenant or "/" in tenant or tenant in (".", "..") or "\0" in tenant:
        raise errors.ConfigError(f"tenant {tenant!r} cannot name a storage area")
    return tenant


def _path_of(uri: str, field: str) -> PurePosixPath:
    if uri.startswith("/"):
        raw = uri
    else:
        parts = urlsplit(uri)
        if parts.scheme != "file":
            scheme = parts.scheme or "(none)"
            raise _refuse(
                field,
                uri,
                f"has scheme {scheme!r}, which is not supported; use a file:// URI or an absolute path",
            )
        if parts.netloc not in ("", "localhost"):
            raise _refuse(field, uri, f"names another host ({parts.netloc}); file URIs are local")
        if parts.query or parts.fragment:
            raise _refuse(field, uri, "has a query or fragment; a file URI names a path only")
        raw = unquote(parts.path)
    if "\0" in raw:
        raise _refuse(field, uri, "holds a NUL byte")
    pure = PurePosixPath(raw)
    if not pure.is_absolute():
        raise _refuse(field, uri, "is relative; give an absolute file:///path")
    if ".." in pure.parts:
        raise _refuse(field, uri, "holds a '..' component")
    return pure


def file_roots(roots: Sequence[Root]) -> list[Path]:
    """The local directories among ``roots``."""
    return [r for r in roots if isinstance(r, Path)]


def s3_roots(roots: Sequence[Root]) -> list[S3Root]:
    """The object-store prefixes among ``roots``."""
    return [r for r in roots if isinstance(r, S3Root)]


def check_any(
    uri: str,
    roots: Sequence[Root],
    tenant: str,
    field: str,
    *,
    all_tenants: bool = False,
) -> str:
    """The URI to use for ``uri`` if ``tenant`` may: ``s3://`` by :func:`check_object_uri`, anything
    else by :func:`check_uri` (then the real path's ``file://`` URI)."""
    if urlsplit(uri).scheme.lower() == "s3":
        return check_object_uri(uri, roots, tenant, field, all_tenants=all_tenants)
    return check_uri(uri, roots, tenant, field, all_tenants=all_tenants).as_uri()


def check_object_uri(
    uri: str,
    roots: Sequence[Root],
    tenant: str,
    field: str,
    *,
    all_tenants: bool = False,
) -> str:
    """``uri`` (``s3://bucket/key``) normalised if it lies strictly inside a tenant area of an
    :class:`S3Root`, else :class:`OutsideStorageRoot` naming ``field``."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3":
        raise _refuse(field, uri, "is not an s3:// URI")
    if parts.query or parts.fragment:
        raise _refuse(field, uri, "has a query or fragment; an s3 URI names a bucket and key only")
    bucket, key = parts.netloc, parts.path[1:] if parts.path.startswith("/") else parts.path
    candidates = s3_roots(roots)
    if not candidates:
        raise _refuse(field, uri, "cannot be used: no s3:// storage root is configured")
    if "\0" in key:
        raise _refuse(field, uri, "holds a NUL byte")
    if not key:
        raise _refuse(field, uri, "names no object key")
    segments = key.rstrip("/").split("/")
    if any(seg == ".." for seg in segments):
        raise _refuse(field, uri, "holds a '..' segment")
    if any(seg in ("", ".") for seg in segments):
        raise _refuse(field, uri, "holds an empty or '.' segment")
    if len(key.encode()) > 1024:
        raise _refuse(field, uri, "has a key longer than 1024 bytes")
    same_bucket = [r for r in candidates if r.bucket == bucket]
    if not same_bucket:
        known = ", ".join(sorted({r.bucket for r in candidates}))
        raise _refuse(field, uri, f"names bucket {bucket!r}, which is no storage root (known: {known})")
    tenant = tenant or DEFAULT_TENANT
    name = _tenant_name(tenant)
    for root in same_bucket:
        if all_tenants:
            base = f"{root.prefix}/" if root.prefix else ""
            rest = key[len(base) :].split("/") if key.startswith(base) else []
            if len(rest) >= 2 and rest[0] and rest[1]:
                return f"s3://{bucket}/{key}"
        elif key.startswith(root.area(name)) and len(key) > len(root.area(name)):
            return f"s3://{bucket}/{key}"
    whose = "a tenant's area" if all_tenants else f"tenant {tenant!r}'s area"
    under = ", ".join(f"s3://{r.bucket}/{r.area('<tenant>' if all_tenants else name)}" for r in same_bucket)
    raise _refuse(field, uri, f"is outside {whose} (objects must lie under {under})")


def check_uri(
    uri: str,
    roots: Sequence[Root],
    tenant: str,
    field: str,
    *,
    all_tenants: bool = False,
    must_exist: bool = False,
) -> Path:
    """The real local path of ``uri`` (links followed) if ``tenant`` may use it, else
    :class:`OutsideStorageRoot` naming ``field``.

    ``uri`` must lie strictly inside ``<root>/<tenant>`` of one of ``roots`` (any tenant's area with
    ``all_tenants``), before and after following links; what exists there must be a regular file or a
    directory. ``must_exist`` also refuses a path that does not exist (an input).
    """
    pure = _path_of(uri, field)
    roots = file_roots(roots)
    if not roots:
        raise _refuse(field, uri, "cannot be used: no storage root is configured, so file URIs are refused")
    tenant = tenant or DEFAULT_TENANT
    area = _area(pure, roots, tenant, all_tenants)
    if area is None:
        whose = "a tenant's area" if all_tenants else f"tenant {tenant!r}'s area"
        under = ", ".join(str(r / ("<tenant>" if all_tenants else tenant)) for r in roots)
        raise _refuse(field, uri, f"is outside {whose} (files must lie under {under})")
    real = Path(os.path.realpath(pure))
    real_area = Path(os.path.realpath(area))
    if real == real_area or not real.is_relative_to(real_area):
        raise _refuse(field, uri, f"leaves {area} through a symbolic link (it resolves to {real})")
    try:
        mode = os.stat(real).st_mode
    except (FileNotFoundError, NotADirectoryError):  # not there (yet), or below a file: nothing to judge
        if must_exist:
            raise _refuse(field, uri, "does not exist") from None
        return real
    except OSError as exc:
        raise _refuse(field, uri, f"cannot be examined: {exc.strerror}") from exc
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _refuse(field, uri, "is not a regular file or directory (a device, FIFO or socket)")
    return real


def _area(pure: PurePosixPath, roots: Sequence[Path], tenant: str, all_tenants: bool) -> Path | None:
    """The tenant area ``pure`` lies strictly inside, lexically, or None."""
    # A root given through a link matches both spellings of a path.
    candidates = [*roots, *(Path(os.path.realpath(r)) for r in roots)]
    for root in candidates:
        if not pure.is_relative_to(root):
            continue
        rest = pure.relative_to(root).parts
        if all_tenants:
            if len(rest) >= 2:
                return root / rest[0]
        elif len(rest) >= 2 and rest[0] == tenant:
            return root / tenant
    return None


def area_of(path: Path, roots: Sequence[Root]) -> Path | None:
    """The tenant area (``<root>/<tenant>``) a path :func:`check_uri` accepted lies in, or None."""
    area = _area(PurePosixPath(path), file_roots(roots), "", all_tenants=True)
    return Path(area) if area is not None else None
