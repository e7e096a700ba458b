"""One encode, one trace: Optimus's submit, Plato's steps, Stratum's jobs and the agents' runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from encode_harness import embedded_stack

from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc

SPAN = re.compile(r'"name": "(?P<name>[^"]+)",\s*"context": \{\s*"trace_id": "0x(?P<trace>[0-9a-f]{32})"')


def spans(log: Path) -> list[tuple[str, str]]:
    """(name, trace id) of every span the console exporter wrote to a component's log."""
    return [(m["name"], m["trace"]) for m in SPAN.finditer(log.read_text(errors="replace"))]


def span_records(log: Path) -> list[dict[str, Any]]:
    """Every span the console exporter wrote to a component's log, as its JSON."""
    text = log.read_text(errors="replace")
    decoder = json.JSONDecoder()
    found = []
    for match in re.finditer(r'\{\s*"name": ', text):
        with contextlib.suppress(ValueError):
            found.append(decoder.raw_decode(text, match.start())[0])
    return [r for r in found if "context" in r and "end_time" in r]


def ended(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(record["end_time"]).replace("Z", "+00:00"))


async def test_one_encode_is_one_trace_across_every_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    area = tmp_path / "data" / "storage" / "default"  # the stack's storage area for the local admin
    area.mkdir(parents=True)
    clip = area / "clip.mp4"
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cosmos.optimus.media", "make-test-clip", "--out", str(clip), "--seconds", "4",
         "--size", "320x240", "--fps", "24"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    async with embedded_stack(tmp_path / "data") as stack:
        async with stack.context().channel("optimus") as channel:
            stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
            request = encode_service_pb2.SubmitEncodeRequest(
                request_id="traced",
                source_uri=clip.as_uri(),
                profiles=["360p"],
                output_uri=(area / "o").as_uri(),
            )
            encode = (await stub.SubmitEncode(request)).encode
            last = encode
            async for reply in stub.WatchEncode(
                encode_service_pb2.WatchEncodeRequest(encode_id=encode.encode_id)
            ):
                last = reply.encode
        assert last.state == encode_pb2.ENCODE_STATE_SUCCEEDED, last.error_message
        finished = datetime.now(UTC)
        await asyncio.sleep(3)  # the stack stays up a while: a span left open would end only at its stop
        logs = stack.config.data_dir / "logs"
    # The stack is stopped: every process flushed its spans on exit.
    optimus = spans(logs / "optimus.log")
    submit = [t for name, t in optimus if name == "/cosmos.optimus.v1.EncodeService/SubmitEncode"]
    assert len(submit) == 1
    trace = submit[0]
    plato = {name for name, t in spans(logs / "plato.log") if t == trace}
    stratum = {name for name, t in spans(logs / "stratum.log") if t == trace}
    agent = {name for name, t in spans(logs / "agent.log") if t == trace}
    # Optimus batches its starts (StartWorkflows); each entry is a "plato.start" span of its own trace.
    assert {"plato.advance", "plato.start"} <= plato
    # Each job step, as run by Plato's Stratum runner, is a span of the same trace.
    assert {"step probe", "step split", "step encode", "step assemble", "step package"} <= plato
    assert "/cosmos.stratum.v1.JobService/SubmitJob" in stratum
    assert "agent.run" in agent
    # The batched StartWorkflows is part of the encode's trace (its span a child of the submit's, the
    # RPC under it), not a trace of its own.
    batch = [
        (n, t)
        for n, t in optimus
        if n in ("optimus.start_workflows", "/cosmos.plato.v1.WorkflowService/StartWorkflows")
    ]
    assert {n for n, _ in batch} == {
        "optimus.start_workflows",
        "/cosmos.plato.v1.WorkflowService/StartWorkflows",
    }
    assert {t for _, t in batch} == {trace}, batch
    assert "/cosmos.plato.v1.WorkflowService/StartWorkflows" in plato
    # No span outlives its RPC: the watches of finished jobs ended with their jobs, not at shutdown.
    for component in ("plato", "stratum", "optimus"):
        for record in span_records(logs / f"{component}.log"):
            if record["name"].endswith("/WatchJob"):
                assert ended(record) <= finished, (component, record["name"], record["end_time"], finished)
