"""Storage roots: where a tenant's input and output URIs may point.

An operator configures one or more *roots* (``--storage-root``, a ``file://`` URI or an absolute
path; ``s3://`` comes later). A tenant may name files under ``<root>/<tenant>/...`` only; an admin
(:attr:`Principal.all_tenants`) may name any tenant's area under the roots. Without a configured
root every file URI is refused: nothing on a host is reachable by default.

:func:`check_uri` is the one check Optimus, Stratum and the agents run. It judges the URI after
normalisation and again after following symbolic links (for the longest prefix that exists), so a
link inside the area that points elsewhere is caught, and it refuses device files, FIFOs and sockets
(``/dev/zero`` as a source would never end). Every refusal is ``INVALID_ARGUMENT`` with
``ERROR_REASON_OUTSIDE_STORAGE_ROOT`` and a field violation naming the request field.

The check is made at submit and repeated where the files are touched (agent staging), because a
link can be created between the two; it is not a substitute for file-system permissions.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from cosmos import errors
from cosmos.runtime import config

__all__ = [
    "DEFAULT_TENANT",
    "OutsideStorageRoot",
    "add_argument",
    "area_of",
    "check_uri",
    "parse_roots",
    "roots_from_args",
    "tenant_area",
]

REASON = "ERROR_REASON_OUTSIDE_STORAGE_ROOT"
DEFAULT_TENANT = "default"
"""The tenant of callers that have none (as everywhere else)."""


class OutsideStorageRoot(errors.InvalidArgumentError):
    """A URI a caller may not use: outside its area, through ``..`` or a link, a device, a bad scheme."""

    reason = REASON


def _refuse(field: str, uri: str, why: str) -> OutsideStorageRoot:
    description = f"{uri!r} {why}"
    return OutsideStorageRoot(
        f"{field}: {description}", violations=[errors.FieldViolation(field, description)]
    )


def parse_roots(values: Iterable[str]) -> tuple[Path, ...]:
    """Roots from flag values (each may hold several, comma-separated); :class:`ConfigError` for a
    root that is not a ``file://`` URI or an absolute path (the message names the scheme)."""
    roots: list[Path] = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            if item.startswith("/"):
                path = item
            else:
                parts = urlsplit(item)
                if parts.scheme != "file":
                    scheme = parts.scheme or "(none)"
                    raise errors.ConfigError(
                        f"storage root {item!r}: scheme {scheme!r} is not supported; "
                        "give a file:// URI or an absolute path"
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
            "directory (or file:// URI) holding the tenants' files as <root>/<tenant>/...; repeatable or "
            f"comma-separated; without any, file URIs are refused (env {var}; default none)"
        ),
    )
    parser.set_defaults(storage_roots_env=from_env)


def roots_from_args(args: argparse.Namespace) -> tuple[Path, ...]:
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


def check_uri(
    uri: str,
    roots: Sequence[Path],
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


def area_of(path: Path, roots: Sequence[Path]) -> Path | None:
    """The tenant area (``<root>/<tenant>``) a path :func:`check_uri` accepted lies in, or None."""
    area = _area(PurePosixPath(path), roots, "", all_tenants=True)
    return Path(area) if area is not None else None
