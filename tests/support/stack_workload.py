"""A workload for whole-stack tests: encodes and fan-out workflows driven to their end through
transient errors (a component being killed or restarted), and the checks that nothing was lost or
applied twice (tests/stack/test_chaos.py, test_replicas.py)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cosmos.cli import lookup
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.plato.v1 import events_pb2, workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.sdk import StepContext, Worker
from cosmos.stack import credentials
from cosmos.stack.embedded import EmbeddedStack

ITEMS = 3
DEFINITION = """\
workflow:
  id: chaos-fanout
  rules:
    - when: workflow.started
      do: [chaos-first]
    - when: chaos-first.completed
      do:
        - fanout: {for: each i in input.items, run: chaos-item}
    - when: all chaos-item.completed
      do: [chaos-last]
"""
EXPECTED_STEPS = sorted(["chaos-first", "chaos-last", *(f"chaos-item[{i}]" for i in range(ITEMS))])
ET = events_pb2.WorkflowEventType
ENCODE_DONE = {
    encode_pb2.ENCODE_STATE_SUCCEEDED,
    encode_pb2.ENCODE_STATE_FAILED,
    encode_pb2.ENCODE_STATE_CANCELLED,
}
WORKFLOW_DONE = {
    workflow_pb2.WORKFLOW_STATE_COMPLETED,
    workflow_pb2.WORKFLOW_STATE_FAILED,
    workflow_pb2.WORKFLOW_STATE_CANCELLED,
}
# What a caller sees while a service (or what it needs) is being restarted: try again.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
T = TypeVar("T")


async def retried(call: Callable[[], Awaitable[T]], timeout: float = 180) -> T:
    """``call()`` until it answers something other than a transient error (which is raised)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in TRANSIENT or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def chaos_worker(stack: EmbeddedStack) -> Worker:
    assert stack.credentials is not None
    worker = Worker(stack.config.nats_url, tls=stack.credentials.files(credentials.WORKER))

    @worker.handler("chaos-first")
    async def first(step: StepContext) -> dict[str, Any]:
        return {"count": len(step.input["input"]["items"])}

    @worker.handler("chaos-item")
    async def item(step: StepContext) -> dict[str, Any]:
        await asyncio.sleep(random.uniform(0, 0.3))
        return {"item": step.input.get("i")}

    @worker.handler("chaos-last")
    async def last(step: StepContext) -> dict[str, Any]:
        return {"done": True}

    return worker


async def run_encode(
    optimus: encode_service_pb2_grpc.EncodeServiceAsyncStub, clip: Path, out: Path, n: int
) -> encode_pb2.Encode:
    request = encode_service_pb2.SubmitEncodeRequest(
        request_id=f"chaos-encode-{n}-{uuid.uuid4().hex[:8]}", source_uri=clip.as_uri(), profiles=["360p"],
        output_uri=(out / f"title-{n}").as_uri(), quality=encode_pb2.QUALITY_MODE_OFF, force=True,
    )  # fmt: skip
    # The same request id again after a transient error finds the encode the first try made.
    submitted = await retried(lambda: optimus.SubmitEncode(request, timeout=20))
    get = encode_service_pb2.GetEncodeRequest(encode_id=submitted.encode.encode_id)
    while True:
        got = await retried(lambda: optimus.GetEncode(get, timeout=20))
        if got.encode.state in ENCODE_DONE:
            return got.encode
        await asyncio.sleep(1.0)


async def run_workflow(plato: workflow_service_pb2_grpc.WorkflowServiceAsyncStub, n: int) -> str:
    start = workflow_service_pb2.StartWorkflowRequest(
        request_id=f"chaos-workflow-{n}", definition_id="chaos-fanout", workflow_id=f"chaos-{n:03d}"
    )
    start.input.update({"items": list(range(ITEMS))})
    started = await retried(lambda: plato.StartWorkflow(start, timeout=20))
    get = workflow_service_pb2.GetWorkflowRequest(workflow_id=started.workflow.workflow_id)
    while True:
        got = await retried(lambda: plato.GetWorkflow(get, timeout=20))
        if got.workflow.state in WORKFLOW_DONE:
            return got.workflow.workflow_id
        await asyncio.sleep(1.0)


async def history(
    plato: workflow_service_pb2_grpc.WorkflowServiceAsyncStub, workflow_id: str
) -> list[events_pb2.WorkflowEvent]:
    """The whole history once it holds WORKFLOW_COMPLETED (events may trail the record briefly)."""
    deadline = time.monotonic() + 120
    while True:
        events = await events_so_far(plato, workflow_id)
        if any(e.type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED for e in events):
            return events
        assert time.monotonic() < deadline, f"{workflow_id}: no WORKFLOW_COMPLETED in its history"
        await asyncio.sleep(0.5)


async def events_so_far(
    plato: workflow_service_pb2_grpc.WorkflowServiceAsyncStub, workflow_id: str
) -> list[events_pb2.WorkflowEvent]:
    """The history as it stands (every page, once)."""

    async def page(token: str) -> tuple[Sequence[events_pb2.WorkflowEvent], str]:
        request = workflow_service_pb2.ListWorkflowEventsRequest(
            workflow_id=workflow_id, page_size=100, page_token=token
        )
        reply = await retried(lambda: plato.ListWorkflowEvents(request, timeout=20))
        return reply.events, reply.next_page_token

    return [event async for events in lookup.pages(page) for event in events]


async def lost_step_completions(
    plato: workflow_service_pb2_grpc.WorkflowServiceAsyncStub, workflow_ids: list[str]
) -> list[str]:
    """A lost step write (two Platos once left a step SCHEDULED: ``tests/plato/test_records_load.py``),
    if that is why a workload did not finish: steps whose STEP_COMPLETED is in their workflow's history while
    their stored record still says SCHEDULED or RUNNING. Anything else that stops a workload is a
    failure of its own."""
    lost = []
    for wf_id in workflow_ids:
        got = await retried(
            lambda w=wf_id: plato.GetWorkflow(  # type: ignore[misc]
                workflow_service_pb2.GetWorkflowRequest(workflow_id=w), timeout=20
            )
        )
        if got.workflow.state in WORKFLOW_DONE:
            continue
        completed = {
            e.step_id
            for e in await events_so_far(plato, wf_id)
            if e.type == ET.WORKFLOW_EVENT_TYPE_STEP_COMPLETED
        }
        open_states = (workflow_pb2.STEP_STATE_SCHEDULED, workflow_pb2.STEP_STATE_RUNNING)
        lost += [
            f"{wf_id}/{step.step_id}"
            for step in got.workflow.steps
            if step.step_id in completed and step.state in open_states
        ]
    return lost


def check_histories(
    final: dict[str, workflow_pb2.Workflow], histories: dict[str, list[events_pb2.WorkflowEvent]]
) -> None:
    """Every workflow COMPLETED with one contiguous history, each step completion applied once."""
    for wf_id, wf in final.items():
        assert wf.state == workflow_pb2.WORKFLOW_STATE_COMPLETED, (wf_id, wf.failure_reason)
        events = histories[wf_id]
        # One history: every sequence number once, in order, no gaps; it starts with the start.
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), wf_id
        assert events[0].type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_STARTED, wf_id
        # Each step instance's completion was applied exactly once, and the workflow completed once.
        completions = Counter(e.step_id for e in events if e.type == ET.WORKFLOW_EVENT_TYPE_STEP_COMPLETED)
        assert sorted(completions) == EXPECTED_STEPS, (wf_id, completions)
        assert set(completions.values()) == {1}, (wf_id, completions)
        assert sum(e.type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED for e in events) == 1, wf_id


async def finals(
    plato: workflow_service_pb2_grpc.WorkflowServiceAsyncStub, workflow_ids: list[str]
) -> tuple[dict[str, workflow_pb2.Workflow], dict[str, list[events_pb2.WorkflowEvent]]]:
    """Each workflow's record and whole history."""
    histories = {wf_id: await history(plato, wf_id) for wf_id in workflow_ids}
    final = {
        wf_id: (
            await retried(
                lambda w=wf_id: plato.GetWorkflow(  # type: ignore[misc]
                    workflow_service_pb2.GetWorkflowRequest(workflow_id=w), timeout=20
                )
            )
        ).workflow
        for wf_id in workflow_ids
    }
    return final, histories


def check_encodes(encodes: list[encode_pb2.Encode], out: Path) -> None:
    """Every encode SUCCEEDED and its package is where it was published."""
    failed = [
        (e.encode_id, encode_pb2.EncodeState.Name(e.state), e.failed_step, e.error_message) for e in encodes
    ]
    assert all(e.state == encode_pb2.ENCODE_STATE_SUCCEEDED for e in encodes), failed
    for n in range(len(encodes)):
        published = out / f"title-{n}"
        assert (published / "master.m3u8").is_file() and (published / "manifest.mpd").is_file(), n
