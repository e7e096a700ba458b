"""A 3-node JetStream cluster: Cosmos's streams and buckets at R3, R1 assets migrated to R3."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import security_harness
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StreamConfig
from nats_cluster import NatsCluster

from cosmos import errors
from cosmos.cli import up
from cosmos.plato.store import PlatoStore, StoreConfig
from cosmos.protocol import subjects
from cosmos.runtime import jetstream
from cosmos.runtime.config import Address, free_port
from cosmos.security.tls import TlsFiles
from cosmos.stack import natsd
from cosmos.stack.embedded import EmbeddedStack, StackConfig
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


def test_routes_are_authenticated_and_an_insecure_cluster_is_refused(tmp_path: Path) -> None:
    tls = TlsFiles.in_dir(security_harness.pki_dir(), "nats")
    node = natsd.ClusterNode(
        Address("127.0.0.1", 6222), (Address("127.0.0.1", 6222), Address("127.0.0.1", 6223))
    )
    conf = json.loads(
        natsd.server_config(
            Address("127.0.0.1", 4222), tmp_path / "s", tls, natsd.default_users(), "n1", node
        )
    )
    cluster = conf["cluster"]
    assert cluster["tls"]["verify_and_map"] is True and cluster["tls"]["ca_file"] == str(tls.ca)
    assert cluster["authorization"] == {"user": "spiffe://cosmos/nats/nats"}
    assert cluster["routes"] == ["nats-route://127.0.0.1:6222", "nats-route://127.0.0.1:6223"]
    with pytest.raises(errors.ConfigError, match="needs TLS"):
        natsd.nats_server_argv(Address("127.0.0.1", 4222), tmp_path / "s", cluster=node)


async def test_a_server_with_another_certificate_cannot_join_as_a_route(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    # A rogue nats-server presenting Plato's certificate (CA-signed, but not the nats role) on its routes.
    nc, js = await _connect(cluster.url)
    try:
        await PlatoStore(nc, js, StoreConfig(replicas=3)).ensure()
    finally:
        await nc.close()
    routes = cluster.route_addresses
    rogue_route = Address("127.0.0.1", free_port())
    argv = natsd.nats_server_argv(
        Address("127.0.0.1", free_port()),
        tmp_path / "rogue",
        "rogue",
        tls=TlsFiles.in_dir(security_harness.pki_dir(), "plato"),
        users=natsd.default_users(),
        cluster=natsd.ClusterNode(rogue_route, (*routes, rogue_route)),
    )
    rogue = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        # nats-server refuses the route: "Router connection closed: Authentication Failure".
        while (
            "router connection closed: authentication failure" not in cluster.nodes[0].log.read_text().lower()
        ):
            assert time.monotonic() < deadline, cluster.nodes[0].log.read_text()[-3000:]
            await asyncio.sleep(0.2)
        nc, js = await _connect(cluster.url)
        try:
            # The cluster carries on with its three peers and no other.
            info = await js.stream_info(subjects.EVENTS_STREAM)
            assert info.cluster is not None
            peers = {info.cluster.leader, *(p.name for p in info.cluster.replicas or [])}
            assert peers == {"n1", "n2", "n3"}, info.cluster
        finally:
            await nc.close()
    finally:
        rogue.kill()
        await rogue.wait()


async def test_cosmos_up_flag_gives_every_service_all_nodes_and_refuses_an_even_count(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    up.add_stack_arguments(parser)
    cfg = up.stack_config(parser.parse_args(["--nats-cluster", "3", "--nats-port", "4300"]))
    assert cfg.nats_cluster == 3 and cfg.replicas == 3
    cfg.nats_extra_ports = (4301, 4302)
    assert jetstream.servers(cfg.nats_url) == [
        "nats://127.0.0.1:4300",
        "nats://127.0.0.1:4301",
        "nats://127.0.0.1:4302",
    ]
    even = EmbeddedStack(StackConfig(nats_cluster=2, data_dir=tmp_path, nats_port=free_port(), insecure=True))
    with pytest.raises(errors.ConfigError, match="expected 1, 3 or 5"):
        await even._start_nats()
