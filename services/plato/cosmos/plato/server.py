"""The Plato server process: workflow API, step API and the evaluator, over JetStream."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from cosmos import errors
from cosmos.plato import metrics as plato_metrics
from cosmos.plato import task_tokens
from cosmos.plato.api import StepApi, WorkflowApi
from cosmos.plato.attempts import AttemptAnswers
from cosmos.plato.engine.evaluator import Evaluator, EvaluatorConfig
from cosmos.plato.store import PlatoStore, Storage, StoreConfig
from cosmos.plato.v1 import step_service_pb2_grpc, workflow_service_pb2_grpc
from cosmos.runtime import config, dependency, jetstream, metrics, process
from cosmos.runtime.server import Server, ServiceBinding
from cosmos.security.config import Security

PREFIX = "COSMOS_PLATO"
DEFAULT_LISTEN = "127.0.0.1:50052"


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos plato``."""
    p = argparse.ArgumentParser(prog="cosmos plato", description="Run the Plato workflow engine server.")
    process.add_server_arguments(p, PREFIX, DEFAULT_LISTEN, "plato")
    config.add_env_argument(p, PREFIX, "--nats", default=jetstream.DEFAULT_URL, help="NATS URL (JetStream)")
    config.add_env_argument(p, PREFIX, "--storage", default="file", help="JetStream storage: file or memory")
    config.add_env_argument(
        p, PREFIX, "--replicas", default=1, type=int, help="stream replicas (3 in a cluster)"
    )
    config.add_env_argument(
        p, PREFIX, "--batch", default=256, type=int, help="engine inputs pulled per fetch"
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--duplicate-window",
        default=StoreConfig.duplicate_window,
        type=float,
        help="seconds JetStream drops a re-published message with the same id",
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--task-key",
        default="",
        help="file of the key signing step task tokens, shared by every Plato replica; created 0600 if "
        f"missing (default: {task_tokens.KEY_FILE} in --pki-dir)",
    )
    return p


def task_key(args: argparse.Namespace, security: Security) -> task_tokens.TaskKey:
    """The task-token key ``--task-key`` (or ``--pki-dir``) names; a random one only when insecure."""
    if args.task_key:
        return task_tokens.load_or_create(Path(args.task_key))
    if args.pki_dir:
        return task_tokens.load_or_create(Path(args.pki_dir) / task_tokens.KEY_FILE)
    if security.insecure:
        return task_tokens.ephemeral()
    raise errors.ConfigError("no task key: give --task-key (a file every Plato replica shares) or --pki-dir")


Companion = Callable[[Security, asyncio.Event], Coroutine[Any, Any, None]]
"""Work run in the server's process until it stops (given its security settings and the stopping
event): how ``cosmos plato`` runs the built-in Stratum runner beside Plato without Plato knowing it."""


async def serve(args: argparse.Namespace, companions: Sequence[Companion] = ()) -> None:
    """Connect to NATS, set up streams and buckets, evaluate and serve until SIGTERM/SIGINT, with
    each of ``companions`` running alongside."""
    if args.storage not in ("file", "memory"):
        raise errors.ConfigError(f"--storage {args.storage!r}: expected file or memory")
    server_config = process.server_config("plato", args)
    key = task_key(args, server_config.security)
    # Plato presents its own service certificate to NATS, which maps it to the plato user.
    nats_tls = server_config.security.tls
    nc, js = await jetstream.connect(args.nats, "cosmos-plato", tls=nats_tls)
    if args.duplicate_window <= 0:
        raise errors.ConfigError(f"--duplicate-window {args.duplicate_window:g}: expected seconds > 0")
    store = PlatoStore(
        nc,
        js,
        StoreConfig(
            storage=Storage(args.storage), replicas=args.replicas, duplicate_window=args.duplicate_window
        ),
    )
    await store.ensure()
    await store.watch_definitions()
    evaluator = Evaluator(store, EvaluatorConfig(batch=args.batch), task_key=key)
    evaluating: asyncio.Task[object] | None = None

    async def nats_request(subject: str, payload: bytes) -> bytes:
        return bytes((await nc.request(subject, payload, timeout=metrics.REFRESH_TIMEOUT)).data)

    # Sampled right before each scrape: the evaluator's cache, the inbox and task queues' lag.
    unsample = [
        metrics.add_refresher(lambda: plato_metrics.cached_states(evaluator.cached_states())),
        metrics.add_refresher(plato_metrics.sampler(js, nats_request)),
    ]
    answers = AttemptAnswers(nc, store, key)
    await answers.start()

    async def finish() -> None:
        for remove in unsample:
            remove()
        await answers.stop()
        # The evaluator finishes its batch (it checks `stopping` between batches) before NATS closes.
        if evaluating is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(evaluating, timeout=args.grace_period)
        await store.close()
        await jetstream.close(nc)

    # Every Plato RPC reads or writes JetStream: while NATS is away they answer UNAVAILABLE at once.
    gate = dependency.Gate("NATS", lambda: nc.is_connected)
    server = Server(server_config, on_stop=finish, interceptors=[gate])
    server.add(
        ServiceBinding(
            "cosmos.plato.v1.WorkflowService",
            WorkflowApi(store, server.stopping, evaluator.created),
            workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server,
        )
    )
    server.add(
        ServiceBinding(
            "cosmos.plato.v1.StepService",
            StepApi(store, key),
            step_service_pb2_grpc.add_StepServiceServicer_to_server,
        )
    )
    evaluating = server.alongside(evaluator.run(server.stopping))
    server.alongside(gate.watch(server.health, [b.name for b in server.services], server.stopping))
    for companion in companions:
        server.alongside(companion(server_config.security, server.stopping))
    await server.serve_until_signalled()


def main(argv: Sequence[str] | None = None) -> int:
    """Plato alone (``cosmos plato`` is :func:`cosmos.runners.plato.main`, which adds the Stratum runner)."""
    args = parser().parse_args(argv)
    return process.run("plato", args, lambda: serve(args))
