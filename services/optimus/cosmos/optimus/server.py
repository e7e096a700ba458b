"""The Optimus server process: the stateless encode API in front of Plato and Stratum."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc

from cosmos import errors
from cosmos.optimus.api import EncodeApi
from cosmos.optimus.v1 import encode_service_pb2_grpc
from cosmos.runtime import channels, config, dependency, process
from cosmos.runtime.server import Server, ServiceBinding
from cosmos.security import storage
from cosmos.security.job_policy import JobPolicy

PREFIX = "COSMOS_OPTIMUS"
DEFAULT_LISTEN = "127.0.0.1:50051"
log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos optimus``."""
    p = argparse.ArgumentParser(prog="cosmos optimus", description="Run the Optimus encode API server.")
    process.add_server_arguments(p, PREFIX, DEFAULT_LISTEN, "optimus")
    config.add_env_argument(p, PREFIX, "--plato", default="127.0.0.1:50052", help="Plato gRPC address")
    config.add_env_argument(
        p,
        PREFIX,
        "--work-root",
        default=".cosmos/work",
        help="scratch space of encodes (shared with the agents)",
    )
    storage.add_argument(p, PREFIX)
    config.add_env_argument(
        p,
        PREFIX,
        "--webhook-listen",
        default="",
        help="address of the HTTPS webhook endpoint (docs/webhooks.md; empty: none)",
    )
    config.add_env_argument(
        p,
        PREFIX,
        "--job-policy",
        default="",
        help="Stratum's job policy (YAML): an encode's image must be allowed for its tenant (empty: any)",
    )
    config.add_env_argument(
        p, PREFIX, "--webhook-config", default="", help="the webhook's YAML: secrets and rules"
    )
    return p


async def register_definition(api: EncodeApi, stopping: asyncio.Event) -> None:
    """Register the encode workflow with Plato, retrying until Plato answers (or we stop)."""
    delay = 0.5
    while not stopping.is_set() and not api.registered:
        try:
            version = await api.register()
            log.info("encode workflow registered", extra={"fields": {"version": version}})
            return
        except grpc.aio.AioRpcError as exc:
            log.warning("cannot register the encode workflow yet", extra={"fields": {"error": exc.details()}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, 10.0)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT, registering the encode workflow with Plato meanwhile."""
    server_config = process.server_config("optimus", args)
    plato = channels.connect(
        config.parse_target(args.plato, setting="--plato"), "plato", server_config.security
    )

    async def close_channels() -> None:
        await api.aclose()  # starts already sent to Plato get their answers first
        await plato.close(None)

    # Every encode RPC but ListProfiles asks Plato: while Plato is away (or NOT_SERVING, its NATS
    # gone) they answer UNAVAILABLE at once and Optimus's health follows Plato's.
    peer = dependency.PeerHealth(plato)
    gate = dependency.Gate("Plato", peer.is_up, needs=lambda method: not method.endswith("/ListProfiles"))
    server = Server(server_config, on_stop=close_channels, interceptors=[gate])
    policy = JobPolicy.load(Path(args.job_policy)) if args.job_policy else None
    api = EncodeApi(
        plato, Path(args.work_root), server.stopping, storage.roots_from_args(args), job_policy=policy
    )
    server.add(
        ServiceBinding(
            "cosmos.optimus.v1.EncodeService",
            api,
            encode_service_pb2_grpc.add_EncodeServiceServicer_to_server,
        )
    )
    # Serve at once (a port conflict shows immediately); the workflow is registered as soon as Plato
    # answers, and a submit arriving before that registers it itself.
    server.alongside(register_definition(api, server.stopping))
    hook_runner = None
    if args.webhook_listen:
        if not args.webhook_config:
            raise errors.ConfigError("--webhook-listen needs --webhook-config (secrets and rules)")
        from cosmos.optimus import webhook  # its HTTP server (aiohttp) is loaded only when it serves

        hook = webhook.Webhook(
            webhook.WebhookConfig.load(Path(args.webhook_config)), lambda r: api.SubmitEncode(r, None)
        )
        listen = config.Address.parse(args.webhook_listen, setting="--webhook-listen")
        hook_runner = await webhook.start(listen, server_config.security, hook)
        log.info("webhook listening", extra={"fields": {"address": str(listen), "path": webhook.PATH}})
    server.alongside(peer.run(server.stopping))
    server.alongside(gate.watch(server.health, [b.name for b in server.services], server.stopping))
    try:
        await server.serve_until_signalled()
    finally:
        if hook_runner is not None:
            await hook_runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos optimus``."""
    args = parser().parse_args(argv)
    return process.run("optimus", args, lambda: serve(args))
