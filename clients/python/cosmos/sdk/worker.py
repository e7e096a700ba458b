"""Step handlers as JetStream consumers: the card's ``@KafkaListener``, typed and durable.

Each queue is one durable pull consumer on ``PLATO_TASKS`` shared by every worker process serving it
(work-queue semantics: a task goes to one handler). A handler receives a :class:`StepContext` with
the typed :class:`StepTask` and its idempotency key, may heartbeat with progress, and returns its
output (a JSON-like dict) or raises. The result is posted to the workflow's inbox and stored by
JetStream *before* the task is acknowledged, so a crash re-runs the task rather than losing it.

A worker connects with its certificate (``tls``: a user certificate with the ``worker`` role, which
the locked-down NATS maps to a worker user), and every result and heartbeat carries the task's token:
Plato applies only those whose token is right for the current attempt.

Delivered again, a task is first checked with Plato (``cosmos.plato.attempts``): if its attempt is no
longer current (the workflow ended, the step moved on) it is acknowledged and the handler is not run.
While a handler runs, the worker keeps JetStream's lease on the task (``in_progress`` every third of
``ack_wait``), so a long handler is not handed to a second worker; it acknowledges the task once its
result is stored. A NATS outage is ridden out: the connection reconnects, pulls resume, and a result
is posted again (same ``Nats-Msg-Id``) until JetStream has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from opentelemetry import trace

from cosmos import errors
from cosmos.common.v1 import progress_pb2
from cosmos.plato.v1 import engine_pb2, events_pb2
from cosmos.protocol import inputs, limits, subjects, values
from cosmos.runtime import jetstream, telemetry
from cosmos.security.tls import TlsFiles

log = logging.getLogger(__name__)
tracer = trace.get_tracer("cosmos.sdk")


class StepError(errors.CosmosError):
    """Raise from a handler to fail the step with a message; ``non_retryable`` skips every retry."""

    def __init__(self, message: str, *, non_retryable: bool = False) -> None:
        super().__init__(message)
        self.non_retryable = non_retryable


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker pulls and runs tasks."""

    concurrency: int = 64
    """Tasks run at once per worker process (across its queues)."""
    ack_wait: float = 30.0
    """Seconds a task may go without a heartbeat before JetStream hands it to another worker."""
    fetch_batch: int = 64
    """Tasks requested per pull."""
    check_timeout: float = 2.0
    """Seconds to wait for Plato's answer on whether a redelivered task's attempt is still current."""
    recheck_delay: float = 5.0
    """Seconds before a redelivered task is looked at again when Plato could not answer."""
    retry_max: float = 5.0
    """Longest wait between tries while NATS is unreachable (pulls, posting a result)."""


@dataclass
class StepContext:
    """What a handler gets for one step attempt."""

    task: events_pb2.StepTask
    """The typed task."""
    input: dict[str, Any]
    """The step's input as a dict."""
    cancelled: asyncio.Event
    """Set when the workflow was cancelled or the attempt timed out; the handler task is also cancelled."""
    _worker: Worker
    _msg: Msg
    _beats: int = 0

    @property
    def idempotency_key(self) -> str:
        """``<workflow>/<step_id>/<attempt>``: the same for every delivery of this attempt."""
        return self.task.idempotency_key

    @property
    def attempt(self) -> int:
        """Attempt number, 1-based."""
        return self.task.attempt

    async def heartbeat(
        self, *, percent: float | None = None, message: str = "", fps: float = 0.0, speed: float = 0.0
    ) -> None:
        """Tell Plato the attempt is alive (resets heartbeat timeouts) and report progress."""
        self._beats += 1
        progress = None
        if percent is not None or message or fps or speed:
            progress = progress_pb2.Progress(percent=percent or 0.0, message=message, fps=fps, speed=speed)
        inp, msg_id = inputs.heartbeat(
            self.task.workflow_id,
            self.task.step_id,
            self.task.attempt,
            progress,
            self._beats,
            task_token=self.task.task_token,
        )
        await self._worker._post(inp, msg_id)
        with contextlib.suppress(nats.errors.Error):
            await self._msg.in_progress()


Handler = Callable[[StepContext], Awaitable[Mapping[str, Any] | None]]


@dataclass
class Worker:
    """Runs registered handlers for their queues until stopped."""

    nats_url: str
    """NATS server URL."""
    config: WorkerConfig = field(default_factory=WorkerConfig)
    """Concurrency and leases."""
    tls: TlsFiles | None = None
    """This worker's certificate, key and CA for NATS; None only against an ``--insecure`` stack."""
    handlers: dict[str, Handler] = field(default_factory=dict)
    """Handler per queue."""
    completed: int = 0
    """Tasks finished (either way) by this worker, for tests and benchmarks."""
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once every registered queue is subscribed: tasks published from then on can reach it."""
    _nc: NatsClient | None = None
    _js: JetStreamContext | None = None
    _running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _cancellable: dict[str, StepContext] = field(default_factory=dict)

    def handler(self, queue: str) -> Callable[[Handler], Handler]:
        """Decorator registering ``fn`` for ``queue`` (by default a step's name)."""

        def register(fn: Handler) -> Handler:
            self.handlers[queue] = fn
            return fn

        return register

    async def run(self, stopping: asyncio.Event, *, finish_running: bool = True) -> None:
        """Serve every registered queue until ``stopping`` is set.

        Running tasks are then finished first, or, with ``finish_running=False``, abandoned: they are
        not acknowledged, so JetStream hands them to another worker after ``ack_wait``.
        """
        self._nc = await nats.connect(
            jetstream.servers(self.nats_url),  # every node of a cluster: fails over when one dies
            name="cosmos-worker",
            max_reconnect_attempts=-1,
            **jetstream.tls_options(self.tls),
        )
        self._js = self._nc.jetstream()
        slots = asyncio.Semaphore(self.config.concurrency)
        cancels = await self._nc.subscribe(subjects.CANCELS_ALL, cb=self._on_cancel)
        try:
            subs = await asyncio.gather(*(self._subscribe(queue, stopping) for queue in self.handlers))
            if all(sub is not None for sub in subs):
                self.subscribed.set()
            await asyncio.gather(
                *(
                    self._serve(queue, sub, slots, stopping)
                    for queue, sub in zip(self.handlers, subs, strict=True)
                )
            )
            if not finish_running:
                for task in self._running.values():
                    task.cancel()
            if self._running:
                await asyncio.gather(*self._running.values(), return_exceptions=True)
        finally:
            await cancels.unsubscribe()
            await jetstream.close(self._nc)

    async def _subscribe(
        self, queue: str, stopping: asyncio.Event
    ) -> JetStreamContext.PullSubscription | None:
        assert self._js is not None
        while not stopping.is_set():
            try:
                return await self._js.pull_subscribe(
                    subjects.tasks(queue),
                    durable=subjects.queue_consumer(queue),
                    stream=subjects.TASKS_STREAM,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.EXPLICIT, ack_wait=self.config.ack_wait, max_ack_pending=-1
                    ),
                )
            except nats.js.errors.NotFoundError:
                # Plato creates the streams; a worker may well start first.
                await asyncio.sleep(0.5)
            except nats.errors.ConnectionClosedError:
                return None
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning(
                    "cannot subscribe yet; retrying", extra={"fields": {"queue": queue, "error": repr(exc)}}
                )
                await asyncio.sleep(1.0)
        return None

    async def _serve(
        self,
        queue: str,
        sub: JetStreamContext.PullSubscription | None,
        slots: asyncio.Semaphore,
        stopping: asyncio.Event,
    ) -> None:
        if sub is None:
            return
        while not stopping.is_set():
            free = max(1, min(self.config.fetch_batch, self.config.concurrency - len(self._running)))
            try:
                msgs = await sub.fetch(free, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                return
            except nats.errors.Error as exc:
                # NATS is away (reconnecting) or JetStream is not ready again yet: pull again shortly.
                log.warning(
                    "pulling tasks failed; retrying", extra={"fields": {"queue": queue, "error": repr(exc)}}
                )
                await asyncio.sleep(min(1.0, self.config.retry_max))
                continue
            for msg in msgs:
                await slots.acquire()
                task = asyncio.create_task(self._run_one(queue, msg))
                key = msg.reply or str(id(task))
                self._running[key] = task
                task.add_done_callback(self._finished(key, slots))

    def _finished(self, key: str, slots: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
        def done(_: asyncio.Task[None]) -> None:
            self._running.pop(key, None)
            slots.release()

        return done

    async def _attempt_status(self, task: events_pb2.StepTask) -> events_pb2.AttemptStatus | None:
        """Plato's word on whether ``task``'s attempt is still current; None if it cannot be had now."""
        assert self._nc is not None
        query = events_pb2.AttemptQuery(
            workflow_id=task.workflow_id,
            step_id=task.step_id,
            attempt=task.attempt,
            task_token=task.task_token,
        )
        try:
            reply = await self._nc.request(
                subjects.ATTEMPTS, query.SerializeToString(), timeout=self.config.check_timeout
            )
            return events_pb2.AttemptStatus.FromString(reply.data)
        except (nats.errors.Error, TimeoutError, DecodeError):
            return None

    async def _still_current(self, task: events_pb2.StepTask, msg: Msg) -> bool:
        """False when a redelivered task must not run (acknowledged, or left for a later look)."""
        if msg.metadata.num_delivered in (None, 1):
            return True  # first delivery: Plato published it for the current attempt
        status = await self._attempt_status(task)
        if status is None:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=self.config.recheck_delay)
            return False
        if not status.current:
            log.info(
                "redelivered task is stale; not run",
                extra={"fields": {"key": task.idempotency_key, "why": status.reason}},
            )
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()
            return False
        return True

    async def _keep_leased(self, msg: Msg) -> None:
        # JetStream would hand a task whose handler outlives ack_wait to another worker.
        while True:
            await asyncio.sleep(self.config.ack_wait / 3)
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await msg.in_progress()

    async def _run_one(self, queue: str, msg: Msg) -> None:
        task = events_pb2.StepTask.FromString(msg.data)
        if not await self._still_current(task, msg):
            return
        ctx = StepContext(task, values.struct_to_dict(task.input), asyncio.Event(), self, msg)
        with tracer.start_as_current_span(
            f"step {task.step_name}", context=telemetry.extract_context(msg.headers)
        ) as span:
            span.set_attribute("cosmos.workflow_id", task.workflow_id)
            span.set_attribute("cosmos.step_id", task.step_id)
            span.set_attribute("cosmos.attempt", task.attempt)
            self._cancellable[task.idempotency_key] = ctx
            leased = asyncio.create_task(self._keep_leased(msg))
            try:
                output = await self.handlers[queue](ctx)
                inp, msg_id = inputs.result(
                    task.workflow_id,
                    task.step_id,
                    task.attempt,
                    output=dict(output or {}),
                    task_token=task.task_token,
                )
            except asyncio.CancelledError:
                if not ctx.cancelled.is_set():
                    raise  # the worker itself is shutting down: leave the task for redelivery
                await msg.ack()
                return
            except StepError as exc:
                inp, msg_id = inputs.result(
                    task.workflow_id,
                    task.step_id,
                    task.attempt,
                    error=str(exc),
                    non_retryable=exc.non_retryable,
                    task_token=task.task_token,
                )
            except Exception as exc:
                log.exception("handler raised", extra={"fields": {"key": task.idempotency_key}})
                inp, msg_id = inputs.result(
                    task.workflow_id,
                    task.step_id,
                    task.attempt,
                    error=f"{type(exc).__name__}: {exc}",
                    task_token=task.task_token,
                )
            finally:
                leased.cancel()
                self._cancellable.pop(task.idempotency_key, None)
            size, limit = inp.result.output.ByteSize(), self._output_limit()
            if size > limit:
                # Posting it could never succeed (one NATS message): the step fails, saying why.
                inp, msg_id = inputs.result(
                    task.workflow_id,
                    task.step_id,
                    task.attempt,
                    error=f"output of {size:,} bytes exceeds the limit of {limit:,} bytes",
                    non_retryable=True,
                    task_token=task.task_token,
                )
            await self._post_until_stored(inp, msg_id)
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()  # if this is lost, the redelivery is found stale and acknowledged then
            self.completed += 1

    def _output_limit(self) -> int:
        """The largest step output Plato accepts (see docs/plato.md, "Limits")."""
        max_payload = self._nc.max_payload if self._nc is not None else limits.NATS_DEFAULT_MAX_PAYLOAD
        return limits.max_value_bytes(max_payload)

    async def _post_until_stored(self, inp: engine_pb2.EngineInput, msg_id: str) -> None:
        """Post a result, again (same msg id: JetStream keeps one) until stored, with backoff."""
        delay = 0.2
        while True:
            try:
                await self._post(inp, msg_id)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning(
                    "cannot post a result yet; retrying",
                    extra={"fields": {"workflow_id": inp.workflow_id, "error": repr(exc)}},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.retry_max)

    async def _post(self, inp: engine_pb2.EngineInput, msg_id: str) -> None:
        assert self._js is not None
        headers = telemetry.inject_headers({subjects.Header.MSG_ID: msg_id})
        await self._js.publish(subjects.report(inp.workflow_id), inp.SerializeToString(), headers=headers)

    async def _on_cancel(self, msg: Msg) -> None:
        ctx = self._cancellable.get(msg.data.decode())
        if ctx is None:
            return
        ctx.cancelled.set()
        running = self._running.get(ctx._msg.reply)
        if running is not None:
            running.cancel()
