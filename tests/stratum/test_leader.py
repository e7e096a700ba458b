"""The Stratum leader lease against a real nats-server, with a clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from cosmos import errors
from cosmos.stratum import leader

CONFIG = leader.LeaseConfig(ttl=3.0, renew_interval=0.5, safety=1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def kv(shared_nats_url: str, nats_prefix: str) -> AsyncIterator[KeyValue]:
    nc: NatsClient = await nats.connect(shared_nats_url)
    js = nc.jetstream()
    # The lease works on whichever bucket it is given: this test's own, on the session's server.
    yield await js.create_key_value(KeyValueConfig(bucket=f"{nats_prefix}-{leader.BUCKET}", history=1))
    await nc.close()


def lease(kv: KeyValue, name: str, clock: Clock) -> leader.Lease:
    return leader.Lease(kv, leader.Holder(replica=f"host/{name}", address=name), CONFIG, clock)


async def test_one_replica_leads_a_follower_takes_over_only_after_a_full_ttl_unrenewed(kv: KeyValue) -> None:
    clock = Clock()
    a, b = lease(kv, "a:1", clock), lease(kv, "b:1", clock)
    assert await a._try_to_lead() and a.is_leader
    assert not await b._try_to_lead() and not b.is_leader
    refusal = b.refusal()
    assert isinstance(refusal, errors.UnavailableError) and refusal.reason == "ERROR_REASON_NOT_LEADER"
    assert refusal.metadata == {"leader": "a:1"} and "the leader is at a:1" in refusal.message

    clock.now += CONFIG.ttl - 0.1  # the leader is silent, but not yet for a whole ttl
    assert not await b._try_to_lead()
    # The leader stops acting before anyone could take over: ttl - safety after its last renewal.
    assert not a.is_leader
    with pytest.raises(leader.LeadershipLost):
        a.ensure_held()
    clock.now += 0.2
    assert await b._try_to_lead() and b.is_leader
    # The old leader learns it on its next renewal (its compare-and-set fails) and stops.
    a._leading = True
    a._since = clock.now
    with pytest.raises(leader.LeadershipLost, match="another Stratum replica took"):
        await a.hold(asyncio.Event())


async def test_a_renewing_leader_keeps_the_lease_and_a_clean_stop_hands_it_over_at_once(kv: KeyValue) -> None:
    clock = Clock()
    a, b = lease(kv, "a:1", clock), lease(kv, "b:1", clock)
    assert await a._try_to_lead()
    for _ in range(10):  # time passes, the leader renews: the follower never takes over
        clock.now += 1.0
        a._revision = await kv.update(leader.KEY, a.me.encode(), last=a._revision)
        a._since = clock.now
        assert not await b._try_to_lead() and a.is_leader
    await a.release()
    assert not a.is_leader
    assert await b._try_to_lead() and b.is_leader  # no ttl to wait out


async def test_a_restarted_replica_takes_its_own_lease_back_at_once(kv: KeyValue) -> None:
    clock = Clock()
    assert await lease(kv, "a:1", clock)._try_to_lead()
    other = lease(kv, "b:1", clock)
    assert not await other._try_to_lead()
    again = lease(kv, "a:1", clock)  # the same host and address: the old process is gone
    assert await again._try_to_lead() and again.is_leader
    assert not await other._try_to_lead()


def test_lease_timing_is_checked() -> None:
    with pytest.raises(errors.ConfigError):
        leader.LeaseConfig(ttl=1.0, renew_interval=0.9, safety=0.5)


async def test_a_leader_whose_renewals_lapse_pauses_and_resumes_if_nobody_took_over(kv: KeyValue) -> None:
    clock = Clock()
    a = lease(kv, "a:1", clock)
    assert await a._try_to_lead()
    clock.now += CONFIG.ttl - CONFIG.safety  # renewals failed this long (NATS away): it stops acting
    assert not a.is_leader
    stopping = asyncio.Event()
    holding = asyncio.create_task(a.hold(stopping))
    for _ in range(40):  # its next renewal finds its own revision: nobody led meanwhile
        await asyncio.sleep(0.05)
        if a.is_leader:
            break
    assert a.is_leader
    stopping.set()
    await holding
