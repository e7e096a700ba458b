"""The pipelined JetStream publisher against a real NATS server: acks, duplicates, refusals, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import Header, KeyValueConfig, StreamConfig

from cosmos.runtime.publisher import Publisher, PublishError


@dataclass(frozen=True)
class Names:
    """This test's stream, bucket and subjects on the session's shared server."""

    prefix: str

    @property
    def stream(self) -> str:
        return f"{self.prefix}T"

    @property
    def bucket(self) -> str:
        return f"{self.prefix}b"

    def subject(self, tail: str) -> str:
        return f"{self.prefix}.{tail}"


@pytest.fixture
def names(nats_prefix: str) -> Names:
    return Names(nats_prefix)


@pytest.fixture
async def nc(shared_nats_url: str, names: Names) -> AsyncIterator[NatsClient]:
    # The publisher is tested on its own, on an open server (its streams are nobody's in the
    # locked-down server's permissions).
    client = await nats.connect(shared_nats_url)
    js = client.jetstream()
    await js.add_stream(
        StreamConfig(name=names.stream, subjects=[names.subject("t.>")], duplicate_window=60.0)
    )
    await js.create_key_value(KeyValueConfig(bucket=names.bucket, history=1))
    yield client
    await client.close()


async def test_publishes_are_acknowledged_in_order_and_duplicates_are_told(
    nc: NatsClient, names: Names
) -> None:
    publisher = Publisher(nc)
    futures = [
        await publisher.publish(names.subject(f"t.{i}"), b"x", {"Nats-Msg-Id": f"m{i}"}) for i in range(50)
    ]
    acks = await publisher.all_stored(futures)
    assert [a.seq for a in acks] == list(range(1, 51))
    assert {a.stream for a in acks} == {names.stream} and not any(a.duplicate for a in acks)
    again = await publisher.stored(names.subject("t.0"), b"x", {"Nats-Msg-Id": "m0"})
    assert again.duplicate and again.seq == 1


async def test_a_lost_compare_and_set_fails_at_once_with_its_code(nc: NatsClient, names: Names) -> None:
    publisher = Publisher(nc, timeout=30.0)
    create = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: "0"}
    first = await publisher.stored(f"$KV.{names.bucket}.k", b"1", create)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PublishError) as caught:
        await publisher.stored(f"$KV.{names.bucket}.k", b"2", create)
    assert caught.value.err_code == 10071 and caught.value.code == 400
    assert "wrong last sequence" in str(caught.value)
    assert loop.time() - started < 5  # answered, not timed out (nats-py's publish_async hangs here)
    update = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(first.seq)}
    assert (await publisher.stored(f"$KV.{names.bucket}.k", b"2", update)).seq == first.seq + 1
    entry = await nc.jetstream().key_value(names.bucket)
    assert (await entry.get("k")).value == b"2"


async def test_a_subject_no_stream_takes_is_refused(nc: NatsClient, names: Names) -> None:
    publisher = Publisher(nc)
    with pytest.raises(PublishError) as caught:
        await publisher.stored(names.subject("nowhere.x"), b"x")
    assert caught.value.code == 503


async def test_an_unanswered_publish_times_out_and_is_forgotten(nc: NatsClient, names: Names) -> None:
    publisher = Publisher(nc, timeout=0.3)

    async def silent(msg: Msg) -> None:  # takes it, never answers
        return None

    await nc.subscribe(names.subject("silent.x"), cb=silent)
    with pytest.raises(TimeoutError):
        await publisher.stored(names.subject("silent.x"), b"x")
    assert not publisher._waiting
