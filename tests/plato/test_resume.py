"""RetryWorkflow and ResetWorkflow against a real NATS and a real Plato process, with SDK handlers
whose calls are counted: what completed is not run again, what is rerun runs as a new attempt."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import engine_harness as unit
import grpc
import nats
import pytest
import security_harness
from google.protobuf import struct_pb2
from plato_harness import PlatoClient, event_names

from cosmos.cli import platform
from cosmos.cli import workflows as workflows_cli
from cosmos.plato import records
from cosmos.plato.store import PlatoStore, Storage, StoreConfig
from cosmos.plato.v1 import (
    events_pb2,
    step_service_pb2,
    step_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
)
from cosmos.protocol import values
from cosmos.runtime import process, rpc_errors
from cosmos.sdk import StepContext, StepError, Worker
from cosmos.security import context as contexts
from cosmos.security.context import Context

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
ET = events_pb2.WorkflowEventType

PIPELINE = """\
workflow:
  id: resumable
  rules:
    - when: workflow.started
      do: [prep]
    - when: prep.completed
      do:
        - fanout: {for: each part in input.parts, run: work}
    - when: all work.completed
      do: [finish]
"""


class Handlers:
    """The pipeline's handlers: every call counted per step instance; ``work`` fails for the parts
    in ``failing`` (after the other parts completed, so the failure is the workflow's last event)."""

    def __init__(self, plato: PlatoClient) -> None:
        self.calls: Counter[str] = Counter()
        self.failing: set[str] = set()
        self.tasks: dict[str, list[step_service_pb2.CompleteStepRequest]] = {}
        self.release_finish = asyncio.Event()
        self.release_finish.set()
        self.worker = Worker(plato.nats_url, tls=security_harness.worker_tls())
        self.worker.handler("prep")(self.prep)
        self.worker.handler("work")(self.work)
        self.worker.handler("finish")(self.finish)

    def _seen(self, step: StepContext) -> None:
        self.calls[step.task.step_id] += 1
        # What a stale report of this attempt would send.
        self.tasks.setdefault(step.task.step_id, []).append(
            step_service_pb2.CompleteStepRequest(
                request_id=f"stale-{step.idempotency_key}",
                workflow_id=step.task.workflow_id,
                step_id=step.task.step_id,
                attempt=step.attempt,
                task_token=step.task.task_token,
                output=values.dict_to_struct({"stale": True}),
            )
        )

    async def prep(self, step: StepContext) -> dict[str, Any]:
        self._seen(step)
        return {"prepared": True}

    async def work(self, step: StepContext) -> dict[str, Any]:
        self._seen(step)
        part = step.input["part"]
        if part in self.failing:
            others = [
                f"work[{i}]" for i, p in enumerate(step.input["input"]["parts"]) if p not in self.failing
            ]
            for _ in range(200):
                if all(self.calls[o] for o in others):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # their completions reach Plato first
            raise StepError(f"part {part} broke", non_retryable=True)
        return {"part": part, "attempt": step.attempt}

    async def finish(self, step: StepContext) -> dict[str, Any]:
        self._seen(step)
        await self.release_finish.wait()
        return {"finished": step.attempt}


async def failed_run(plato: PlatoClient, run_worker: Callable[[Worker], None]) -> tuple[Handlers, str]:
    await plato.register(PIPELINE)
    handlers = Handlers(plato)
    handlers.failing = {"b"}
    run_worker(handlers.worker)
    wf_id = await plato.start("resumable", {"parts": ["a", "b", "c"]})
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_FAILED, wf.failure_reason
    assert "part b broke" in wf.failure_reason
    return handlers, wf_id


def assert_contiguous(events: list[events_pb2.WorkflowEvent]) -> None:
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_retry_reruns_the_failed_step_only_and_completes_with_a_contiguous_history(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    handlers, wf_id = await failed_run(plato, run_worker)
    assert handlers.calls == {"prep": 1, "work[0]": 1, "work[1]": 1, "work[2]": 1}
    handlers.failing = set()
    reply = await plato.stub.RetryWorkflow(
        workflow_service_pb2.RetryWorkflowRequest(request_id="retry-1", workflow_id=wf_id)
    )
    assert reply.workflow.state in (WS.WORKFLOW_STATE_RUNNING, WS.WORKFLOW_STATE_COMPLETED)
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    # Only the failed instance ran again; completed steps kept their outputs and were not rerun.
    assert handlers.calls == {"prep": 1, "work[0]": 1, "work[1]": 2, "work[2]": 1, "finish": 1}
    steps = {s.step_id: s for s in wf.steps}
    assert steps["work[1]"].attempt == 2 and steps["work[0]"].attempt == 1
    assert values.struct_to_dict(steps["work[0]"].output) == {"part": "a", "attempt": 1}
    events = await plato.history(wf_id)
    assert_contiguous(events)
    names = event_names(events)
    failed_at = names.index("WORKFLOW_FAILED")
    assert names[failed_at + 1] == "WORKFLOW_RETRIED" and names[-1] == "WORKFLOW_COMPLETED"
    assert names[failed_at + 2 :].count("STEP_SCHEDULED work[1]") == 1
    assert not any(n.startswith("STEP_SCHEDULED work[0]") for n in names[failed_at:])
    retried = values.struct_to_dict(events[failed_at + 1].payload)
    assert retried["request_id"] == "retry-1" and retried["rerun"] == ["work[1]"]

    # The same request again: the same workflow, nothing applied twice.
    again = await plato.stub.RetryWorkflow(
        workflow_service_pb2.RetryWorkflowRequest(request_id="retry-1", workflow_id=wf_id)
    )
    assert again.workflow.workflow_id == wf_id and again.workflow.state == WS.WORKFLOW_STATE_COMPLETED
    assert event_names(await plato.history(wf_id)) == names

    # Another retry of the completed workflow: not resumable.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await plato.stub.RetryWorkflow(
            workflow_service_pb2.RetryWorkflowRequest(request_id="retry-2", workflow_id=wf_id)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = rpc_errors.details_of(caught.value)
    assert info is not None and info.reason == "ERROR_REASON_NOT_RESUMABLE"
    assert info.metadata["state"] == "WORKFLOW_STATE_COMPLETED"


async def test_retry_with_a_new_input_and_the_same_request_id_twice_in_a_row(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    handlers, wf_id = await failed_run(plato, run_worker)
    # Still failing: the retry runs, the step fails again, the workflow fails again.
    new_input = values.dict_to_struct({"parts": ["a", "b", "c"], "note": "edited"})
    request = workflow_service_pb2.RetryWorkflowRequest(request_id="r1", workflow_id=wf_id, input=new_input)
    await asyncio.gather(plato.stub.RetryWorkflow(request), plato.stub.RetryWorkflow(request))
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_FAILED and handlers.calls["work[1]"] == 2
    assert values.struct_to_dict(wf.input)["note"] == "edited"
    names = event_names(await plato.history(wf_id))
    assert names.count("WORKFLOW_RETRIED") == 1 and names.count("WORKFLOW_FAILED") == 2


async def test_reset_reruns_the_named_step_and_downstream_and_ignores_stale_reports(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(PIPELINE)
    handlers = Handlers(plato)
    run_worker(handlers.worker)
    wf_id = await plato.start("resumable", {"parts": ["a", "b"]})
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    handlers.release_finish.clear()  # the rerun finish waits, so a stale report can race it

    reply = await plato.stub.ResetWorkflow(
        workflow_service_pb2.ResetWorkflowRequest(request_id="reset-1", workflow_id=wf_id, step_name="work")
    )
    assert reply.workflow.state == WS.WORKFLOW_STATE_RUNNING
    for _ in range(200):
        if handlers.calls["finish"] == 2:
            break
        await asyncio.sleep(0.05)
    assert handlers.calls == {"prep": 1, "work[0]": 2, "work[1]": 2, "finish": 2}

    # A completion of the attempt from before the reset is refused and changes nothing.
    steps = step_service_pb2_grpc.StepServiceStub(plato.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await steps.CompleteStep(handlers.tasks["finish"][0])
    assert caught.value.code() == grpc.StatusCode.ABORTED
    current = await plato.get(wf_id)
    finish = next(s for s in current.steps if s.step_id == "finish")
    assert current.state == WS.WORKFLOW_STATE_RUNNING and finish.attempt == 2
    assert finish.state in (SS.STEP_STATE_SCHEDULED, SS.STEP_STATE_RUNNING)

    handlers.release_finish.set()
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED
    steps_by_id = {s.step_id: s for s in wf.steps}
    assert sorted(steps_by_id) == ["finish", "prep", "work[0]", "work[1]"]
    assert values.struct_to_dict(steps_by_id["finish"].output) == {"finished": 2}
    assert steps_by_id["prep"].attempt == 1 and steps_by_id["work[0]"].attempt == 2
    events = await plato.history(wf_id)
    assert_contiguous(events)
    names = event_names(events)
    assert names.count("WORKFLOW_COMPLETED") == 2 and names.count("WORKFLOW_RESET") == 1
    reset = values.struct_to_dict(
        next(e for e in events if e.type == ET.WORKFLOW_EVENT_TYPE_WORKFLOW_RESET).payload
    )
    assert reset["step_name"] == "work" and reset["discarded_count"] == 3


async def test_bad_resets_get_the_right_codes(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(PIPELINE)
    handlers = Handlers(plato)
    handlers.release_finish.clear()
    run_worker(handlers.worker)
    wf_id = await plato.start("resumable", {"parts": ["a"]})

    async def code_of(call: Any) -> tuple[grpc.StatusCode, Any, Any]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        info, violations = rpc_errors.details_of(caught.value)
        return caught.value.code(), info, violations

    def reset(step_name: str, workflow_id: str = wf_id) -> Any:
        return plato.stub.ResetWorkflow(
            workflow_service_pb2.ResetWorkflowRequest(
                request_id="x", workflow_id=workflow_id, step_name=step_name
            )
        )

    # Running: neither retry nor reset.
    code, info, _ = await code_of(reset("prep"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "ERROR_REASON_NOT_RESUMABLE"
    code, info, _ = await code_of(
        plato.stub.RetryWorkflow(workflow_service_pb2.RetryWorkflowRequest(request_id="x", workflow_id=wf_id))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "ERROR_REASON_NOT_RESUMABLE"
    handlers.release_finish.set()
    assert (await plato.wait(wf_id)).state == WS.WORKFLOW_STATE_COMPLETED

    code, info, violations = await code_of(reset("no-such-step"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [v.field for v in violations] == ["step_name"]
    code, _, violations = await code_of(reset("Not A Name"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [v.field for v in violations] == ["step_name"]
    code, info, _ = await code_of(reset("prep", workflow_id="wf-nobody"))
    assert code == grpc.StatusCode.NOT_FOUND and info.reason == "ERROR_REASON_WORKFLOW_NOT_FOUND"
    code, _, violations = await code_of(
        plato.stub.RetryWorkflow(workflow_service_pb2.RetryWorkflowRequest(workflow_id=wf_id))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [v.field for v in violations] == ["request_id"]
    too_big = struct_pb2.Struct()
    too_big.update({"blob": "x" * (1100 * 1024)})
    code, _, _ = await code_of(
        plato.stub.ResetWorkflow(
            workflow_service_pb2.ResetWorkflowRequest(
                request_id="y", workflow_id=wf_id, step_name="prep", input=too_big
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def cli_context(plato: PlatoClient) -> Context:
    files = security_harness.admin()
    return Context(
        endpoints={"plato": plato.target}, ca=str(files.ca), cert=str(files.cert), key=str(files.key)
    )


async def test_cli_retries_and_resets_and_prints_refusals_without_a_traceback(
    plato: PlatoClient,
    run_worker: Callable[[Worker], None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handlers, wf_id = await failed_run(plato, run_worker)
    handlers.failing = set()
    ctx = cli_context(plato)
    new_input = tmp_path / "input.json"
    new_input.write_text(json.dumps({"parts": ["a", "b", "c"], "from": "file"}))
    said = await workflows_cli.resume(ctx, wf_id, new_input=workflows_cli.parse_input(f"@{new_input}"))
    assert said.startswith(f"{wf_id} retried: ")
    wf = await plato.wait(wf_id)
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED and values.struct_to_dict(wf.input)["from"] == "file"
    said = await workflows_cli.resume(ctx, wf_id, step="finish", request_id="cli-reset")
    assert said.startswith(f"{wf_id} reset to step finish: ")
    assert (await plato.wait(wf_id)).state == WS.WORKFLOW_STATE_COMPLETED
    assert handlers.calls["finish"] == 2 and handlers.calls["prep"] == 1

    # The command line: bad input and refusals are one line on stderr, no traceback.
    assert platform.workflows(["retry", wf_id, "--input", "{not json"]) == process.EXIT_CONFIG
    assert "--input: not JSON" in capsys.readouterr().err
    config = tmp_path / "config.yaml"
    contexts.save(dataclasses.replace(ctx, name="test"), make_current=True, path=config)
    monkeypatch.setenv("COSMOS_CONFIG", str(config))
    args = ["--plato", plato.target]
    code = await asyncio.to_thread(platform.workflows, ["retry", wf_id, *args])
    err = capsys.readouterr().err
    assert code == process.EXIT_FAILED and "FAILED_PRECONDITION" in err and "Traceback" not in err, err
    code = await asyncio.to_thread(platform.workflows, ["reset", wf_id, "--step", "nope", *args])
    err = capsys.readouterr().err
    assert code == process.EXIT_FAILED and "INVALID_ARGUMENT" in err and "Traceback" not in err, err


async def test_a_reset_committed_but_not_applied_is_completed_by_whoever_loads_the_workflow(
    insecure_nats_url: str,
) -> None:
    """Crash safety of a reset: the header commit carries the tombstones as pending step records; a
    Plato killed before writing them leaves a state that the next load overlays and applies."""
    nc = await nats.connect(insecure_nats_url)
    try:
        store = PlatoStore(nc, nc.jetstream(), StoreConfig(storage=Storage.MEMORY))
        await store.ensure()
        run = unit.Run()
        unit.complete(run)
        await records.commit(store, run.state, 1 << 20)
        await records.apply_effects(store, run.state)
        run.resume("r1", "work", input={"parts": ["x"]})
        await records.commit(store, run.state, 1 << 20)  # ... and the process dies here

        stored = await store.step_records("wf-1")
        assert not any(r.discarded for r, _ in stored.values())  # nothing of the reset written yet
        loaded = await records.load(store, "wf-1")
        assert loaded is not None and not loaded.published
        assert [s.step_id for s in loaded.table.steps()] == ["probe", "work[0]"]
        assert set(loaded.table.retired) == {"work[1]", "work[2]", "merge", "publish"}
        assert loaded.record.workflow.state == WS.WORKFLOW_STATE_RUNNING
        await records.apply_effects(store, loaded)
        stored = await store.step_records("wf-1")
        assert {i for i, (r, _) in stored.items() if r.discarded} == {
            "work[1]",
            "work[2]",
            "merge",
            "publish",
        }
        assert stored["work[0]"][0].step.attempt == 2 and stored["probe"][0].step.attempt == 1
        # Applying again (a second process loading it meanwhile) writes the same records.
        again = await records.load(store, "wf-1")
        assert again is not None
        await records.apply_effects(store, again)
        rewritten = await store.step_records("wf-1")
        assert {i: r for i, (r, _) in rewritten.items()} == {i: r for i, (r, _) in stored.items()}
    finally:
        await nc.close()
