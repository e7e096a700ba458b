"""What ``cosmos workflows|jobs|agents`` share: ``--since``, paging to the end, ids given whole or as a
unique prefix, and the cells every table prints (state names, times)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from cosmos import errors

T = TypeVar("T", bound=Message)


def state_name(enum: object, value: int, prefix: str) -> str:
    """An enum value as a table shows it: ``WORKFLOW_STATE_RUNNING`` -> ``running``."""
    return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]


def when(stamp: timestamp_pb2.Timestamp) -> str:
    """A time as a table shows it; ``-`` when unset."""
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if stamp.seconds else "-"


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime | None:
    """``--since``: a duration back from now (``90s``, ``15m``, ``2h``, ``1d``) or an ISO time."""
    if not text:
        return None
    now = now or dt.datetime.now(dt.UTC)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return now - dt.timedelta(seconds=float(match.group(1)) * unit)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise errors.ConfigError(
            f"--since {text!r}: expected a duration (30s, 15m, 2h, 1d) or an ISO time (2026-01-31T12:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def after(stamp: timestamp_pb2.Timestamp, since: dt.datetime | None) -> bool:
    """Whether ``stamp`` is set and not older than ``since`` (always, without ``since``)."""
    return since is None or (bool(stamp.seconds) and stamp.ToDatetime(dt.UTC) >= since)


async def pages(fetch: Callable[[str], Awaitable[tuple[Sequence[T], str]]]) -> AsyncIterator[Sequence[T]]:
    """Every page of a list call, ``fetch(page_token) -> (items, next_page_token)``."""
    token = ""
    while True:
        items, token = await fetch(token)
        yield items
        if not token:
            return


async def collect(
    fetch: Callable[[str], Awaitable[tuple[Sequence[T], str]]],
    keep: Callable[[T], bool],
    limit: int,
    stamp: Callable[[T], timestamp_pb2.Timestamp] | None = None,
    since: dt.datetime | None = None,
) -> list[T]:
    """Items ``keep`` accepts, newest first, ``limit`` at most (0: all); lists are newest first, so
    a page entirely older than ``since`` ends the walk."""
    found: list[T] = []
    async for page in pages(fetch):
        for item in page:
            if keep(item) and (stamp is None or after(stamp(item), since)):
                found.append(item)
                if limit and len(found) >= limit:
                    return found
        if stamp is not None and since is not None and page and not any(after(stamp(i), since) for i in page):
            return found
    return found


def unique(text: str, ids: Sequence[str], what: str) -> str:
    """The one id of ``ids`` that is ``text`` or starts with it."""
    if text in ids:
        return text
    matches = [i for i in ids if i.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise errors.ConfigError(f"no {what} with id or id prefix {text!r}")
    shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
    raise errors.ConfigError(f"{what} id prefix {text!r} is ambiguous: {shown}")


async def exists(call: Awaitable[Any]) -> bool:
    """Whether a Get call finds its object (NOT_FOUND or INVALID_ARGUMENT: it does not)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return False
        raise
    return True
