"""Workflows tested in process: the real parser and state machine, no NATS, no gRPC, no threads.

:class:`WorkflowTestEnv` runs the transitions of :class:`cosmos.plato.engine.machine.Machine` one input
at a time, as the evaluator does, and plays the rest of the platform itself: each step task the
machine sends goes to a Python handler registered for it, whose answer is fed back as the step's
result; timers wait on a clock that only moves when the test says so (:meth:`WorkflowRun.sleep`), or
that skips straight to the next timer while the test waits for the end (:meth:`WorkflowRun.wait`), so
retries with backoff, builtin timers and timeouts take no real time (as in Temporal's time-skipping
test environment). Child workflows whose definitions the environment holds run in it too.

Example::

    env = WorkflowTestEnv('''
    workflow:
      id: hello
      steps:
        greet:
          retry: {max: 2, backoff: fixed, initialInterval: 10s}
      rules:
        - when: workflow.started
          do: [greet, shout]
    ''')
    attempts = []

    @env.handler("greet")
    def greet(step: StepCall) -> dict[str, Any]:
        attempts.append(step.attempt)
        if step.attempt == 1:
            raise StepError("flaky")
        return {"text": f"hello {step.input['input']['name']}"}

    env.handler("shout")(lambda step: {"text": "HELLO"})
    run = env.start({"name": "ada"})
    wf = run.wait()  # skips the 10 s backoff
    assert wf.state == workflow_pb2.WORKFLOW_STATE_COMPLETED and attempts == [1, 2]
    assert run.step("greet").output["text"] == "hello ada"

Handlers are keyed by the queue the engine addresses a task to: a step's name, unless its
definition names a ``queue``; a job step (sent to Stratum's queue) by its step name. A handler gets a
:class:`StepCall` and returns the step's output (a mapping, or None for none), or raises to fail the
attempt (:class:`StepError` with ``non_retryable=True`` to fail it for good); it may be a coroutine
function, which is run to its end at once (``asyncio.run``: drive the environment from synchronous
test code, not from inside a running event loop). A handler that
returns :data:`NO_REPLY` leaves the task unanswered (a worker that hangs: timeouts fire), as does a
task no handler is registered for; :meth:`WorkflowRun.complete` and :meth:`WorkflowRun.fail` answer
such a task by hand.

Nothing here is used by the services; it is for tests of definitions and of the machine.
:class:`WorkflowRun`, what a test holds of one workflow, is in :mod:`cosmos.plato.testing_run`.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import json
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cosmos import errors
from cosmos.common.v1 import progress_pb2
from cosmos.plato import limits
from cosmos.plato.engine import machine
from cosmos.plato.engine.state import WorkflowState
from cosmos.plato.language import parser
from cosmos.plato.testing_run import RunningWorkflow, WorkflowRun
from cosmos.plato.v1 import engine_pb2, events_pb2
from cosmos.protocol import subjects, values

__all__ = ["NO_REPLY", "START_TIME", "Handler", "StepCall", "StepError", "WorkflowRun", "WorkflowTestEnv"]

START_TIME = datetime(2030, 1, 1, tzinfo=UTC)
"""The clock's reading when an environment is made (a fixed moment: runs are reproducible)."""

NO_REPLY: Any = object()
"""Returned by a handler: the task stays unanswered, as if its worker hung."""

Handler = Callable[["StepCall"], Any]
"""A step handler: takes a :class:`StepCall`, returns the output (or an awaitable of it)."""

_TASKS = subjects.tasks("")
_CANCELS = subjects.cancels("")
_NOTIFY = subjects.notify("")
_EVENTS = subjects.events("")
_TIMERS = subjects.TIMERS_ALL.removesuffix(">")
_INBOX = subjects.INBOX_ALL.removesuffix(">")


class StepError(errors.CosmosError):
    """Raised by a handler to fail the attempt with this message (a retryable failure, unless
    ``non_retryable``); any other exception fails it too, retryably, with ``str(exc)``."""

    def __init__(self, message: str, *, non_retryable: bool = False) -> None:
        super().__init__(message)
        self.non_retryable = non_retryable


@dataclass
class StepCall:
    """One attempt of a step, as its handler sees it."""

    task: events_pb2.StepTask
    input: dict[str, Any]
    now: datetime
    """The environment's clock (it stands still while a handler runs)."""
    _env: WorkflowTestEnv = field(repr=False)

    @property
    def workflow_id(self) -> str:
        return self.task.workflow_id

    @property
    def step_id(self) -> str:
        return self.task.step_id

    @property
    def step_name(self) -> str:
        return self.task.step_name

    @property
    def attempt(self) -> int:
        return self.task.attempt

    def heartbeat(self, percent: float | None = None) -> None:
        """Report the attempt alive (with progress, if given); the heartbeat is applied after the
        handler returns, before its result."""
        beat = engine_pb2.StepHeartbeatInput(step_id=self.step_id, attempt=self.attempt)
        if percent is not None:
            beat.progress.CopyFrom(progress_pb2.Progress(percent=percent))
        inp = engine_pb2.EngineInput(workflow_id=self.workflow_id, heartbeat=beat)
        self._env._post(self.workflow_id, inp)


class WorkflowTestEnv:
    """Definitions, step handlers and a clock; :meth:`start` runs a workflow of the first definition.

    ``children`` are the sources of the definitions child workflows start (by id; every version is
    1). ``seed`` seeds the jitter of retry backoffs.
    """

    def __init__(
        self,
        source: str,
        *,
        children: tuple[str, ...] | list[str] = (),
        seed: int = 0,
        max_value_bytes: int = limits.DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self.definition = parser.parse(source)
        self.definitions = {self.definition.id: self.definition}
        for child in children:
            parsed = parser.parse(child)
            self.definitions[parsed.id] = parsed
        self.now = START_TIME
        self.handlers: dict[str, Handler] = {}
        self.notifications: list[tuple[str, dict[str, Any]]] = []
        """``(channel, message)`` of each builtin ``notify`` step, in order."""
        self.cancelled: list[str] = []
        """Idempotency keys of the attempts the machine told their handlers to stop."""
        self.max_value_bytes = max_value_bytes
        self._rand = random.Random(seed)
        self._workflows: dict[str, RunningWorkflow] = {}
        self._queue: deque[tuple[str, engine_pb2.EngineInput]] = deque()
        # (due, order, workflow id, input): the order keeps timers due at once in the order set.
        self._timers: list[tuple[datetime, int, str, engine_pb2.EngineInput]] = []
        self._order = itertools.count()
        self._started = itertools.count(1)

    def handler(self, queue: str) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of ``queue`` (see the module docstring)."""

        def register(fn: Handler) -> Handler:
            self.handlers[queue] = fn
            return fn

        return register

    def start(self, input: Mapping[str, Any] | None = None, *, workflow_id: str = "") -> WorkflowRun:
        """Start a workflow of the environment's definition and run it until it waits (for a timer, a
        signal or an unanswered task) or ends."""
        workflow_id = workflow_id or f"wf-{next(self._started)}"
        start = engine_pb2.StartInput(definition_id=self.definition.id, definition_version=1)
        start.input.update(dict(input or {}))
        self._post(workflow_id, engine_pb2.EngineInput(workflow_id=workflow_id, start=start))
        self._drain()
        return WorkflowRun(self, workflow_id)

    def sleep(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, firing every timer due by then in order (each at its time)."""
        until = self.now + timedelta(seconds=seconds)
        while self._timers and self._timers[0][0] <= until:
            self._fire_next()
        self.now = until

    # ----------------------------------------------------------------- the platform's part

    def _fire_next(self) -> None:
        due, _, workflow_id, fired = heapq.heappop(self._timers)
        self.now = max(self.now, due)
        self._post(workflow_id, fired)
        self._drain()

    def _post(self, workflow_id: str, inp: engine_pb2.EngineInput) -> None:
        self._queue.append((workflow_id, inp))

    def _drain(self) -> None:
        """Apply queued inputs, one transition each, until none is left."""
        while self._queue:
            workflow_id, inp = self._queue.popleft()
            self._apply(workflow_id, inp)

    def _apply(self, workflow_id: str, inp: engine_pb2.EngineInput) -> None:
        wf = self._workflows.get(workflow_id)
        if wf is None:
            if inp.WhichOneof("kind") != "start" or inp.start.definition_id not in self.definitions:
                return  # as the evaluator drops input for an unknown workflow
            record = machine.new_record(workflow_id, inp.start, self.now)
            wf = self._workflows[workflow_id] = RunningWorkflow(
                self.definitions[inp.start.definition_id], WorkflowState(record)
            )
        engine = machine.Machine(
            wf.state,
            wf.definition,
            self.now,
            self._rand.random,
            max_value_bytes=self.max_value_bytes,
        )
        engine.begin()
        engine.apply(inp)
        wf.state.table.dirty.clear()  # "committed"
        for message in list(wf.state.record.outbox):
            self._deliver(wf, message)

    def _deliver(self, wf: RunningWorkflow, message: engine_pb2.OutboxMessage) -> None:
        subject = message.subject
        if subject.startswith(_EVENTS):
            wf.history.append(events_pb2.WorkflowEvent.FromString(message.data))
        elif subject.startswith(_TASKS):
            task = events_pb2.StepTask.FromString(message.data)
            wf.tasks.append(task)
            self._run_handler(task, subject.removeprefix(_TASKS))
        elif subject.startswith(_TIMERS):
            due = subjects.scheduled_at(message.headers[subjects.Header.SCHEDULE])
            fired = engine_pb2.EngineInput.FromString(message.data)
            entry = (due, next(self._order), fired.workflow_id, fired)
            heapq.heappush(self._timers, entry)
        elif subject.startswith(_INBOX):
            sent = engine_pb2.EngineInput.FromString(message.data)  # a child's start or cancel, or
            self._post(sent.workflow_id, sent)  # a child's result to its parent
        elif subject.startswith(_CANCELS):
            self.cancelled.append(message.data.decode())
        elif subject.startswith(_NOTIFY):
            self.notifications.append((subject.removeprefix(_NOTIFY), json.loads(message.data)))

    def _run_handler(self, task: events_pb2.StepTask, queue: str) -> None:
        handler = self.handlers.get(queue) or self.handlers.get(task.step_name)
        if handler is None:
            return  # unanswered until the test answers it (WorkflowRun.complete / fail)
        result = engine_pb2.StepResultInput(step_id=task.step_id, attempt=task.attempt, success=True)
        try:
            output = handler(StepCall(task, values.struct_to_dict(task.input), self.now, self))
            if inspect.isawaitable(output):
                output = asyncio.run(_awaited(output))
        except StepError as exc:
            result.success, result.error, result.non_retryable = False, str(exc), exc.non_retryable
        except Exception as exc:
            result.success, result.error = False, str(exc) or type(exc).__name__
        else:
            if output is NO_REPLY:
                return
            result.output.update(dict(output or {}))
        self._post(task.workflow_id, engine_pb2.EngineInput(workflow_id=task.workflow_id, result=result))


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value
