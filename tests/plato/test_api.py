"""WorkflowService and StepService over real gRPC: validation, idempotency, fencing, cancel, watch."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import nats
import pytest
import security_harness
from nats.aio.msg import Msg
from plato_harness import CARD_WORKFLOW, PlatoClient, event_names

from cosmos.plato.v1 import (
    events_pb2,
    step_service_pb2,
    step_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from cosmos.protocol import values
from cosmos.runtime import rpc_errors
from cosmos.sdk import StepContext, Worker

WS = workflow_pb2.WorkflowState

ONE_STEP = """\
workflow:
  id: one-step
  rules:
    - when: workflow.started
      do: [work]
"""


def doing_nothing(nats_url: str) -> Worker:
    """A worker whose ``work`` steps complete at once with an empty output."""
    worker = Worker(nats_url, tls=security_harness.worker_tls())

    @worker.handler("work")
    async def work(step: StepContext) -> dict[str, Any]:
        return {}

    return worker


async def test_bad_definitions_name_the_field_and_line(plato: PlatoClient) -> None:
    bad = CARD_WORKFLOW.replace("all encode-segment.completed", "all encode-segmnt.completed").replace(
        "- when: workflow.started", "- when: workflow.started and input.x >"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await plato.register(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = rpc_errors.details_of(caught.value)
    assert info is not None and info.reason == "ERROR_REASON_INVALID_DEFINITION"
    fields = {v.field: v.description for v in violations}
    assert "source_yaml.workflow.rules[0].when" in fields
    assert fields["source_yaml.workflow.rules[0].when"].startswith("line 4:")
    assert any("encode-segmnt" in d for d in fields.values())


async def test_bad_requests_are_refused_and_nothing_accepted_is_lost(plato: PlatoClient) -> None:
    await plato.register(ONE_STEP)
    cases: list[tuple[workflow_service_pb2.StartWorkflowRequest, grpc.StatusCode, str]] = [
        (
            workflow_service_pb2.StartWorkflowRequest(definition_id="one-step"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request_id",
        ),
        (
            workflow_service_pb2.StartWorkflowRequest(request_id="r"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "definition_id",
        ),
        (
            workflow_service_pb2.StartWorkflowRequest(
                request_id="r", definition_id="one-step", workflow_id="a.b"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "workflow_id",
        ),
        (
            workflow_service_pb2.StartWorkflowRequest(request_id="r", definition_id="nope"),
            grpc.StatusCode.NOT_FOUND,
            "",
        ),
    ]
    for request, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await plato.stub.StartWorkflow(request)
        assert caught.value.code() == code
        _, violations = rpc_errors.details_of(caught.value)
        assert [v.field for v in violations] == ([field] if field else [])
    listed = await plato.stub.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest())
    assert list(listed.workflows) == []


async def test_start_is_idempotent_on_request_id_and_workflow_id(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(ONE_STEP)
    first = await plato.stub.StartWorkflow(
        workflow_service_pb2.StartWorkflowRequest(request_id="req-1", definition_id="one-step")
    )
    again = await plato.stub.StartWorkflow(
        workflow_service_pb2.StartWorkflowRequest(request_id="req-1", definition_id="one-step")
    )
    assert again.already_started and again.workflow.workflow_id == first.workflow.workflow_id
    other = workflow_service_pb2.StartWorkflowRequest(request_id="req-1", definition_id="one-step")
    other.input.update({"different": True})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await plato.stub.StartWorkflow(other)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info, _ = rpc_errors.details_of(caught.value)
    assert info is not None and info.reason == "ERROR_REASON_REQUEST_ID_REUSED"

    named = await plato.start("one-step", workflow_id="my-run-1", request_id="a")
    assert named == "my-run-1"
    with pytest.raises(grpc.aio.AioRpcError) as clash:
        await plato.start("one-step", workflow_id="my-run-1", request_id="b")
    info, _ = rpc_errors.details_of(clash.value)
    assert info is not None and info.reason == "ERROR_REASON_WORKFLOW_ALREADY_EXISTS"


async def test_stale_attempts_are_refused_and_cancel_reaches_a_running_handler(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(ONE_STEP)
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())
    started = asyncio.Event()
    saw_cancel = asyncio.Event()

    @worker.handler("work")
    async def work(step: StepContext) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            if step.cancelled.is_set():
                saw_cancel.set()
        return {}

    run_worker(worker)
    wf_id = await plato.start("one-step")
    await asyncio.wait_for(started.wait(), 20)

    steps = step_service_pb2_grpc.StepServiceStub(plato.channel)
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await steps.CompleteStep(
            step_service_pb2.CompleteStepRequest(
                request_id="x",
                workflow_id=wf_id,
                step_id="work",
                attempt=2,
                task_token=security_harness.task_token(wf_id, "work", 2),
            )
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    info, _ = rpc_errors.details_of(stale.value)
    assert info is not None and info.reason == "ERROR_REASON_STALE_ATTEMPT"
    beat = await steps.HeartbeatStep(
        step_service_pb2.HeartbeatStepRequest(
            request_id="hb1",
            workflow_id=wf_id,
            step_id="work",
            attempt=1,
            task_token=security_harness.task_token(wf_id, "work", 1),
        )
    )
    assert not beat.cancel_requested

    await plato.stub.CancelWorkflow(
        workflow_service_pb2.CancelWorkflowRequest(
            request_id=uuid.uuid4().hex, workflow_id=wf_id, reason="user asked"
        )
    )
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_CANCELLED and wf.failure_reason == "user asked"
    await asyncio.wait_for(saw_cancel.wait(), 10)
    assert wf.steps[0].state == workflow_pb2.STEP_STATE_CANCELLED
    beat = await steps.HeartbeatStep(
        step_service_pb2.HeartbeatStepRequest(
            request_id="hb2",
            workflow_id=wf_id,
            step_id="work",
            attempt=1,
            task_token=security_harness.task_token(wf_id, "work", 1),
        )
    )
    assert beat.cancel_requested


async def test_grpc_handlers_complete_steps_and_watch_streams_every_event(plato: PlatoClient) -> None:
    await plato.register(ONE_STEP)
    wf_id = await plato.start("one-step", {"n": 1})
    watch = plato.stub.WatchWorkflow(workflow_service_pb2.WatchWorkflowRequest(workflow_id=wf_id))
    seen: list[str] = []
    steps = step_service_pb2_grpc.StepServiceStub(plato.channel)
    async for reply in watch:
        seen.append(reply.event.step_id)
        if reply.event.type == events_pb2.WORKFLOW_EVENT_TYPE_STEP_SCHEDULED:  # as a gRPC handler would
            request = step_service_pb2.CompleteStepRequest(
                request_id="done-1",
                workflow_id=wf_id,
                step_id="work",
                attempt=1,
                task_token=security_harness.task_token(wf_id, "work", 1),
            )
            request.output.update({"answer": 42})
            await steps.CompleteStep(request)
            await steps.CompleteStep(request)  # a retried completion is accepted once
    wf = await plato.get(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED
    assert values.struct_to_dict(wf.output) == {"work": {"answer": 42}}
    names = event_names(await plato.history(wf_id))
    assert names == [
        "WORKFLOW_STARTED",
        "RULE_FIRED",
        "STEP_SCHEDULED work",
        "STEP_COMPLETED work",
        "WORKFLOW_COMPLETED",
    ]
    assert len(seen) == len(names)
    # Resuming from a sequence replays only what follows.
    resumed = plato.stub.WatchWorkflow(
        workflow_service_pb2.WatchWorkflowRequest(workflow_id=wf_id, from_sequence=4)
    )
    assert [r.event.sequence async for r in resumed] == [4, 5]


async def test_versions_are_kept_and_running_workflows_stay_on_theirs(plato: PlatoClient) -> None:
    assert await plato.register(ONE_STEP) == 1
    assert await plato.register(ONE_STEP) == 1  # same text: same version
    wf_id = await plato.start("one-step")
    v2 = ONE_STEP.replace("do: [work]", "do: [work, more-work]")
    assert await plato.register(v2) == 2
    assert (await plato.get(wf_id)).definition_version == 1
    latest = await plato.stub.GetDefinition(
        workflow_service_pb2.GetDefinitionRequest(definition_id="one-step")
    )
    assert latest.definition.version == 2 and "more-work" in latest.definition.step_names
    first = await plato.stub.GetDefinition(
        workflow_service_pb2.GetDefinitionRequest(definition_id="one-step", version=1)
    )
    assert first.definition.source_yaml == ONE_STEP
    listed = await plato.stub.ListDefinitions(workflow_service_pb2.ListDefinitionsRequest())
    assert [(d.definition_id, d.version) for d in listed.definitions] == [("one-step", 2)]


async def test_a_retry_long_after_the_start_is_deduplicated_by_the_stored_workflow(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    # There is no lookup before the start: the record's create (compare-and-set) is the check, and
    # the start's own inbox message has long been consumed by the time the retry comes.
    await plato.register(ONE_STEP)
    run_worker(doing_nothing(plato.nats_url))
    request = workflow_service_pb2.StartWorkflowRequest(request_id="req-late", definition_id="one-step")
    request.input.update({"n": 1})
    first = await plato.stub.StartWorkflow(request)
    assert not first.already_started
    done = await plato.wait(first.workflow.workflow_id)
    assert done.state == WS.WORKFLOW_STATE_COMPLETED
    again = await plato.stub.StartWorkflow(request)
    assert again.already_started
    assert again.workflow.workflow_id == first.workflow.workflow_id
    assert again.workflow.state == WS.WORKFLOW_STATE_COMPLETED
    other = workflow_service_pb2.StartWorkflowRequest(request_id="req-late", definition_id="one-step")
    other.input.update({"n": 2})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await plato.stub.StartWorkflow(other)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info, _ = rpc_errors.details_of(caught.value)
    assert info is not None and info.reason == "ERROR_REASON_REQUEST_ID_REUSED"
    # The refused start changed nothing: the workflow ran once, on its own input.
    events = await plato.history(first.workflow.workflow_id)
    assert event_names(events).count("WORKFLOW_STARTED") == 1
    assert values.struct_to_dict((await plato.get(first.workflow.workflow_id)).input) == {"n": 1}


async def test_concurrent_starts_of_one_request_make_one_workflow(plato: PlatoClient) -> None:
    await plato.register(ONE_STEP)
    request = workflow_service_pb2.StartWorkflowRequest(request_id="req-race", definition_id="one-step")
    replies = await asyncio.gather(*(plato.stub.StartWorkflow(request) for _ in range(8)))
    assert len({r.workflow.workflow_id for r in replies}) == 1
    assert sorted(r.already_started for r in replies) == [False] + [True] * 7  # exactly one started it
    listed = await plato.stub.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest())
    assert [w.workflow_id for w in listed.workflows] == [replies[0].workflow.workflow_id]


async def test_concurrent_starts_with_different_inputs_on_one_id_start_one(plato: PlatoClient) -> None:
    await plato.register(ONE_STEP)
    requests = []
    for i in range(6):
        request = workflow_service_pb2.StartWorkflowRequest(
            request_id=f"r{i}", definition_id="one-step", workflow_id="contested"
        )
        request.input.update({"i": i})
        requests.append(request)
    replies = await asyncio.gather(*(plato.stub.StartWorkflow(r) for r in requests), return_exceptions=True)
    won = [r for r in replies if isinstance(r, workflow_service_pb2.StartWorkflowResponse)]
    lost = [r for r in replies if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 5, replies
    assert all(e.code() == grpc.StatusCode.ALREADY_EXISTS for e in lost)
    stored = await plato.get("contested")
    assert stored.input == won[0].workflow.input  # the winner's input is the one that runs


async def test_starts_use_a_version_registered_through_another_plato_process(
    start_service: Callable[..., Any], nats_url: str
) -> None:
    # Each process caches definitions and follows the latest versions with a watch on the bucket.
    targets = [start_service("plato", "--nats", nats_url).target for _ in range(2)]
    async with security_harness.channel(targets[0]) as a, security_harness.channel(targets[1]) as b:
        first = PlatoClient(targets[0], nats_url, a, workflow_service_pb2_grpc.WorkflowServiceStub(a))
        second = PlatoClient(targets[1], nats_url, b, workflow_service_pb2_grpc.WorkflowServiceStub(b))
        assert await first.register(ONE_STEP) == 1
        assert (await second.get(await second.start("one-step"))).definition_version == 1
        assert await first.register(ONE_STEP.replace("do: [work]", "do: [work, more]")) == 2
        # The watch delivers the new pointer asynchronously (well under a millisecond here).
        versions = []
        for _ in range(200):
            versions.append((await second.get(await second.start("one-step"))).definition_version)
            if versions[-1] == 2:
                break
            await asyncio.sleep(0.05)
        assert versions[-1] == 2 and set(versions) <= {1, 2}
        # ... and a version registered through the second process is used by it at once.
        assert await second.register(ONE_STEP.replace("do: [work]", "do: [other]")) == 3
        assert (await second.get(await second.start("one-step"))).definition_version == 3
        pinned = await first.start("one-step", workflow_id="pinned-v1", definition_version=1)
        assert (await first.get(pinned)).definition_version == 1


async def test_start_workflows_answers_each_entry_as_start_workflow_would(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(ONE_STEP)
    run_worker(doing_nothing(plato.nats_url))
    nc = await nats.connect(plato.nats_url, **security_harness.nats_options())
    headers: dict[str, list[dict[str, str]]] = {}

    async def collect(msg: Msg) -> None:
        headers.setdefault(msg.subject.rsplit(".", 1)[-1], []).append(dict(msg.headers or {}))

    await nc.subscribe("cosmos.workflow.events.*", cb=collect)
    first = workflow_service_pb2.StartWorkflowRequest(request_id="batch-a", definition_id="one-step")
    first.input.update({"n": 1})
    started = await plato.stub.StartWorkflow(first)
    clash = workflow_service_pb2.StartWorkflowRequest(request_id="batch-a", definition_id="one-step")
    clash.input.update({"n": 2})
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    entries = [
        workflow_service_pb2.StartWorkflowsEntry(
            request=workflow_service_pb2.StartWorkflowRequest(request_id="batch-b", definition_id="one-step"),
            trace_context={"traceparent": traceparent},
        ),
        workflow_service_pb2.StartWorkflowsEntry(request=first),  # a retry: the same workflow
        workflow_service_pb2.StartWorkflowsEntry(request=clash),  # same request_id, other input
        workflow_service_pb2.StartWorkflowsEntry(
            request=workflow_service_pb2.StartWorkflowRequest(request_id="batch-c", definition_id="nope")
        ),
        workflow_service_pb2.StartWorkflowsEntry(
            request=workflow_service_pb2.StartWorkflowRequest(definition_id="one-step")
        ),
    ]
    reply = await plato.stub.StartWorkflows(workflow_service_pb2.StartWorkflowsRequest(entries=entries))
    kinds = [r.WhichOneof("result") for r in reply.results]
    assert kinds == ["started", "started", "error", "error", "error"]
    new, retry, reused, unknown, missing = reply.results
    assert not new.started.already_started
    assert retry.started.already_started
    assert retry.started.workflow.workflow_id == started.workflow.workflow_id
    # Each refusal is the status StartWorkflow would have failed with, details included.
    for result, code, reason, field in [
        (reused, grpc.StatusCode.ALREADY_EXISTS, "ERROR_REASON_REQUEST_ID_REUSED", None),
        (unknown, grpc.StatusCode.NOT_FOUND, "ERROR_REASON_DEFINITION_NOT_FOUND", None),
        (missing, grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_INVALID_ARGUMENT", "request_id"),
    ]:
        error = rpc_errors.from_status(result.error)
        assert error.code == code, result.error
        assert error.reason == reason
        assert [v.field for v in error.violations] == ([field] if field else [])
    # The refused entries changed nothing; the accepted ones run.
    done = await plato.wait(new.started.workflow.workflow_id)
    assert done.state == WS.WORKFLOW_STATE_COMPLETED
    assert values.struct_to_dict((await plato.get(started.workflow.workflow_id)).input) == {"n": 1}
    listed = await plato.stub.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest())
    assert len(listed.workflows) == 2
    # Each entry continues its own caller's trace: the new workflow's events carry the entry's.
    await asyncio.sleep(0.2)
    await nc.close()
    new_events = headers[new.started.workflow.workflow_id]
    assert len(new_events) == 5  # started, rule fired, scheduled, completed, workflow completed
    assert {h["traceparent"].split("-")[1] for h in new_events} == {trace_id}


async def test_start_workflows_refuses_an_oversized_batch(plato: PlatoClient) -> None:
    entry = workflow_service_pb2.StartWorkflowsEntry(
        request=workflow_service_pb2.StartWorkflowRequest(request_id="x", definition_id="one-step")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await plato.stub.StartWorkflows(workflow_service_pb2.StartWorkflowsRequest(entries=[entry] * 1001))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = rpc_errors.details_of(caught.value)
    assert [v.field for v in violations] == ["entries"]


FAN_OUT = """\
workflow:
  id: big-fan-out
  rules:
    - when: workflow.started
      do:
        - fanout: {for: each item in input.items, run: work}
"""


async def test_a_workflow_whose_state_outgrows_a_nats_message_runs(plato: PlatoClient) -> None:
    # Each instance of a step without `input:` gets the workflow's input: 5 x 300 kB, past the 1 MB
    # one NATS message holds. Once that failed the workflow (and before, looped for ever); now each
    # step is a record of its own and the large inputs are blobs.
    await plato.register(FAN_OUT)
    workflow_id = await plato.start("big-fan-out", {"blob": "x" * 300_000, "items": [1, 2, 3, 4, 5]})
    # A generous deadline: alone this takes about 3 s, but in one CI run (2026-12-06, other test
    # files running beside it) the workflow was still PENDING after 20 s; the cause was not found.
    deadline = asyncio.get_running_loop().time() + 90
    while True:
        running = await plato.get(workflow_id)
        if len(running.steps) == 5 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert running.state == WS.WORKFLOW_STATE_RUNNING, (WS.Name(running.state), running.failure_reason)
    assert [s.step_id for s in running.steps] == [f"work[{i}]" for i in range(5)]
    assert all(s.state == workflow_pb2.STEP_STATE_SCHEDULED for s in running.steps)
    inputs = [values.struct_to_dict(s.input) for s in running.steps]
    assert all(len(i["input"]["blob"]) == 300_000 for i in inputs)
    assert [i["item"] for i in inputs] == [1, 2, 3, 4, 5]
    assert len(values.struct_to_dict(running.input)["blob"]) == 300_000
    assert event_names(await plato.history(workflow_id))[0] == "WORKFLOW_STARTED"


async def test_workflows_are_listed_newest_first_page_by_page(plato: PlatoClient) -> None:
    await plato.register(ONE_STEP)
    started = []
    for i in range(3):
        started.append(await plato.start("one-step", {"i": i}))
        await asyncio.sleep(0.01)
    request = workflow_service_pb2.ListWorkflowsRequest(page_size=2, definition_id="one-step")
    first = await plato.stub.ListWorkflows(request)
    assert [w.workflow_id for w in first.workflows] == [started[2], started[1]]
    newer = await plato.start("one-step", {"i": 3})  # arrives between the pages: on neither
    request.page_token = first.next_page_token
    second = await plato.stub.ListWorkflows(request)
    assert [w.workflow_id for w in second.workflows] == [started[0]] and not second.next_page_token
    everything = await plato.stub.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest())
    assert [w.workflow_id for w in everything.workflows] == [newer, *reversed(started)]

    # A creation-time window and an id prefix, filtered on the server.
    middle = await plato.get(started[1])
    window = workflow_service_pb2.ListWorkflowsRequest(created_after_time=middle.create_time)
    after = await plato.stub.ListWorkflows(window)
    assert [w.workflow_id for w in after.workflows] == [newer, started[2], started[1]]
    window.created_before_time.CopyFrom((await plato.get(newer)).create_time)
    between = await plato.stub.ListWorkflows(window)
    assert [w.workflow_id for w in between.workflows] == [started[2], started[1]]
    prefix = workflow_service_pb2.ListWorkflowsRequest(workflow_id_prefix=started[0][:12])
    assert started[0] in [w.workflow_id for w in (await plato.stub.ListWorkflows(prefix)).workflows]
    window.created_before_time.CopyFrom(middle.create_time)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await plato.stub.ListWorkflows(window)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "created_after_time: must be before created_before_time" in (refused.value.details() or "")


async def test_a_retried_start_past_the_duplicate_window_is_still_already_started(
    start_service: Callable[..., Any], nats_url: str
) -> None:
    # Past JetStream's duplicate window the start's publish is not dropped as a duplicate; the
    # record, created well before this request, is what tells it apart from a first start.
    service = start_service("plato", "--nats", nats_url, "--duplicate-window", "1")
    async with security_harness.channel(service.target) as channel:
        plato = PlatoClient(
            service.target, nats_url, channel, workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        )
        await plato.register(ONE_STEP)
        request = workflow_service_pb2.StartWorkflowRequest(request_id="late-retry", definition_id="one-step")
        first = await plato.stub.StartWorkflow(request)
        assert not first.already_started
        await asyncio.sleep(1.5)
        again = await plato.stub.StartWorkflow(request)
        assert again.already_started and again.workflow.workflow_id == first.workflow.workflow_id
        events = await plato.history(first.workflow.workflow_id)
        assert event_names(events).count("WORKFLOW_STARTED") == 1
