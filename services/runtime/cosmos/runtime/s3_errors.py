"""``s3://`` URIs and the S3 client's errors: every failure is an :class:`S3Error`, an obstore failure
translated by :func:`translate` (:attr:`S3Error.transient` says whether trying again may help)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import obstore.exceptions as ox

from cosmos import errors


class S3Error(errors.CosmosError):
    """An S3 operation failed; ``transient`` says whether trying again later may succeed."""

    transient = False

    def __init__(self, message: str, uri: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.uri = uri


class S3NotFound(S3Error):
    """The object, prefix or bucket does not exist (deterministic)."""


class S3AccessDenied(S3Error):
    """The credentials are missing, wrong, or not allowed this operation (deterministic)."""


class S3Unavailable(S3Error):
    """The service failed or could not be reached after the retries (5xx, timeout, connection)."""

    transient = True


class ChecksumMismatch(S3Error):
    """What was read is not what was written: size, SHA-256 or MD5 differs (nothing is kept)."""


class InvalidS3Uri(S3Error):
    """Not an ``s3://bucket/key`` URI."""


def parse_uri(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of ``s3://bucket/key``; the key may be empty (``s3://bucket``)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise InvalidS3Uri(f"{uri!r} is not an s3://bucket/key URI", uri)
    if parts.query or parts.fragment:
        raise InvalidS3Uri(f"{uri!r}: an s3 URI names a bucket and key only (no query or fragment)", uri)
    return parts.netloc, parts.path.lstrip("/")


def join_uri(base: str, *names: str) -> str:
    """``base`` (an ``s3://`` prefix) with ``names`` appended, one ``/`` between each."""
    out = base.rstrip("/")
    for name in names:
        out += "/" + name.strip("/")
    return out


_STATUS = re.compile(r"status code: (\d{3})")


def translate(exc: Exception, uri: str, doing: str) -> S3Error:
    """An :class:`S3Error` for an obstore failure: missing and forbidden are deterministic, the
    rest (5xx after object_store's own retries, timeouts, refused connections) transient."""
    text = str(exc).split("\n", 1)[0][:400]
    if isinstance(exc, S3Error):
        return exc
    if isinstance(exc, FileNotFoundError | ox.NotFoundError):
        what = "bucket" if "NoSuchBucket" in str(exc) else "object"
        return S3NotFound(f"{doing} {uri}: the {what} does not exist", uri)
    if isinstance(exc, ox.PermissionDeniedError | ox.UnauthenticatedError):
        return S3AccessDenied(f"{doing} {uri}: access denied (check the S3 credentials): {text}", uri)
    if isinstance(exc, ox.PreconditionError):
        return S3Unavailable(f"{doing} {uri}: the object changed during the transfer", uri)
    m = _STATUS.search(str(exc))
    if m and m.group(1).startswith("4") and m.group(1) not in ("408", "429"):
        return S3Error(f"{doing} {uri}: refused by the service: {text}", uri)
    return S3Unavailable(f"{doing} {uri}: S3 unavailable: {text}", uri)
