"""What every CLI command shares: ``-o table|json|yaml``, tables that keep ids whole, and errors as one
line on stderr with a hint (never a traceback, never on stdout)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.table import Table

from cosmos.cli.console import make_console
from cosmos.runtime import rpc_errors

FORMATS = ("table", "json", "yaml")


def add_output_argument(p: argparse.ArgumentParser, default: str = "table") -> None:
    """``-o/--output table|json|yaml``."""
    p.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=default,
        help="table for people (default), json or yaml for scripts (every field, full ids)",
    )


def to_data(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, with the field names grpcurl shows (lowerCamelCase)."""
    data: dict[str, Any] = json_format.MessageToDict(message)
    return data


def emit(data: Mapping[str, Any], fmt: str, tables: Callable[[], Iterable[Table | str]]) -> None:
    """Print ``data`` as JSON or YAML, or the tables ``tables`` makes for people."""
    if fmt == "json":
        print(json.dumps(data, indent=2, sort_keys=False))
    elif fmt == "yaml":
        print(yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True), end="")
    else:
        console = make_console()
        for table in tables():
            console.print(table)


def said(fmt: str, message: Message, text: str) -> str | None:
    """What an action prints: ``text`` for people (returned, for the caller to print), else the
    resulting ``message`` in ``fmt``, printed here."""
    if fmt == "table":
        return text
    emit(to_data(message), fmt, lambda: [])
    return None


def table(title: str, columns: Iterable[str], *, ids: Iterable[str] = (), cut: Iterable[str] = ()) -> Table:
    """A table whose id columns are never cut or wrapped (ids are meant to be copied); ``cut``
    columns are one line, cut with an ellipsis (``-o json`` has them whole)."""
    t = Table(title=title, title_justify="left")
    keep, short = set(ids), set(cut)
    for column in columns:
        if column in keep:
            t.add_column(column, no_wrap=True, overflow="ignore")
        elif column in short:
            t.add_column(column, no_wrap=True, overflow="ellipsis")
        else:
            t.add_column(column, overflow="fold")
    return t


def fit_ids(t: Table, rows: Iterable[Iterable[str]]) -> None:
    """Give each no-wrap column the width of its longest cell, so rich never shortens an id."""
    cells = list(rows)
    for index, column in enumerate(t.columns):
        if column.no_wrap:
            longest = max((len(row[index]) for row in map(list, cells)), default=0)
            column.min_width = max(longest, len(str(column.header)))
    for row in cells:
        t.add_row(*row)


def one_line(text: str) -> str:
    return " ".join(text.split())


def rpc_error(exc: grpc.aio.AioRpcError, service: str, address: str) -> str:
    """One line for a failed call to ``service`` at ``address``, with a hint where one helps."""
    code = exc.code()
    details = one_line(exc.details() or "")
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"cannot reach {service} at {address} ({details or 'unavailable'}); is the stack up? Start it "
            f"with `cosmos up`, or point the CLI elsewhere with --context or --{service}"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{service} at {address} did not answer in time ({details}); is the stack overloaded or down?"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{service} refused the credentials ({details}); check the context (`cosmos config show`)"
    _, violations = rpc_errors.details_of(exc)
    # A violation the message already states is not said twice.
    extra = [
        one_line(f"{v.field}: {v.description}") for v in violations if one_line(v.description) not in details
    ]
    return "; ".join([f"{code.name}: {details}", *extra])


def fail(command: str, message: str) -> None:
    """``cosmos <command>: message`` on stderr."""
    print(f"cosmos {command}: {message}", file=sys.stderr)
