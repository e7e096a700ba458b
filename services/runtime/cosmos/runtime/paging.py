"""``page_size`` / ``page_token`` handling shared by every List RPC.

Tokens are opaque to callers: URL-safe base64 of the position after the last item returned, bound to
the list's filter so a token cannot be replayed against another query. Lists in a fixed order use an
offset (:func:`slice_page`); lists of things being created while a client pages through them, newest
first, use the last item's sort key as a cursor (:func:`newest_first`), so new items neither repeat
nor shift the following pages.

A page also ends before its items reach :data:`MAX_PAGE_BYTES` (pass ``size``, e.g.
``lambda m: m.ByteSize()``): a response always fits a client's default 4 MiB message limit, however
big the items, and the rest comes on the next page.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cosmos import errors

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_BYTES = 3 * 1024 * 1024
"""Serialized size of one page's items at most (at least one item is always returned)."""


@dataclass(frozen=True)
class Page:
    """Where a page starts and how long it is."""

    offset: int
    """Index of the first item of the page in the full, ordered listing."""
    size: int
    """Number of items on the page."""
    after: tuple[int, str] | None = None
    """For :func:`newest_first`: the sort key of the previous page's last item (None: first page)."""


def parse(page_size: int, page_token: str, query: str = "") -> Page:
    """Validate the request's paging fields; ``query`` identifies the filter the token belongs to."""
    if page_size < 0:
        raise errors.InvalidArgumentError(
            "page_size must not be negative",
            violations=[
                errors.FieldViolation("page_size", f"{page_size} is negative; use 0 for the default")
            ],
        )
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return Page(0, size)
    try:
        decoded = json.loads(base64.urlsafe_b64decode(page_token.encode()))
        token_query = str(decoded["q"])
        cursor = decoded.get("c")
        offset = 0 if cursor is not None else int(decoded["o"])
        after = (int(cursor[0]), str(cursor[1])) if cursor is not None else None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise errors.InvalidArgumentError(
            "page_token is not a token this service issued",
            reason=errors.Reason.ERROR_REASON_INVALID_PAGE_TOKEN,
            violations=[errors.FieldViolation("page_token", "malformed; pass next_page_token unchanged")],
        ) from exc
    if token_query != query or offset < 0:
        raise errors.InvalidArgumentError(
            "page_token belongs to a different query",
            reason=errors.Reason.ERROR_REASON_INVALID_PAGE_TOKEN,
            violations=[
                errors.FieldViolation("page_token", "issued for other filters; keep the filters unchanged")
            ],
        )
    return Page(offset, size, after)


def token(offset: int, query: str = "") -> str:
    """The opaque token for the page starting at ``offset``."""
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "q": query}).encode()).decode()


def within(chunk: list[T], size: Callable[[T], int] | None, max_bytes: int) -> list[T]:
    """The first items of ``chunk`` whose sizes add up to at most ``max_bytes`` (at least one)."""
    if size is None:
        return chunk
    total = 0
    for i, item in enumerate(chunk):
        total += size(item)
        if total > max_bytes and i > 0:
            return chunk[:i]
    return chunk


def slice_page(
    items: Sequence[T],
    page: Page,
    query: str = "",
    size: Callable[[T], int] | None = None,
    max_bytes: int = MAX_PAGE_BYTES,
) -> tuple[list[T], str]:
    """The page's items and the next page's token (empty on the last page)."""
    chunk = within(list(items[page.offset : page.offset + page.size]), size, max_bytes)
    end = page.offset + len(chunk)
    return chunk, token(end, query) if end < len(items) else ""


def newest_first(
    items: Iterable[T],
    key: Callable[[T], tuple[int, str]],
    page: Page,
    query: str = "",
    size: Callable[[T], int] | None = None,
    max_bytes: int = MAX_PAGE_BYTES,
) -> tuple[list[T], str]:
    """The page of ``items`` ordered newest first by ``key`` (creation time in ns, then id, both
    descending) after the token's cursor, and the next page's token (empty on the last page)."""
    ordered = sorted(items, key=key, reverse=True)
    if page.after is not None:
        ordered = [item for item in ordered if key(item) < page.after]
    chunk = within(ordered[: page.size], size, max_bytes)
    if len(ordered) <= len(chunk):
        return chunk, ""
    last = key(chunk[-1])
    cursor = base64.urlsafe_b64encode(json.dumps({"c": [last[0], last[1]], "q": query}).encode()).decode()
    return chunk, cursor
