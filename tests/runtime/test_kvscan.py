"""KV scans against a real nats-server: what they return, and that they leave no consumer behind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig

from cosmos.runtime import kvscan

BUCKET = "scan-test"


@pytest.fixture
async def nc(insecure_nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(insecure_nats_url)
    yield client
    await client.close()


async def test_a_scan_returns_the_latest_live_entries_and_deletes_its_consumer(nc: NatsClient) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1))
    assert await kvscan.keys(js, BUCKET, kv) == []  # an empty bucket is no error
    await kv.put("wf-1.a", b"1")
    await kv.put("wf-1.a", b"2")
    await kv.put("wf-1.b", b"3")
    await kv.put("wf-2.a", b"4")
    await kv.put("wf-1.c", b"5")
    await kv.delete("wf-1.c")

    found = await kvscan.entries(js, BUCKET, kv, "wf-1.*")
    assert sorted((e.key, e.value) for e in found) == [("wf-1.a", b"2"), ("wf-1.b", b"3")]
    assert await kvscan.keys(js, BUCKET, kv) == ["wf-1.a", "wf-1.b", "wf-2.a"]
    # Many scans, as a polled listing makes them: none of their consumers is left on the stream.
    for _ in range(50):
        await kvscan.keys(js, BUCKET, kv)
    info = await js.stream_info(f"KV_{BUCKET}")
    assert info.state.consumer_count == 0
