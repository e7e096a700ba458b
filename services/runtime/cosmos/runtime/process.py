"""The shared ``main`` of every Cosmos server process: common flags, logging, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from cosmos import errors
from cosmos.runtime import config, logs

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def add_server_arguments(parser: argparse.ArgumentParser, prefix: str, default_listen: str) -> None:
    """Flags every server has: ``--listen``, ``--grace-period``, ``--log-level``, ``--log-format``."""
    config.add_env_argument(
        parser, prefix, "--listen", default=default_listen, help="address to serve gRPC on"
    )
    config.add_env_argument(
        parser,
        prefix,
        "--grace-period",
        default=10.0,
        type=float,
        help="seconds in-flight calls get to finish on SIGTERM",
    )
    add_logging_arguments(parser, prefix)


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
