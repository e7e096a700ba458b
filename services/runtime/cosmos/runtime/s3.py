"""The S3 client every Cosmos part uses: streamed, checksummed, retried transfers of ``s3://`` URIs.

Built on ``obstore`` (Rust ``object_store``): measured against SeaweedFS on this machine it uploaded
2-3x faster than aiobotocore (whose SigV4 payload hashing and checksums run in Python) and downloaded
as fast (docs/benchmarks.md, "S3 client choice").

* **Streaming.** Uploads read the file in ``part_size`` parts and go multipart above one part
  (``max_concurrency`` parts in flight); downloads stream to a temporary file beside the destination,
  which is renamed into place only once verified. No object is ever held whole in memory.
* **Checksums.** Every upload carries its SHA-256 as user metadata (``x-amz-meta-cosmos-sha256``),
  computed from the file before it is sent; a download hashes what it writes and compares. Objects
  written by others (no such metadata) are checked against their size and, for a single-part upload,
  their ETag (the MD5 of the body). A mismatch is :class:`ChecksumMismatch` and leaves nothing behind.
* **Retries.** ``object_store`` retries each request on 5xx and connection errors; on top of that a
  whole transfer that still fails transiently is retried with exponential backoff, and a download
  that breaks mid-stream resumes with a ranged read from the bytes it already has (``If-Match`` on the
  ETag so that a replaced object is not spliced).
* **Credentials** come from the standard AWS chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
  (``AWS_SESSION_TOKEN``), ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION`` /
  ``AWS_DEFAULT_REGION``, else the shared files (``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_CONFIG_FILE``,
  profile ``AWS_PROFILE``). Instance metadata (IMDS) is not consulted.

Every failure is an :class:`S3Error` (a :class:`~cosmos.errors.CosmosError`); :attr:`S3Error.transient`
says whether trying again may help (5xx, timeouts, connection loss) or not (missing object or bucket,
access denied, checksum mismatch).

The parts live apart: URIs and the error tree in :mod:`cosmos.runtime.s3_errors`, the AWS chain in
:mod:`cosmos.runtime.s3_config`, the stores and the retry policy in :mod:`cosmos.runtime.s3_transport`,
downloads in :mod:`cosmos.runtime.s3_reads`, uploads in :mod:`cosmos.runtime.s3_writes`. Callers know
them all as this module's.
"""

from __future__ import annotations

from cosmos.runtime.s3_config import S3Config
from cosmos.runtime.s3_errors import (
    ChecksumMismatch,
    InvalidS3Uri,
    S3AccessDenied,
    S3Error,
    S3NotFound,
    S3Unavailable,
    join_uri,
    parse_uri,
)
from cosmos.runtime.s3_reads import S3Reads
from cosmos.runtime.s3_transport import PART_SIZE, READ_CHUNK, SHA256_META, ObjectInfo
from cosmos.runtime.s3_writes import S3Writes

__all__ = [
    "PART_SIZE",
    "READ_CHUNK",
    "SHA256_META",
    "ChecksumMismatch",
    "InvalidS3Uri",
    "ObjectInfo",
    "S3AccessDenied",
    "S3Client",
    "S3Config",
    "S3Error",
    "S3NotFound",
    "S3Unavailable",
    "join_uri",
    "parse_uri",
]


class S3Client(S3Reads, S3Writes):
    """Streams files to and from ``s3://`` URIs (see the module docs). One per process is enough.

    ``S3Client(config, *, part_size, max_concurrency, attempts, backoff, request_retries)``: the
    configuration (None: :meth:`S3Config.from_env`), the multipart part size and parts in flight, the
    attempts at a whole transfer and the first backoff between them, and ``object_store``'s own retries
    of each request (:class:`~cosmos.runtime.s3_transport.S3Transport`)."""
