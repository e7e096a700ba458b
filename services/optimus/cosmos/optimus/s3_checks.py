"""The submit-time checks of an encode's ``s3://`` URIs: the source object exists, and the output prefix
holds nothing but an earlier Cosmos publish.

Their storage area was checked already (lexically, :func:`cosmos.security.storage.check_object_uri`);
these are the S3 calls (HEAD, LIST) :meth:`cosmos.optimus.api.EncodeApi.SubmitEncode` makes before it
starts anything. They answer the caller: a down S3 is UNAVAILABLE in seconds.
"""

from __future__ import annotations

from cosmos import errors
from cosmos.optimus.media import publish
from cosmos.runtime import s3


class S3Checks:
    """The checks, with their S3 client made on first use: file-only deployments need no S3 config."""

    def __init__(self) -> None:
        self.client: s3.S3Client | None = None

    def _client(self) -> s3.S3Client:
        """The S3 client (AWS environment)."""
        if self.client is None:
            # Submit-time checks (HEAD, LIST) answer the caller: a down S3 is UNAVAILABLE in seconds,
            # not after the transfer-sized retry budget.
            self.client = s3.S3Client(attempts=2, request_retries=1)
        return self.client

    async def check_source(self, source_uri: str) -> None:
        """SOURCE_UNREADABLE unless the ``s3://`` source object exists (its area was checked already)."""
        try:
            found = await self._client().exists(source_uri)
        except s3.S3Error as exc:
            if exc.transient:
                raise errors.UnavailableError(f"source_uri: S3 is unavailable: {exc.message}") from exc
            found = False
        if not found:
            reason = errors.Reason.ERROR_REASON_SOURCE_UNREADABLE
            raise errors.invalid(
                "source_uri", f"{source_uri} does not exist or cannot be read", reason=reason
            )

    async def refuse_foreign_objects(self, output_uri: str) -> None:
        """FAILED_PRECONDITION (OUTPUT_EXISTS) when the output prefix holds objects other than a Cosmos
        publish (its ``.cosmos-publish.json``): the agent would refuse the upload at the very end."""
        try:
            there = await self._client().list_objects(output_uri)
        except s3.S3Error as exc:
            if exc.transient:
                raise errors.UnavailableError(f"output_uri: S3 is unavailable: {exc.message}") from exc
            raise errors.invalid("output_uri", f"{output_uri} cannot be listed: {exc.message}") from exc
        _, key = s3.parse_uri(output_uri)
        marker = f"{key.rstrip('/')}/{publish.MANIFEST}"
        if there and marker not in {name for name, _ in there}:
            what = f"{output_uri} holds objects Cosmos did not publish"
            raise errors.FailedPreconditionError(
                f"output_uri: {what}; choose another prefix (nothing in S3 is overwritten)",
                reason=errors.Reason.ERROR_REASON_OUTPUT_EXISTS,
                violations=[errors.FieldViolation("output_uri", what)],
            )
