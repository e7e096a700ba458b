"""Every component of a real embedded stack serves Prometheus metrics: after a real encode each
endpoint is scraped over HTTP and parsed with the Prometheus text parser, and the RPC, workflow,
step, queue, placement, job, agent and GPU families are there with the values the encode implies."""

from __future__ import annotations

import argparse
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from encode_harness import embedded_stack, finished, make_clip
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cosmos import errors
from cosmos.cli import up
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.runtime.config import free_port
from cosmos.stack.embedded import DEFAULT_METRICS_PORTS, EmbeddedStack, StackConfig

Samples = dict[str, list[Sample]]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    async with embedded_stack(tmp_path / "data", metrics=True) as running:
        yield running


async def scrape(url: str) -> tuple[Samples, set[str]]:
    """Samples by name, and the family names, of one scrape of ``url``."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, url
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4"), response.headers
        text = await response.text()
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


async def test_each_component_serves_its_metrics_after_an_encode(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    # The endpoints table lists every metrics URL.
    urls = {name: stack.metrics_url(name) for name in ("optimus", "plato", "stratum", "agent")}
    assert all(urls.values()), urls
    listed = {ep.address for ep in stack.endpoints if "Prometheus metrics" in ep.services}
    assert listed == set(urls.values())

    area = stack.config.storage_dir / "default"
    area.mkdir(parents=True, exist_ok=True)
    source = make_clip(area / "metrics.mp4", seconds=3, size="320x240")
    async with stack.context().channel("optimus") as channel:
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        submitted = await stub.SubmitEncode(
            encode_service_pb2.SubmitEncodeRequest(
                request_id=uuid.uuid4().hex,
                source_uri=source.as_uri(),
                profiles=["360p"],
                output_uri=(area / "out").as_uri(),
                quality=encode_pb2.QUALITY_MODE_OFF,
            )
        )
        done = await finished(stub, submitted.encode.encode_id, timeout=240)
    assert done.state == encode_pb2.ENCODE_STATE_SUCCEEDED, done.error_message

    # Optimus: the submit and its RPCs.
    optimus, families = await scrape(str(urls["optimus"]))
    assert value(optimus, "cosmos_optimus_encodes_submitted_total", outcome="started") == 1
    assert value(optimus, "cosmos_optimus_encodes_submitted_total", outcome="deduplicated") == 0
    rpc = {"service": "cosmos.optimus.v1.EncodeService"}
    assert value(optimus, "cosmos_rpc_requests_total", **rpc, method="SubmitEncode", code="OK") >= 1
    assert value(optimus, "cosmos_rpc_requests_total", **rpc, method="WatchEncode", code="OK") >= 1
    assert value(optimus, "cosmos_rpc_duration_seconds_count", **rpc, method="SubmitEncode") >= 1
    assert "process_cpu_seconds" in families

    # Plato: the workflow started and completed, its steps scheduled and completed with latencies,
    # the engine's inbox consumer and the task queues sampled.
    plato, _ = await scrape(str(urls["plato"]))
    workflow = {"definition": "encode-ladder"}
    assert value(plato, "cosmos_plato_workflows_total", **workflow, state="started") == 1
    assert value(plato, "cosmos_plato_workflows_total", **workflow, state="completed") == 1
    assert value(plato, "cosmos_plato_workflows_total", state="failed") == 0
    completed = value(plato, "cosmos_plato_steps_total", **workflow, state="completed")
    assert completed >= 3
    assert value(plato, "cosmos_plato_steps_total", **workflow, state="scheduled") >= completed
    assert value(plato, "cosmos_plato_step_duration_seconds_count", **workflow) == completed
    assert value(plato, "cosmos_plato_step_duration_seconds_sum", **workflow) > 0
    assert value(plato, "cosmos_plato_transitions_total") >= 2
    engine = {"stream": "PLATO_INBOX", "consumer": "plato-engine"}
    assert len([s for s in plato["cosmos_nats_consumer_pending"] if s.labels == engine]) == 1
    assert value(plato, "cosmos_nats_consumer_pending", **engine) >= 0
    assert any(s.labels["stream"] == "PLATO_TASKS" for s in plato["cosmos_nats_consumer_pending"])
    assert "cosmos_plato_task_queue_oldest_age_seconds" in plato
    assert "cosmos_plato_inbox_depth" in plato
    assert value(plato, "cosmos_plato_workflows_cached", state="running") == 0
    rpc = {"service": "cosmos.plato.v1.WorkflowService"}
    assert value(plato, "cosmos_rpc_requests_total", **rpc, method="StartWorkflows", code="OK") >= 1

    # Stratum: the jobs placed and succeeded, the queue empty, the agent ready, its stream counted.
    stratum, _ = await scrape(str(urls["stratum"]))
    jobs = value(stratum, "cosmos_stratum_jobs_submitted_total")
    assert jobs >= 1
    assert value(stratum, "cosmos_stratum_placements_total") >= jobs
    assert value(stratum, "cosmos_stratum_jobs_finished_total", state="succeeded") >= jobs
    assert value(stratum, "cosmos_stratum_jobs_finished_total", state="failed") == 0
    assert value(stratum, "cosmos_stratum_queue_wait_seconds_count") >= jobs
    assert value(stratum, "cosmos_stratum_job_duration_seconds_count", state="succeeded") >= jobs
    assert value(stratum, "cosmos_stratum_queue_depth") == 0
    assert value(stratum, "cosmos_stratum_queue_oldest_age_seconds") == 0
    assert value(stratum, "cosmos_stratum_jobs", state="running") == 0
    assert "cosmos_stratum_job_progress_ratio" not in stratum  # no job runs: no series
    assert value(stratum, "cosmos_stratum_agents", state="ready") == 1
    assert value(stratum, "cosmos_stratum_gpu_fragmentation_ratio") == 0  # no GPUs here
    rpc = {"service": "cosmos.stratum.v1.JobService"}
    assert value(stratum, "cosmos_rpc_requests_total", **rpc, method="SubmitJob", code="OK") >= jobs

    # The agent: connected, idle, its attempts counted.
    agent, _ = await scrape(str(urls["agent"]))
    assert value(agent, "cosmos_agent_connected") == 1
    assert value(agent, "cosmos_agent_attempts_running") == 0
    assert value(agent, "cosmos_agent_attempts_finished_total", state="succeeded") >= jobs


async def test_a_metrics_port_serves_nothing_but_metrics(stack: EmbeddedStack) -> None:
    url = str(stack.metrics_url("plato"))
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/debug", "/metrics/../x"):
            async with session.get(url.replace("/metrics", path)) as response:
                assert response.status == 404, path
        async with session.post(url) as response:
            assert response.status == 405


def test_cosmos_up_serves_metrics_on_9451_to_9454_unless_moved_or_turned_off() -> None:
    parser = argparse.ArgumentParser()
    up.add_stack_arguments(parser)
    ports = ("optimus", "plato", "stratum", "agent")
    cfg = up.stack_config(parser.parse_args([]))
    assert [cfg.metrics_port(name) for name in ports] == [9451, 9452, 9453, 9454]
    assert DEFAULT_METRICS_PORTS == {"optimus": 9451, "plato": 9452, "stratum": 9453, "agent": 9454}
    cfg = up.stack_config(parser.parse_args(["--metrics-port", "19000"]))
    assert [cfg.metrics_port(name) for name in ports] == [19000, 19001, 19002, 19003]
    cfg = up.stack_config(parser.parse_args(["--metrics-port", "0"]))
    assert [cfg.metrics_port(name) for name in ports] == [0, 0, 0, 0]
    # Library users opt in.
    assert StackConfig().metrics_port("plato") == 0


async def test_a_taken_metrics_port_stops_the_stack_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = StackConfig(
            optimus_port=free_port(),
            plato_port=free_port(),
            stratum_port=free_port(),
            nats_port=free_port(),
            plato_metrics_port=taken.getsockname()[1],
            data_dir=tmp_path,
            insecure=True,
        )
        stack = EmbeddedStack(cfg)
        with pytest.raises(errors.PortInUseError, match=r"plato metrics.*--metrics-port"):
            await stack.start()
        assert not stack.children
