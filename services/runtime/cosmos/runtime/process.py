"""The shared ``main`` of every Cosmos server process: common flags, logging, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from cosmos import errors
from cosmos.runtime import config, logs
from cosmos.runtime.config import Address
from cosmos.security import config as security_config

# The CLI uses this module's exit codes and logging; the server module (grpc.aio, telemetry, metrics)
# is imported only where a server's config is built.
if TYPE_CHECKING:
    from cosmos.runtime.server import ServerConfig

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def add_server_arguments(
    parser: argparse.ArgumentParser, prefix: str, default_listen: str, name: str = ""
) -> None:
    """Flags every server has: ``--listen`` (mutual TLS), ``--token-listen``, ``--health-listen``,
    ``--metrics-listen``, the security flags (:mod:`cosmos.security.config`), ``--grace-period``,
    ``--log-level``, ``--log-format``."""
    config.add_env_argument(
        parser, prefix, "--listen", default=default_listen, help="address to serve gRPC on (mutual TLS)"
    )
    config.add_env_argument(
        parser,
        prefix,
        "--token-listen",
        default="",
        help="address to serve gRPC to callers with a platform token (TLS; empty: none)",
    )
    config.add_env_argument(
        parser,
        prefix,
        "--health-listen",
        default="",
        help="plaintext address serving only grpc.health.v1 for probes (empty: none)",
    )
    add_metrics_argument(parser, prefix)
    security_config.add_arguments(parser, prefix, name or prefix.rsplit("_", 1)[-1].lower())
    config.add_env_argument(
        parser,
        prefix,
        "--grace-period",
        default=10.0,
        type=float,
        help="seconds in-flight calls get to finish on SIGTERM",
    )
    add_logging_arguments(parser, prefix)


def server_config(name: str, args: argparse.Namespace) -> ServerConfig:
    """The :class:`ServerConfig` of a server's flags (:func:`add_server_arguments`); refuses plaintext
    beyond loopback, or no credentials at all, before anything else starts."""
    from cosmos.runtime.server import ServerConfig

    listen = Address.parse(args.listen, setting="--listen")
    security = security_config.from_args(args)
    security.check_listen(listen.host, name)
    return ServerConfig(
        name,
        listen,
        args.grace_period,
        security=security,
        token_listen=Address.parse(args.token_listen, setting="--token-listen")
        if args.token_listen
        else None,
        health_listen=Address.parse(args.health_listen, setting="--health-listen")
        if args.health_listen
        else None,
        metrics_listen=metrics_address(args),
    )


def add_metrics_argument(parser: argparse.ArgumentParser, prefix: str) -> None:
    """``--metrics-listen``: the plaintext HTTP address serving only Prometheus metrics (empty: none)."""
    config.add_env_argument(
        parser,
        prefix,
        "--metrics-listen",
        default="",
        help="plaintext HTTP address serving only Prometheus metrics at /metrics (empty: none; "
        "docs/metrics.md)",
    )


def metrics_address(args: argparse.Namespace) -> Address | None:
    """The ``--metrics-listen`` address, None when off."""
    return Address.parse(args.metrics_listen, setting="--metrics-listen") if args.metrics_listen else None


def add_logging_arguments(parser: argparse.ArgumentParser, prefix: str) -> None:
    """``--log-level`` and ``--log-format`` (json or text)."""
    config.add_env_argument(
        parser, prefix, "--log-level", default="info", help="debug, info, warning or error"
    )
    config.add_env_argument(parser, prefix, "--log-format", default="json", help="json or text")


def run(name: str, args: argparse.Namespace, main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run ``main`` with logging configured; map Cosmos errors to a message and an exit code."""
    logs.configure_logging(name, level=args.log_level, fmt=args.log_format)
    try:
        asyncio.run(main())
    except errors.ConfigError as exc:
        log.error(str(exc))
        print(f"cosmos {name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except errors.CosmosError as exc:
        log.error(str(exc))
        print(f"cosmos {name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK
