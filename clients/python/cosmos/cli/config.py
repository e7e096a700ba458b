"""``cosmos config list|show|use|set|delete``: contexts, as ``kubectl config`` has them.

A context names a platform (an address per service) and the credentials to call it with (a client
certificate, key and CA; or a platform token and CA; or ``--insecure`` for a development stack).
``cosmos up`` writes the context ``local``. Every command takes ``--context NAME`` (or
``$COSMOS_CONTEXT``); without one the current context is used. The file is ``$COSMOS_CONFIG``, else
``~/.config/cosmos/config.yaml`` (mode 0600: it may hold a token).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cosmos import errors
from cosmos.cli import output
from cosmos.runtime import process
from cosmos.security import context as contexts

VERBS = ["list", "show", "use", "set", "delete"]
FILES = ("ca", "cert", "key")


def parser() -> argparse.ArgumentParser:
    """Flags of ``cosmos config``."""
    p = argparse.ArgumentParser(
        prog="cosmos config",
        description="Contexts: which platform the CLI talks to, and with which credentials.",
        epilog=f"the config file: {contexts.config_path()} ($COSMOS_CONFIG)",
    )
    p.add_argument("verb", choices=VERBS, nargs="?", default="list")
    p.add_argument("name", nargs="?", default="", help="context name (show: default the current one)")
    output.add_output_argument(p)
    for service in contexts.SERVICES:
        p.add_argument(f"--{service}", default=None, help=f"set: {service} gRPC address HOST:PORT")
    p.add_argument("--nats", default=None, help="set: NATS URL (for agents and tools that use it)")
    p.add_argument("--ca", default=None, help="set: CA bundle that signed the servers' certificates")
    p.add_argument("--cert", default=None, help="set: client certificate (mutual TLS)")
    p.add_argument("--key", default=None, help="set: its private key")
    p.add_argument("--token", default=None, help="set: a platform token (instead of a certificate)")
    p.add_argument(
        "--insecure", action=argparse.BooleanOptionalAction, default=None, help="set: plaintext dev stack"
    )
    p.add_argument("--storage-root", default=None, help="set: the platform's storage root, if local")
    p.add_argument("--current", action="store_true", help="set: also make it the current context")
    return p


def public(ctx: contexts.Context) -> dict[str, Any]:
    """A context as shown: the token is never printed."""
    data = dataclasses.asdict(ctx)
    if data.get("token"):
        data["token"] = "<set>"
    return data


def apply(args: argparse.Namespace, path: Path) -> contexts.Context:
    """The context ``args.name`` (a new one when absent) with the flags given applied."""
    existing, _ = contexts.names(path)
    ctx = contexts.load(args.name, path) if args.name in existing else contexts.Context(name=args.name)
    endpoints = dict(ctx.endpoints)
    for service in (*contexts.SERVICES, "nats"):
        value = getattr(args, service)
        if value is not None:
            if service != "nats" and (":" not in value or not value.rsplit(":", 1)[1].isdigit()):
                raise errors.ConfigError(f"--{service} {value!r}: expected HOST:PORT")
            endpoints[service] = value
    changes: dict[str, Any] = {"endpoints": endpoints}
    for name in FILES:
        value = getattr(args, name)
        if value is not None:
            file = Path(value).expanduser().absolute()
            if value and not file.is_file():
                raise errors.ConfigError(f"--{name} {value}: no such file")
            changes[name] = str(file) if value else ""
    for name in ("token", "insecure", "storage_root"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    return dataclasses.replace(ctx, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos config``."""
    p = parser()
    args = p.parse_args(argv)
    if args.verb in ("use", "set", "delete") and not args.name:
        p.error(f"{args.verb} needs a context name")
    path = contexts.config_path()
    try:
        if args.verb == "list":
            names, current = contexts.names(path)
            rows = [(n, "*" if n == current else "", contexts.load(n, path)) for n in names]
            data = {"current": current, "contexts": {n: public(c) for n, _, c in rows}}

            def tables() -> list[Any]:
                t = output.table(f"contexts ({path})", ("", "context", "plato", "credentials"))
                for name, mark, c in rows:
                    creds = (
                        "insecure" if c.insecure else "certificate" if c.cert else "token" if c.token else "-"
                    )
                    t.add_row(mark, name, c.endpoint("plato"), creds)
                return [t]

            output.emit(data, args.output, tables)
        elif args.verb == "show":
            ctx = contexts.load(args.name, path)
            output.emit(public(ctx), "yaml" if args.output == "table" else args.output, lambda: [])
        elif args.verb == "use":
            contexts.use(args.name, path)
            print(f"current context: {args.name}")
        elif args.verb == "set":
            ctx = apply(args, path)
            contexts.save(ctx, make_current=args.current, path=path)
            print(f"context {ctx.name} saved in {path}")
        else:
            contexts.delete(args.name, path)
            print(f"context {args.name} deleted from {path}")
    except errors.ConfigError as exc:
        output.fail("config", str(exc))
        return process.EXIT_CONFIG
    return process.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
