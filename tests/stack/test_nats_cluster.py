"""A 3-node JetStream cluster: Cosmos's streams and buckets at R3, R1 assets migrated to R3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import security_harness
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StreamConfig
from nats_cluster import NatsCluster

from cosmos.plato import subjects
from cosmos.plato.store import PlatoStore, StoreConfig
from cosmos.runtime import jetstream
from cosmos.security.tls import TlsFiles
from cosmos.stratum import store as stratum_store


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    started = NatsCluster(tmp_path / "nats")
    started.start()
    yield started
    started.stop()


async def _connect(url: str, as_: str = "plato") -> tuple[NatsClient, JetStreamContext]:
    files = TlsFiles.in_dir(security_harness.pki_dir(), as_)
    nc = await nats.connect(jetstream.servers(url), **security_harness.nats_options(files))
    return nc, nc.jetstream()


async def _replicas(js: JetStreamContext, stream: str) -> int:
    info = await js.stream_info(stream)
    return info.config.num_replicas or 1


async def test_r1_streams_and_buckets_are_migrated_to_r3(cluster: NatsCluster) -> None:
    nc, js = await _connect(cluster.url)
    try:
        # What a single-node Cosmos left behind: R1 assets with data in them.
        async def r1() -> None:
            await js.add_stream(StreamConfig(name=subjects.EVENTS_STREAM, subjects=[subjects.EVENTS_ALL]))
            kv = await js.create_key_value(KeyValueConfig(bucket=subjects.WORKFLOWS_BUCKET, history=1))
            await kv.put("wf-1", b"kept")
            obj = await js.create_object_store(subjects.BLOBS_BUCKET, ObjectStoreConfig())
            await obj.put("blob-1", b"blob kept")

        await jetstream.until_ready(r1, "R1 assets")
        assert await _replicas(js, f"KV_{subjects.WORKFLOWS_BUCKET}") == 1

        store = PlatoStore(nc, js, StoreConfig(replicas=3))
        await store.ensure()
        for stream in (
            subjects.EVENTS_STREAM,
            subjects.INBOX_STREAM,
            f"KV_{subjects.WORKFLOWS_BUCKET}",
            f"KV_{subjects.DEFINITIONS_BUCKET}",
            f"OBJ_{subjects.BLOBS_BUCKET}",
        ):
            assert await _replicas(js, stream) == 3, stream
        assert (await store.workflows.get("wf-1")).value == b"kept"
        assert (await store.blobs.get("blob-1")).data == b"blob kept"
        # A second start finds everything as it wants it.
        await PlatoStore(nc, js, StoreConfig(replicas=3)).ensure()

    finally:
        await nc.close()

    nc, js = await _connect(cluster.url, "stratum")
    try:
        r1_jobs = KeyValueConfig(bucket=stratum_store.JOBS_BUCKET, history=1)
        await jetstream.until_ready(lambda: js.create_key_value(r1_jobs), "R1 jobs")
        jobs = stratum_store.JobStore(nc, js, replicas=3)
        await jobs.ensure()
        for stream in (stratum_store.EVENTS_STREAM, f"KV_{stratum_store.JOBS_BUCKET}"):
            assert await _replicas(js, stream) == 3, stream
    finally:
        await nc.close()
