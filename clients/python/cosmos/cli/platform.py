"""``cosmos workflows|jobs|agents``: the platform's state as tables for people or JSON/YAML for scripts.

* ``cosmos workflows list|show|history|cancel|retry|reset`` (:mod:`cosmos.cli.workflows`)
* ``cosmos jobs list|show|logs [-f]|cancel`` (:mod:`cosmos.cli.jobs`)
* ``cosmos agents list|show|cordon|uncordon|drain|revoke`` (:mod:`cosmos.cli.agents`; ``join-token``:
  :mod:`cosmos.cli.join_tokens`)

Every command takes ``-o table|json|yaml``; lists take ``--state``, ``--tenant``, ``--since`` (and
``--definition`` for workflows, ``--agent`` for jobs), ``--limit N`` rows or ``--all`` (every page).
Ids are printed whole; an id argument may be any unique prefix of one (:mod:`cosmos.cli.lookup`).
This module is the command line the three share: flags, their checks, and errors as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc

from cosmos import errors
from cosmos.cli import agents as agents_cli
from cosmos.cli import jobs as jobs_cli
from cosmos.cli import output, target
from cosmos.cli import workflows as workflows_cli
from cosmos.cli.lookup import parse_since
from cosmos.plato.v1 import workflow_pb2
from cosmos.runtime import process
from cosmos.security.context import Context
from cosmos.stratum.v1 import agent_pb2, job_pb2

VERBS = {
    "workflows": ["list", "show", "history", "cancel", "retry", "reset"],
    "jobs": ["list", "show", "logs", "cancel"],
    "agents": ["list", "show", "cordon", "uncordon", "drain", "revoke"],
}
SERVICE = {"workflows": "plato", "jobs": "stratum", "agents": "stratum"}
NEEDS_ID = {"show", "history", "cancel", "retry", "reset", "logs", "cordon", "uncordon", "drain", "revoke"}
STATES = {
    "workflows": [n.removeprefix("WORKFLOW_STATE_").lower() for n in workflow_pb2.WorkflowState.keys()[1:]],
    "jobs": [n.removeprefix("JOB_STATE_").lower() for n in job_pb2.JobState.keys()[1:]],
    "agents": [n.removeprefix("AGENT_STATE_").lower() for n in agent_pb2.AgentState.keys()[1:]],
}


def parser(noun: str) -> argparse.ArgumentParser:
    """Flags of ``cosmos <noun>``."""
    p = argparse.ArgumentParser(prog=f"cosmos {noun}", description=f"Show and act on the platform's {noun}.")
    p.add_argument("verb", choices=VERBS[noun], nargs="?", default="list")
    p.add_argument("id", nargs="?", default="", help=f"{noun[:-1]} id, or a unique prefix of one")
    output.add_output_argument(p)
    p.add_argument("--limit", type=int, default=50, help="list: rows at most (default 50)")
    p.add_argument("--all", action="store_true", help="list: every row, page after page")
    p.add_argument("--state", default="", choices=["", *STATES[noun]], metavar="STATE",
                   help=f"list: only in this state ({', '.join(STATES[noun])})")  # fmt: skip
    p.add_argument("--since", default="", help="list: only newer than a duration (15m, 2h, 1d) or ISO time")
    if noun in ("workflows", "jobs"):
        p.add_argument("--tenant", default="", help="list: only of this tenant")
    if noun == "workflows":
        p.add_argument("--definition", default="", help="list: only runs of this definition id")
        p.add_argument(
            "--step", default="", help="reset: the step to rerun from (a step name of the definition)"
        )
        p.add_argument("--input", default="", help="retry, reset: new workflow input, JSON or @FILE")
        p.add_argument("--request-id", default="", help="retry, reset: idempotency key (default: a new one)")
        p.epilog = (
            "history: every event of a workflow; retry: rerun a FAILED or CANCELLED workflow's steps that "
            "did not complete; reset --step NAME: rerun a finished workflow from a step (docs/plato.md)"
        )
    if noun == "jobs":
        p.add_argument("--agent", default="", help="list: only jobs placed on this agent")
        p.add_argument("-f", "--follow", action="store_true", help="logs: keep printing until the job ends")
    if noun == "agents":
        p.epilog = "cosmos agents join-token create|list|delete: tokens for new agents to join with"
    target.add_arguments(p, SERVICE[noun])
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace, Context], Coroutine[Any, Any, str | None]]] = {
    "workflows": workflows_cli.command,
    "jobs": jobs_cli.command,
    "agents": agents_cli.command,
}


def main(argv: Sequence[str] | None = None, *, noun: str = "") -> int:
    """Entry point of ``cosmos workflows|jobs|agents``."""
    p = parser(noun)
    args = p.parse_args(argv)
    if args.verb in NEEDS_ID and not args.id:
        p.error(f"{args.verb} needs a {noun[:-1]} id")
    if args.verb == "list" and args.id:
        p.error(f"list takes no id (got {args.id!r}); did you mean `cosmos {noun} show {args.id}`?")
    if args.limit < 1:
        p.error("--limit must be 1 or more (--all: every row)")
    if noun == "workflows" and args.verb == "reset" and not args.step:
        p.error("reset needs --step NAME")
    if noun == "workflows" and args.verb != "reset" and args.step:
        p.error("--step is for reset")
    if noun == "jobs" and args.follow and args.verb != "logs":
        p.error("--follow is for logs")
    service = SERVICE[noun]
    address = ""
    try:
        if noun == "workflows":
            workflows_cli.parse_input(args.input)
        parse_since(args.since)
        ctx = target.resolve(args, service)
        address = ctx.endpoint(service)
        said: str | None = asyncio.run(COMMANDS[noun](args, ctx))
        if said:
            print(said)
    except errors.ConfigError as exc:
        output.fail(noun, str(exc))
        return process.EXIT_CONFIG
    except grpc.aio.AioRpcError as exc:
        output.fail(noun, output.rpc_error(exc, service, address))
        return process.EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return process.EXIT_OK
    return process.EXIT_OK


def workflows(argv: Sequence[str] | None = None) -> int:
    """``cosmos workflows``."""
    return main(argv, noun="workflows")


def jobs(argv: Sequence[str] | None = None) -> int:
    """``cosmos jobs``."""
    return main(argv, noun="jobs")


def agents(argv: Sequence[str] | None = None) -> int:
    """``cosmos agents``; ``cosmos agents join-token ...`` is :mod:`cosmos.cli.join_tokens`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["join-token"]:
        from cosmos.cli import join_tokens

        return join_tokens.main(args[1:])
    return main(args, noun="agents")
