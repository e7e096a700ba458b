"""Which platform the CLI talks to and with which credentials: a context, with flags on top."""

from __future__ import annotations

import argparse
import dataclasses

from cosmos.runtime import config
from cosmos.security import context as contexts
from cosmos.security.context import Context

PREFIX = "COSMOS"


def add_arguments(p: argparse.ArgumentParser, *services: str) -> None:
    """``--context`` and an address flag per service (empty: the context's)."""
    config.add_env_argument(p, PREFIX, "--context", default="", help="context in the Cosmos config file")
    for service in services:
        config.add_env_argument(
            p, PREFIX, f"--{service}", default="", help=f"{service} gRPC address (default: the context's)"
        )


def resolve(args: argparse.Namespace, *services: str) -> Context:
    """The context the flags name, with any address flag applied."""
    ctx = contexts.load(args.context)
    overrides = {s: getattr(args, s) for s in services if getattr(args, s, "")}
    if overrides:
        ctx = dataclasses.replace(ctx, endpoints={**ctx.endpoints, **overrides})
    return ctx
