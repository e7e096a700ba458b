"""Which version of each definition is the latest, known without a JetStream round trip per start.

Stored definition versions never change, so they can be cached for good; the ``<id>.latest`` pointer
does change, by this or by any other Plato process. :class:`LatestVersions` keeps a map of every
pointer current with a watch on the definitions bucket. The map is trusted only while the watch is
known to be whole: after its initial snapshot, while the NATS connection is up and has not been
re-established since the watch began (updates may have been missed across a reconnect; the watch is
then restarted). Whenever it is not trusted, or does not know an id, callers read the bucket.

A pointer moved by another process reaches this one as fast as NATS delivers the watch update (well
under a millisecond on one server): a start arriving in between begins on the previous version, as if
it had arrived just before the registration. A registration made by this process is seen at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)

SUFFIX = ".latest"


class LatestVersions:
    """The latest version of every definition id, kept current by a watch on the bucket."""

    def __init__(self, nc: NatsClient, bucket: KeyValue) -> None:
        self._nc = nc
        self._bucket = bucket
        self._versions: dict[str, int] = {}
        self._synced = False
        self._reconnects = -1
        self._watching = False
        self._task: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None

    def get(self, definition_id: str) -> int | None:
        """The latest version of ``definition_id``, or None when the bucket has to be asked."""
        if not self._trusted():
            return None
        return self._versions.get(definition_id)

    def note(self, definition_id: str, version: int) -> None:
        """A version this process has just made the latest (seen before the watch echoes it)."""
        # Pointers only ever move forward, so the larger number is the newer one whatever the order.
        if version > self._versions.get(definition_id, 0):
            self._versions[definition_id] = version

    def _trusted(self) -> bool:
        nc = self._nc
        if self._synced and nc.is_connected and nc.stats["reconnects"] == self._reconnects:
            return True
        if self._watching and self._restarting is None and nc.is_connected:
            self._synced = False
            self._restarting = asyncio.get_running_loop().create_task(self._restart())
        return False

    async def start(self) -> None:
        """Begin watching; returns once the current pointers are known."""
        self._watching = True
        self._reconnects = self._nc.stats["reconnects"]
        watcher = await self._bucket.watch(">")
        try:
            while (entry := await watcher.updates(timeout=30.0)) is not None:  # type: ignore[no-untyped-call]
                self._apply(entry.key, entry.value, entry.operation)
        except BaseException:
            await watcher.stop()  # type: ignore[no-untyped-call]
            raise
        # None marks the end of the initial snapshot: from here on the map follows every change.
        self._synced = True
        self._task = asyncio.get_running_loop().create_task(self._follow(watcher))

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=None)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    continue
                if isinstance(entry, KeyValue.Entry):
                    self._apply(entry.key, entry.value, entry.operation)
                elif entry is not None:  # the watcher was stopped
                    return
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _restart(self) -> None:
        try:
            await self._stop_following()
            await self.start()
            log.info("definition watch restarted")
        except Exception as exc:
            # Until it works again every start reads the pointer from the bucket; try again later.
            log.warning("definition watch failed", extra={"fields": {"error": repr(exc)}})
            await asyncio.sleep(1.0)
        finally:
            self._restarting = None

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if not key.endswith(SUFFIX):
            return  # a stored version, not a pointer
        definition_id = key[: -len(SUFFIX)]
        if operation in (KV_DEL, KV_PURGE) or not value:
            self._versions.pop(definition_id, None)
            return
        self.note(definition_id, int(value.decode()))

    async def stop(self) -> None:
        """Stop watching (the map is no longer trusted)."""
        self._watching = False
        restarting, self._restarting = self._restarting, None
        if restarting is not None:
            restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await restarting
        await self._stop_following()

    async def _stop_following(self) -> None:
        self._synced = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
