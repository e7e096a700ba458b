"""One Stratum leader among replicas: a lease held in a NATS KV key.

Stratum keeps every live job, the queue and the agents' streams in one process's memory, so exactly
one replica may act at a time. Each replica campaigns for the key ``leader`` of the bucket
``stratum-leader``:

- nobody holds it: ``create`` (succeeds for one replica only) makes the caller leader;
- the leader renews it every ``renew_interval`` with a compare-and-set on the revision it wrote last;
- a follower that has seen the same revision for ``ttl`` seconds (by its own clock, so clocks need
  not agree) replaces it with a compare-and-set on that revision: one follower wins the takeover;
- the leader acts only while its last renewal is younger than ``ttl - safety``, so it stops before
  any follower can take over (:meth:`Lease.ensure_held` guards every job write). A leader whose
  renewals fail (NATS away) pauses, and goes on once a renewal finds its own revision again; one that
  finds the key taken has lost: the process stops (its memory is stale) and its supervisor starts it
  again as a follower.

Followers answer every Stratum RPC with UNAVAILABLE, reason ``ERROR_REASON_NOT_LEADER`` and the
leader's address in the error's metadata; clients given every replica's address (``a:1,b:2`` or a DNS
name resolving to all of them) spread calls round robin and retry UNAVAILABLE on the next replica
(:mod:`cosmos.runtime.channels`), so they reach the leader without knowing which it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from cosmos import errors

log = logging.getLogger(__name__)

BUCKET = "stratum-leader"
KEY = "leader"


@dataclass(frozen=True)
class LeaseConfig:
    """Timing of the leader lease (``cosmos stratum --lease-ttl``)."""

    ttl: float = 3.0
    """Seconds a lease lasts unrenewed: a follower takes over once it has seen no renewal this long.
    Takeover after the leader dies takes between ``ttl`` and ``ttl + renew_interval``."""
    renew_interval: float = 0.5
    """Seconds between the leader's renewals (and the followers' looks at the key)."""
    safety: float = 1.0
    """The leader stops acting this many seconds before a follower could take over (must exceed the
    worst delay between a renewal's send and its store, and the clocks' rate difference)."""

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.ttl - self.safety or self.safety <= 0:
            raise errors.ConfigError(
                f"leader lease: need 0 < renew interval ({self.renew_interval}) < ttl ({self.ttl}) - "
                f"safety ({self.safety}), safety > 0"
            )


class LeadershipLost(errors.CosmosError):
    """This replica was leader and no longer is (another took over, or renewing failed too long)."""


class NotLeaderError(errors.UnavailableError):
    """The answer of a follower: try the leader (named in the metadata when known)."""

    reason = errors.reason_name(errors.Reason.ERROR_REASON_NOT_LEADER)


@dataclass
class Holder:
    """Who holds (or last held) the lease."""

    replica: str
    """Who the process is: its host name and advertised address (:func:`replica_id`). Two live
    processes never share one (the address is bound), so a process started again under the same id
    takes its own unrenewed lease back at once instead of waiting out the ttl."""
    address: str
    """Where its clients reach it (``--advertise``)."""

    def encode(self) -> bytes:
        return json.dumps({"replica": self.replica, "address": self.address}).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Holder | None:
        try:
            raw = json.loads(data or b"")
            return cls(replica=str(raw["replica"]), address=str(raw["address"]))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated like any holder, taken over once it goes unrenewed


def replica_id(address: str) -> str:
    """This process's replica id: ``<host name>/<advertised address>``."""
    return f"{socket.gethostname()}/{address}"


class Lease:
    """This replica's side of the lease: campaigning, renewing, and whether it may act now."""

    def __init__(
        self,
        kv: KeyValue,
        me: Holder,
        config: LeaseConfig = LeaseConfig(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.me = me
        self.config = config
        self.clock = clock
        self.leader: Holder | None = None
        """The holder last seen (this replica itself once elected)."""
        self._revision = 0
        """Leader: the revision of our last write. Follower: the revision last seen."""
        self._since = 0.0
        """Leader: when our last renewal was sent. Follower: when ``_revision`` was first seen."""
        self._leading = False
        self.tried = False
        """Whether the first try to lead is done (its outcome known: leader, or who leads)."""

    @property
    def elected(self) -> bool:
        """Whether this replica won the lease (it may still be recovering, or its lease lapsing)."""
        return self._leading

    @property
    def is_leader(self) -> bool:
        """Whether this replica may act now (elected, and its lease surely not yet taken over)."""
        return self._leading and self.clock() - self._since < self.config.ttl - self.config.safety

    def ensure_held(self) -> None:
        """Raise :class:`LeadershipLost` unless this replica may act now (guards job writes)."""
        if not self.is_leader:
            raise LeadershipLost("this Stratum replica's leader lease lapsed; it stops acting")

    def refusal(self) -> NotLeaderError:
        """What a follower answers."""
        known = self.leader if self.leader is not None and self.leader.replica != self.me.replica else None
        where = f"the leader is at {known.address}" if known else "no leader is known yet"
        error = NotLeaderError(
            f"this Stratum replica ({self.me.address}) is not the leader: {where}; retry (every replica's "
            "address in the client's Stratum target lets it find the leader)",
            metadata={"leader": known.address if known else ""},
        )
        error.retry_delay = self.config.renew_interval
        return error

    async def campaign(self, stopping: asyncio.Event) -> None:
        """Follow until elected (returns), or until ``stopping``."""
        while not stopping.is_set():
            try:
                if await self._try_to_lead():
                    return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("trying to lead failed", extra={"fields": {"error": repr(exc)}})
            finally:
                self.tried = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.config.renew_interval)

    async def hold(self, stopping: asyncio.Event) -> None:
        """Renew until ``stopping`` (returns), or raise :class:`LeadershipLost` once another replica
        holds the lease. While renewals fail (NATS away) the lease lapses: :attr:`is_leader` turns
        false before any follower could take over, and this replica acts again only if its next
        renewal still finds its own revision (then nobody else led meanwhile)."""
        failing = False
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.config.renew_interval)
            if stopping.is_set():
                return
            sent = self.clock()
            try:
                self._revision = await self.kv.update(KEY, self.me.encode(), last=self._revision)
            except nats.js.errors.KeyWrongLastSequenceError as exc:
                self._leading = False
                raise LeadershipLost("another Stratum replica took the leader lease") from exc
            except (nats.errors.Error, TimeoutError) as exc:
                if not failing:
                    log.warning("renewing the leader lease failed", extra={"fields": {"error": repr(exc)}})
                failing = True
                continue
            if failing and sent - self._since >= self.config.ttl - self.config.safety:
                log.warning("leader lease renewed after a lapse; leading again")
            self._since, failing = sent, False

    async def release(self) -> None:
        """Give the lease up at a clean stop, so a follower takes over at once, not after ``ttl``."""
        if not self._leading:
            return
        self._leading = False
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self.kv.delete(KEY, last=self._revision)

    async def _try_to_lead(self) -> bool:
        sent = self.clock()
        try:
            entry = await self.kv.get(KEY)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            entry = None
        if entry is None or not entry.value:
            try:
                revision = await self.kv.create(KEY, self.me.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                return False  # another replica was quicker
            return self._elected(revision, sent)
        revision = entry.revision or 0
        holder = Holder.decode(entry.value)
        self.leader = holder or self.leader
        # Our own lease from before a restart is taken back at once: the process that held it is gone.
        if holder is None or holder.replica != self.me.replica:
            if revision != self._revision:
                self._revision, self._since = revision, sent  # renewed (or new): the clock starts again
                return False
            if sent - self._since < self.config.ttl:
                return False
        try:
            revision = await self.kv.update(KEY, self.me.encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False  # renewed meanwhile, or another follower took over first
        return self._elected(revision, sent)

    def _elected(self, revision: int, sent: float) -> bool:
        previous = self.leader
        self._revision, self._since, self._leading = revision, sent, True
        self.leader = self.me
        log.info(
            "elected Stratum leader",
            extra={"fields": {"address": self.me.address, "previous": previous.address if previous else ""}},
        )
        return True


async def lead(
    lease: Lease,
    stopping: asyncio.Event,
    on_elected: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """Campaign; once elected, run ``on_elected`` (recover, then dispatch until ``stopping``) while
    holding the lease. Raises :class:`LeadershipLost` when the lease is lost (``on_elected`` is
    cancelled), or what ``on_elected`` raised."""
    await lease.campaign(stopping)
    if stopping.is_set():
        return
    holding = asyncio.create_task(lease.hold(stopping))
    working = asyncio.create_task(on_elected())
    try:
        done, _ = await asyncio.wait({holding, working}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # LeadershipLost, or a failure of the work
        await asyncio.gather(holding, working)
    finally:
        for task in (holding, working):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, LeadershipLost):
                    await task
