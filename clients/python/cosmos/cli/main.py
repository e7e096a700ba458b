"""Dispatch of ``cosmos <command>``; each command's module is imported only when it runs."""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

# command -> ("module:function", one-line help). Server modules pull in heavy imports, so load lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("cosmos.cli.up:main", "start NATS, Plato, Stratum, Optimus and a local agent; stop on Ctrl-C"),
    "demo": ("cosmos.cli.demo:main", "run the main job end to end on the embedded stack"),
    "encode": ("cosmos.cli.encode:main", "encode a video into an HLS + DASH ladder, with live progress"),
    "workflows": (
        "cosmos.cli.platform:workflows",
        "list, show, history, cancel, retry or reset Plato workflows",
    ),
    "jobs": ("cosmos.cli.platform:jobs", "list, show, cancel Stratum jobs; their logs (-f: follow)"),
    "agents": (
        "cosmos.cli.platform:agents",
        "list, show, cordon, uncordon, drain or revoke agents; join tokens for new agents",
    ),
    "config": ("cosmos.cli.config:main", "contexts: which platform the CLI talks to, with which credentials"),
    "completion": ("cosmos.cli.completion:main", "print a bash or zsh completion script"),
    "pki": ("cosmos.cli.security:pki_main", "create the CA, issue and renew workload certificates"),
    "token": ("cosmos.cli.security:token_main", "create platform tokens for people and programs"),
    "console": ("cosmos.console.server:main", "run the web console (HTTPS; sign in with a platform token)"),
    "optimus": ("cosmos.optimus.server:main", "run the Optimus encode API server"),
    "plato": ("cosmos.runners.plato:main", "run the Plato workflow engine server"),
    "stratum": ("cosmos.stratum.server:main", "run the Stratum compute-pool server"),
    "agent": ("cosmos.stratum.agent.main:main", "run a Stratum agent on this host"),
}

# The CLI ships in the SDK's distribution (cosmos-media-sdk); the commands that run a server or the
# embedded stack need that part's distribution too (docs/architecture.md, "Distributions").
DISTRIBUTIONS: dict[str, str] = {
    "cosmos.stack": "cosmos-media-stack",
    "cosmos.plato": "cosmos-media-plato",
    "cosmos.stratum": "cosmos-media-stratum",
    "cosmos.optimus": "cosmos-media-optimus",
    "cosmos.console": "cosmos-media-console",
}


def installed(distribution: str) -> bool:
    """Whether ``distribution`` is installed in this environment."""
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing_distribution(exc: ImportError) -> str | None:
    """The distribution that would provide the module ``exc`` failed on, if it is a part of Cosmos that
    the SDK's distribution leaves out and it is not installed. (Without Plato's distribution,
    ``cosmos.plato`` is still a namespace, the contracts' ``cosmos.plato.v1`` in it: ``from
    cosmos.plato import server`` fails with an ImportError naming ``cosmos.plato``.)"""
    name = exc.name or ""
    found = next((d for p, d in DISTRIBUTIONS.items() if name == p or name.startswith(p + ".")), None)
    return found if found is not None and not installed(found) else None


def version() -> str:
    """The installed version of Cosmos."""
    from importlib import metadata

    try:
        return metadata.version("cosmos-media-sdk")
    except metadata.PackageNotFoundError:
        return "unknown"


def usage() -> str:
    """The top-level help text."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        "usage: cosmos [--version] <command> [options]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nevery command: cosmos <command> --help\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cosmos``; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0
    if args[0] in ("--version", "version"):
        print(f"cosmos {version()}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        near = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        print(f"cosmos: unknown command {command!r}{hint}\n\n{usage()}", end="", file=sys.stderr)
        return 2
    module_name, function = COMMANDS[command][0].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        distribution = missing_distribution(exc)
        if distribution is None:
            raise
        print(
            f"cosmos {command}: needs the {distribution} distribution, which is not installed here"
            " (it is not on PyPI: build its wheel from the repository, docs/architecture.md,"
            ' "Distributions")',
            file=sys.stderr,
        )
        return 2
    code: int = getattr(module, function)(rest)
    return code
