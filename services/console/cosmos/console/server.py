"""``cosmos console``: the web console over HTTPS, acting with each signed-in user's platform token.

aiohttp, as Optimus's webhook: one asyncio stack with the grpc.aio clients it calls (a page's gRPC calls
and the watch streams behind its server-sent events run on the same loop, no thread pool), already a
dependency of the project, and small enough that the pages are plain functions (:mod:`.views`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from aiohttp import web

from cosmos import errors
from cosmos.console.app import Console
from cosmos.console.backend import Backend, Endpoints
from cosmos.runtime import config, process, server
from cosmos.security import config as security_config
from cosmos.security import storage, tls

PREFIX = "COSMOS_CONSOLE"
DEFAULT_LISTEN = "127.0.0.1:50444"
log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos console``."""
    p = argparse.ArgumentParser(
        prog="cosmos console",
        description="Serve the web console (HTTPS). People sign in with a platform token "
        "(`cosmos token create`); the console calls the services' token ports with it.",
    )
    add = config.add_env_argument
    add(p, PREFIX, "--listen", default=DEFAULT_LISTEN, help="HTTPS address of the console")
    add(p, PREFIX, "--optimus", default="127.0.0.1:50061", help="Optimus's token port (HOST:PORT)")
    add(p, PREFIX, "--plato", default="127.0.0.1:50062", help="Plato's token port")
    add(p, PREFIX, "--stratum", default="127.0.0.1:50063", help="Stratum's token port")
    security_config.add_arguments(p, PREFIX, "console")
    storage.add_argument(p, PREFIX)
    process.add_logging_arguments(p, PREFIX)
    return p


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT."""
    listen = config.Address.parse(args.listen, setting="--listen")
    security = security_config.from_args(args)
    if security.insecure or security.tls is None:
        raise errors.ConfigError(
            "cosmos console serves HTTPS only: give --pki-dir (with console.pem) or --tls-cert/--tls-key/"
            "--tls-ca (`cosmos pki issue --role console --name console` makes them)"
        )
    if security.token_public_key is None:
        raise errors.ConfigError(
            "cosmos console: no token public key (--token-public-key, or token-key.pub.pem in --pki-dir): "
            "sign-in checks platform tokens with it"
        )
    endpoints = Endpoints(
        config.parse_target(args.optimus, setting="--optimus"),
        config.parse_target(args.plato, setting="--plato"),
        config.parse_target(args.stratum, setting="--stratum"),
        security.tls.ca,
    )
    verifier = security.verifier()
    assert verifier is not None
    roots = storage.roots_from_args(args)
    backend = Backend(endpoints)
    console = Console(backend, verifier, storage_roots=roots)
    # Open event streams (a tab left on a running workflow) hold no stop up for long: they are
    # cancelled after 2 s.
    runner = web.AppRunner(console.app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(
        runner, listen.host, listen.port, ssl_context=tls.HttpsServerContext(security.tls).current
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await backend.close()
        raise errors.PortInUseError(listen.host, listen.port, "console", "--listen") from exc
    log.info("console listening", extra={"fields": {"url": f"https://{listen}/"}})
    try:
        await server.until_signalled()
    finally:
        await runner.cleanup()
        await backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos console``."""
    args = parser().parse_args(argv)
    return process.run("console", args, lambda: serve(args))
