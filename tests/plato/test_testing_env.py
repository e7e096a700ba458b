"""cosmos.plato.testing: definitions run in process against Python handlers and a skippable clock."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cosmos.plato.testing import NO_REPLY, START_TIME, StepCall, StepError, WorkflowTestEnv
from cosmos.plato.v1 import workflow_pb2

pytestmark = pytest.mark.unit

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState

SEQUENCE = """\
workflow:
  id: two-steps
  rules:
    - when: workflow.started
      do: [fetch, store]
"""


def test_a_two_step_sequence_completes_in_order_with_outputs() -> None:
    env = WorkflowTestEnv(SEQUENCE)
    seen: list[tuple[str, dict[str, Any]]] = []

    @env.handler("fetch")
    def fetch(step: StepCall) -> dict[str, Any]:
        seen.append((step.step_id, step.input))
        return {"bytes": 3}

    @env.handler("store")
    async def store(step: StepCall) -> dict[str, Any]:  # a coroutine handler runs to its end at once
        seen.append((step.step_id, step.input))
        return {"stored": True}

    run = env.start({"uri": "s3://in"})
    wf = run.workflow
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    assert seen == [("fetch", {"input": {"uri": "s3://in"}}), ("store", {"input": {"uri": "s3://in"}})]
    assert run.output() == {"store": {"stored": True}}
    assert run.event_names() == [
        "WORKFLOW_STARTED",
        "RULE_FIRED",
        "STEP_SCHEDULED fetch",
        "STEP_COMPLETED fetch",
        "STEP_SCHEDULED store",
        "STEP_COMPLETED store",
        "WORKFLOW_COMPLETED",
    ]


RETRY = """\
workflow:
  id: retry
  steps:
    flaky:
      retry: {max: 3, backoff: fixed, initialInterval: 1h, maxInterval: 1h}
  rules:
    - when: workflow.started
      do: [flaky]
"""


def test_a_retry_with_backoff_is_driven_by_the_clock_not_by_waiting() -> None:
    env = WorkflowTestEnv(RETRY)
    calls: list[tuple[int, float]] = []

    @env.handler("flaky")
    def flaky(step: StepCall) -> dict[str, Any]:
        calls.append((step.attempt, (step.now - START_TIME).total_seconds()))
        if step.attempt < 3:
            raise StepError(f"transient {step.attempt}")
        return {"ok": True}

    began = time.monotonic()
    run = env.start()
    assert run.state == WS.WORKFLOW_STATE_RUNNING
    assert run.step("flaky").state == SS.STEP_STATE_RETRY_WAIT
    env.sleep(1800)  # half the backoff: nothing is due yet
    assert [attempt for attempt, _ in calls] == [1]
    wf = run.wait()
    assert time.monotonic() - began < 5  # two hours of backoff, skipped
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    assert calls == [(1, 0.0), (2, 3600.0), (3, 7200.0)]
    assert run.event_names().count("STEP_RETRY_SCHEDULED flaky") == 2
    assert run.step("flaky").attempt == 3


def test_retries_run_out_and_fail_the_workflow_with_the_last_error() -> None:
    env = WorkflowTestEnv(RETRY)
    env.handler("flaky")(lambda step: (_ for _ in ()).throw(StepError("always")))
    wf = env.start().wait()
    assert wf.state == WS.WORKFLOW_STATE_FAILED
    assert wf.failure_reason == "step 'flaky' failed after 4 attempt(s): always; no rule handles it"


TIMEOUT = """\
workflow:
  id: timeout
  steps:
    hang:
      timeout: {startToClose: 10m}
  rules:
    - when: workflow.started
      do: [hang]
    - when: hang.failed
      do: [page]
"""


def test_a_step_timeout_fires_when_the_clock_is_skipped_and_cancels_the_handler() -> None:
    env = WorkflowTestEnv(TIMEOUT)
    env.handler("hang")(lambda step: NO_REPLY)  # a worker that never answers
    env.handler("page")(lambda step: {"paged": True})
    run = env.start()
    key = run.idempotency_key("hang")
    env.sleep(599)
    assert run.step("hang").state == SS.STEP_STATE_SCHEDULED
    env.sleep(1)
    hang = run.step("hang")
    assert hang.state == SS.STEP_STATE_TIMED_OUT
    assert hang.error == "startToClose timeout of 600s exceeded"
    assert env.cancelled == [key]
    assert run.state == WS.WORKFLOW_STATE_COMPLETED  # the failure rule handled it
    assert run.step("page").output["paged"] is True


FANOUT = """\
workflow:
  id: fanout
  steps:
    encode:
      input: {profile: "${profile}"}
  rules:
    - when: workflow.started
      do:
        - fanout: {for: each profile in input.profiles, run: encode, maxConcurrency: 2}
    - when: all encode.completed
      do: [mux]
"""


def test_a_fanout_runs_every_item_then_its_fan_in() -> None:
    env = WorkflowTestEnv(FANOUT)
    encoded: list[str] = []

    @env.handler("encode")
    def encode(step: StepCall) -> dict[str, Any]:
        encoded.append(step.input["profile"])
        return {"uri": f"out/{step.input['profile']}.mp4"}

    @env.handler("mux")
    def mux(step: StepCall) -> dict[str, Any]:
        return {"n": len(encoded)}

    profiles = ["1080p", "720p", "480p", "360p", "240p"]
    run = env.start({"profiles": profiles})
    wf = run.workflow
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    assert sorted(encoded) == sorted(profiles)
    steps = run.steps()
    assert [steps[f"encode[{i}]"].output["uri"] for i in range(5)] == [f"out/{p}.mp4" for p in profiles]
    assert run.step("mux").output["n"] == 5
    names = run.event_names()
    last_item = max(names.index(f"STEP_COMPLETED encode[{i}]") for i in range(5))
    assert names.index("STEP_SCHEDULED mux") > last_item


def test_an_unanswered_fanout_item_holds_the_fan_in_until_answered_by_hand() -> None:
    env = WorkflowTestEnv(FANOUT)
    env.handler("mux")(lambda step: {})
    run = env.start({"profiles": ["a", "b", "c"]})
    assert [t.step_id for t in run.tasks] == ["encode[0]", "encode[1]"]  # maxConcurrency 2
    run.complete("encode[0]", {"uri": "a"})
    run.complete("encode[1]", {"uri": "b"})
    assert "mux" not in run.steps()
    run.complete("encode[2]", {"uri": "c"})
    assert run.state == WS.WORKFLOW_STATE_COMPLETED


SIGNAL = """\
workflow:
  id: approval
  rules:
    - when: workflow.started
      do: [build]
    - when: build.completed and signal.approve and signals.approve.by == 'ops'
      do: [ship]
"""


def test_a_signal_gated_rule_waits_for_the_signal() -> None:
    env = WorkflowTestEnv(SIGNAL)
    env.handler("build")(lambda step: NO_REPLY)
    env.handler("ship")(lambda step: {"shipped": True})
    run = env.start()
    run.signal("approve", {"by": "ops"})
    assert "ship" not in run.steps()  # build has not completed yet
    run.complete("build")
    assert run.state == WS.WORKFLOW_STATE_COMPLETED
    assert run.step("ship").output["shipped"] is True
    assert "WORKFLOW_SIGNALED" in run.event_names()


def test_a_signal_that_fails_the_guard_fires_nothing() -> None:
    env = WorkflowTestEnv(SIGNAL)
    env.handler("build")(lambda step: NO_REPLY)
    run = env.start()
    run.signal("approve", {"by": "someone else"})
    run.complete("build")
    assert run.state == WS.WORKFLOW_STATE_COMPLETED
    assert "ship" not in run.steps()


def test_cancel_stops_running_steps() -> None:
    env = WorkflowTestEnv(TIMEOUT)
    env.handler("hang")(lambda step: NO_REPLY)
    run = env.start()
    run.cancel("enough")
    assert run.state == WS.WORKFLOW_STATE_CANCELLED
    assert run.step("hang").state == SS.STEP_STATE_CANCELLED
    env.sleep(3600)  # its timeout timer fires into a closed workflow: nothing changes
    assert run.event_names()[-1] == "WORKFLOW_CANCELLED"


def test_builtin_timers_and_child_workflows_run_in_the_environment() -> None:
    parent = """\
workflow:
  id: parent
  steps:
    pause: {uses: timer, with: {duration: 2h}}
    sub: {workflow: {id: child}, input: {n: "${input.n}"}}
  rules:
    - when: workflow.started
      do: [pause, sub]
"""
    child = """\
workflow:
  id: child
  rules:
    - when: workflow.started
      do: [double]
"""
    env = WorkflowTestEnv(parent, children=[child])
    env.handler("double")(lambda step: {"value": step.input["input"]["n"] * 2})
    run = env.start({"n": 21})
    assert run.step("pause").state == SS.STEP_STATE_RUNNING
    wf = run.wait()
    assert wf.state == WS.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    assert (env.now - START_TIME).total_seconds() == 7200
    assert run.step("sub").output["output"] == {"double": {"value": 42.0}}


def test_a_heartbeat_marks_the_step_running_and_a_silent_one_times_out() -> None:
    source = """\
workflow:
  id: beats
  steps:
    work:
      timeout: {heartbeat: 1m}
  rules:
    - when: workflow.started
      do: [work]
"""
    env = WorkflowTestEnv(source)

    @env.handler("work")
    def work(step: StepCall) -> Any:
        step.heartbeat(percent=40)
        return NO_REPLY

    run = env.start()
    work_step = run.step("work")
    assert work_step.state == SS.STEP_STATE_RUNNING and work_step.progress.percent == 40
    env.sleep(61)
    assert run.step("work").state == SS.STEP_STATE_TIMED_OUT
    assert run.workflow.failure_reason.endswith("heartbeat timeout of 60s exceeded; no rule handles it")


def test_a_failed_workflow_is_retried_in_place() -> None:
    env = WorkflowTestEnv(SEQUENCE)
    env.handler("fetch")(lambda step: {"bytes": 3})

    @env.handler("store")
    def store(step: StepCall) -> dict[str, Any]:
        if step.attempt == 1:
            raise StepError("disk full", non_retryable=True)
        return {"stored": True}

    run = env.start()
    assert run.state == WS.WORKFLOW_STATE_FAILED
    run.retry()
    assert run.state == WS.WORKFLOW_STATE_COMPLETED
    assert run.step("store").attempt == 2 and run.step("fetch").attempt == 1
    assert "WORKFLOW_RETRIED" in run.event_names()
