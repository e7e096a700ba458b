"""``cosmos agents join-token create|list|delete``: the tokens new agents join the pool with."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import uuid
from collections.abc import Sequence

import grpc
from rich.table import Table

from cosmos import errors
from cosmos.cli import output, target
from cosmos.cli.console import make_console
from cosmos.runtime import process, wellknown
from cosmos.security import join, pki
from cosmos.security.context import Context
from cosmos.stratum.v1 import join_token_pb2, pool_service_pb2, pool_service_pb2_grpc


async def create(ctx: Context, uses: int, ttl: datetime.timedelta, agent_id: str, description: str) -> str:
    """A new token; the text to print (the token itself on the first line, alone)."""
    request = pool_service_pb2.CreateJoinTokenRequest(
        request_id=uuid.uuid4().hex,
        uses=uses,
        ttl=wellknown.duration(ttl.total_seconds()),
        agent_id=agent_id,
        description=description,
    )
    async with ctx.channel("stratum") as channel:
        reply = await pool_service_pb2_grpc.PoolServiceStub(channel).CreateJoinToken(request)
    view = reply.join_token
    who = f"agent {view.agent_id!r}" if view.agent_id else "any agent id"
    return (
        f"{reply.token}\n"
        f"# token {view.token_id}: {view.uses} join(s) by {who}, until {_time(view)} UTC. It is shown only "
        "now.\n# Give it to the agent in COSMOS_AGENT_JOIN_TOKEN (a command line is visible to every user)."
    )


def _time(view: join_token_pb2.JoinToken) -> str:
    return view.expire_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


async def fetch_tokens(ctx: Context) -> list[join_token_pb2.JoinToken]:
    """Every token, soonest to expire first."""
    async with ctx.channel("stratum") as channel:
        reply = await pool_service_pb2_grpc.PoolServiceStub(channel).ListJoinTokens(
            pool_service_pb2.ListJoinTokensRequest(page_size=1000)
        )
    return list(reply.join_tokens)


def tokens_table(tokens: Sequence[join_token_pb2.JoinToken]) -> Table:
    columns = ("token", "state", "uses left", "agent id", "expires (UTC)", "joined", "creator", "description")
    table = output.table("join tokens", columns, ids=["token"])
    now = wellknown.utcnow()
    rows = []
    for view in tokens:
        expired = view.expire_time.ToDatetime(datetime.UTC) <= now
        state = "expired" if expired else "used up" if view.uses_left == 0 else "active"
        rows.append(
            [
                view.token_id,
                state,
                f"{view.uses_left}/{view.uses}",
                view.agent_id or "any",
                _time(view),
                ", ".join(view.joined_agent_ids) or "-",
                view.creator,
                view.description,
            ]
        )
    output.fit_ids(table, rows)
    return table


async def list_tokens(ctx: Context) -> Table:
    """Every token as a table, soonest to expire first."""
    return tokens_table(await fetch_tokens(ctx))


async def delete(ctx: Context, token_id: str) -> str:
    """Delete one token."""
    async with ctx.channel("stratum") as channel:
        await pool_service_pb2_grpc.PoolServiceStub(channel).DeleteJoinToken(
            pool_service_pb2.DeleteJoinTokenRequest(request_id=uuid.uuid4().hex, token_id=token_id)
        )
    return f"join token {token_id} deleted (agents that joined with it keep their certificates)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos agents join-token``."""
    p = argparse.ArgumentParser(
        prog="cosmos agents join-token",
        description="Tokens that let a new agent get its certificate from Stratum (admin only).",
    )
    p.add_argument("verb", choices=["create", "list", "delete"])
    p.add_argument("id", nargs="?", default="", help="token id (delete)")
    p.add_argument("--uses", type=int, default=join.DEFAULT_USES, help=f"joins allowed (1-{join.MAX_USES})")
    p.add_argument("--ttl", default="1h", help=f"lifetime, e.g. 30m, 1h, 2d (at most {join.MAX_TTL.days}d)")
    p.add_argument("--agent-id", default="", help="only this agent id may join with it (default: any)")
    p.add_argument("--description", default="", help="a note for whoever lists the tokens")
    output.add_output_argument(p)
    target.add_arguments(p, "stratum")
    args = p.parse_args(argv)
    console = make_console()
    address = ""
    try:
        ctx = target.resolve(args, "stratum")
        address = ctx.endpoint("stratum")
        if args.verb == "create":
            if args.uses < 1:
                raise errors.ConfigError(f"--uses {args.uses}: at least 1")
            text = asyncio.run(
                create(ctx, args.uses, pki.parse_ttl(args.ttl), args.agent_id, args.description)
            )
            print(text)  # plain print: the token must come out verbatim, never wrapped
        elif args.verb == "list":
            tokens = asyncio.run(fetch_tokens(ctx))
            data = {"joinTokens": [output.to_data(t) for t in tokens]}
            output.emit(data, args.output, lambda: [tokens_table(tokens)])
        else:
            if not args.id:
                p.error("delete needs a token id")
            console.print(asyncio.run(delete(ctx, args.id)))
    except errors.ConfigError as exc:
        print(f"cosmos agents join-token: {exc}", file=sys.stderr)
        return process.EXIT_CONFIG
    except grpc.aio.AioRpcError as exc:
        output.fail("agents join-token", output.rpc_error(exc, "stratum", address))
        return process.EXIT_FAILED
    return process.EXIT_OK
