"""Pipelined JetStream publishes whose acknowledgements arrive as futures.

Why not nats-py's ``JetStreamContext.publish_async``: when JetStream answers a publish with an error
(a lost compare-and-set, a full stream) nats-py 2.16's reply callback raises instead of failing the
future (``APIError.from_error`` raises), so the caller waits forever. And ``JetStreamContext.publish``
is a request per message (a timer, an inbox, a ``PubAck`` dataclass built field by field), about
twice the client CPU of this. One reply subscription serves every publish of a connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from cosmos import errors

_NO_RESPONDERS = "503"


@dataclass(frozen=True, slots=True)
class Ack:
    """JetStream's acknowledgement of a stored message."""

    stream: str
    """The stream that stored it."""
    seq: int
    """Its sequence in that stream (for a KV key: the new revision)."""
    duplicate: bool
    """True when the stream already held a message with this ``Nats-Msg-Id`` and dropped this one."""


class PublishError(errors.CosmosError):
    """JetStream refused a publish (or nothing answered it)."""

    def __init__(self, subject: str, code: int, err_code: int, description: str) -> None:
        super().__init__(f"JetStream refused a publish to {subject!r}: {description} ({err_code})")
        self.subject = subject
        self.code = code
        """HTTP-like status (400, 503, ...)."""
        self.err_code = err_code
        """JetStream's error code, e.g. 10071 for a wrong last sequence (a lost compare-and-set)."""
        self.description = description


class Publisher:
    """Publishes to JetStream over one NATS connection; answers come back on one subscription."""

    def __init__(self, nc: NatsClient, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout
        """Seconds :meth:`stored` waits for an acknowledgement."""
        self._prefix = ""
        self._next = 0
        self._waiting: dict[str, tuple[str, asyncio.Future[Ack]]] = {}

    async def start(self) -> None:
        """Subscribe to the replies (once)."""
        if not self._prefix:
            prefix = f"{self.nc.new_inbox()}."
            await self.nc.subscribe(prefix + "*", cb=self._answer)
            self._prefix = prefix

    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> asyncio.Future[Ack]:
        """Send one message now; the future resolves with its :class:`Ack` or fails with
        :class:`PublishError`. Await it with a timeout (:meth:`stored`, :meth:`all_stored`)."""
        await self.start()
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiting[token] = (subject, future)
        future.add_done_callback(lambda _: self._waiting.pop(token, None))
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token, headers=dict(headers or {}))
        except BaseException:
            future.cancel()
            raise
        return future

    async def stored(self, subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> Ack:
        """Publish one message and wait (at most ``timeout``) until JetStream stored it."""
        return await asyncio.wait_for(await self.publish(subject, data, headers), self.timeout)

    async def all_stored(self, futures: Iterable[asyncio.Future[Ack]]) -> list[Ack]:
        """Wait (at most ``timeout`` in all) for the acknowledgements of earlier publishes."""
        pending = list(futures)
        if not pending:
            return []
        try:
            return await asyncio.wait_for(asyncio.gather(*pending), self.timeout)
        finally:
            for future in pending:
                future.cancel()  # a no-op for those done; the others stop being waited for

    async def _answer(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject[len(self._prefix) :])
        if waiting is None:
            return  # timed out and forgotten
        subject, future = waiting
        if future.done():
            return
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(PublishError(subject, 503, 0, "no stream takes this subject"))
            return
        try:
            answer = json.loads(msg.data)
        except ValueError:
            future.set_exception(
                PublishError(subject, 500, 0, f"unreadable acknowledgement {msg.data[:80]!r}")
            )
            return
        error = answer.get("error")
        if error is not None:
            future.set_exception(
                PublishError(
                    subject,
                    int(error.get("code", 0)),
                    int(error.get("err_code", 0)),
                    error.get("description", ""),
                )
            )
            return
        future.set_result(
            Ack(answer.get("stream", ""), int(answer.get("seq", 0)), bool(answer.get("duplicate")))
        )
