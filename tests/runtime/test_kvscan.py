"""KV scans against a real nats-server: what they return, and that they leave no consumer behind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig

from cosmos import errors
from cosmos.runtime import kvscan


@pytest.fixture
async def nc(shared_nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(shared_nats_url)
    yield client
    await client.close()


@pytest.fixture
def bucket(nats_prefix: str) -> str:
    return f"{nats_prefix}-scan"


async def test_a_scan_returns_the_latest_live_entries_and_deletes_its_consumer(
    nc: NatsClient, bucket: str
) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
    assert await kvscan.keys(js, bucket, kv) == []  # an empty bucket is no error
    await kv.put("wf-1.a", b"1")
    await kv.put("wf-1.a", b"2")
    await kv.put("wf-1.b", b"3")
    await kv.put("wf-2.a", b"4")
    await kv.put("wf-1.c", b"5")
    await kv.delete("wf-1.c")

    found = await kvscan.entries(js, bucket, kv, "wf-1.*")
    assert sorted((e.key, e.value) for e in found) == [("wf-1.a", b"2"), ("wf-1.b", b"3")]
    assert await kvscan.keys(js, bucket, kv) == ["wf-1.a", "wf-1.b", "wf-2.a"]
    # Many scans, as a polled listing makes them: none of their consumers is left on the stream.
    for _ in range(50):
        await kvscan.keys(js, bucket, kv)
    info = await js.stream_info(f"KV_{bucket}")
    assert info.state.consumer_count == 0


async def test_a_scan_that_misses_a_key_the_stream_holds_is_made_again_then_refused(
    nc: NatsClient, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch can call itself caught up with a key undelivered; the scan checks the keys against the
    stream's own subject list and never answers a partial listing (a rule reading a partial workflow
    once saw a completed step missing and finished the workflow early)."""
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
    for key in ("wf-1.a", "wf-1.b", "wf-1.c"):
        await kv.put(key, b"x")
    await kv.delete("wf-1.c")  # a deleted key's marker counts as delivered, and is not returned
    real_scan = kvscan._scan
    lossy = {"left": 1}

    async def losing_one(*args: object, **kwargs: object) -> tuple[list[object], set[str]]:
        found, seen = await real_scan(*args, **kwargs)  # type: ignore[arg-type]
        if lossy["left"]:
            lossy["left"] -= 1
            return [e for e in found if e.key != "wf-1.b"], seen - {"wf-1.b"}
        return found, seen  # type: ignore[return-value]

    monkeypatch.setattr(kvscan, "_scan", losing_one)
    assert await kvscan.keys(js, bucket, kv, "wf-1.*") == ["wf-1.a", "wf-1.b"]
    assert lossy["left"] == 0

    lossy["left"] = kvscan.SCAN_TRIES
    with pytest.raises(errors.UnavailableError, match="missed 1 key"):
        await kvscan.keys(js, bucket, kv, "wf-1.*")
