"""Following an encode to its end, for ``cosmos encode`` and ``cosmos encode watch``: live progress
bars (overall and per rendition, with fps and ETA), a watch that survives restarts of Optimus, and
Ctrl-C, which asks whether to cancel the encode; a second Ctrl-C stops watching (:class:`Detached`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import uuid
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.prompt import Confirm

from cosmos import errors
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.runtime import reconnect

ES = encode_pb2.EncodeState
PROMPT_THREAD = "cosmos-encode-prompt"
"""The thread that asks "cancel the encode?" on the terminal."""
TERMINAL = (ES.ENCODE_STATE_SUCCEEDED, ES.ENCODE_STATE_FAILED, ES.ENCODE_STATE_CANCELLED)


class LiveProgress:
    """Progress bars for an encode: one overall, one per rendition."""

    def __init__(self, console: Console) -> None:
        self.bars = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[fps]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def update(self, encode: encode_pb2.Encode) -> None:
        """Show one snapshot."""
        rows = [("overall", encode.progress.percent, encode.progress.fps)]
        rows += [(r.profile, r.progress.percent, r.progress.fps) for r in encode.renditions]
        for name, percent, fps in rows:
            if name not in self.tasks:
                self.tasks[name] = self.bars.add_task(name, total=100, fps="")
            self.bars.update(self.tasks[name], completed=percent, fps=f"{fps:.0f} fps" if fps else "")


async def follow(
    stub: encode_service_pb2_grpc.EncodeServiceAsyncStub, encode_id: str, live: LiveProgress | None
) -> encode_pb2.Encode:
    """Watch until the encode ends; the last snapshot. A restart of Optimus (or of Plato behind it)
    does not end the watch: it is reopened with backoff, and starts again from the current snapshot."""
    last = encode_pb2.Encode()
    request = encode_service_pb2.WatchEncodeRequest(encode_id=encode_id)
    replies = reconnect.reconnecting(
        lambda: stub.WatchEncode(request),
        lambda reply: reply.encode.state in TERMINAL,
        what=f"watch of {encode_id}",
    )
    async for reply in replies:
        last = reply.encode
        if live is not None:
            live.update(last)
    return last


def _ask(question: str, console: Console) -> asyncio.Future[bool]:
    """``question`` answered on the terminal, in a daemon thread: a process that stops while the
    question is open (a second Ctrl-C) does not wait for the answer. No terminal (EOF): no."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bool] = loop.create_future()

    def ask() -> None:
        try:
            said = Confirm.ask(question, console=console)
        except (EOFError, KeyboardInterrupt):
            said = False

        def settle() -> None:
            if not answer.done():
                answer.set_result(said)

        loop.call_soon_threadsafe(settle)

    threading.Thread(target=ask, name=PROMPT_THREAD, daemon=True).start()
    return answer


class Detached(errors.CosmosError):
    """The user stopped watching (a second Ctrl-C); the encode goes on, or goes on being cancelled."""


async def watch_encode(
    stub: encode_service_pb2_grpc.EncodeServiceAsyncStub,
    encode_id: str,
    console: Console,
    fmt: str,
) -> encode_pb2.Encode:
    """Follow ``encode_id`` to its end with live bars (table format); Ctrl-C asks whether to cancel
    it, and a second Ctrl-C, at the question or after the cancellation was asked, raises
    :class:`Detached`. A Ctrl-C typed while the question is open is never replayed after it."""
    live = LiveProgress(console) if fmt == "table" else None
    watching = asyncio.ensure_future(follow(stub, encode_id, live))
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    cancel_asked = False
    try:
        with live.bars if live is not None else contextlib.nullcontext():
            while not watching.done():
                wait_interrupt = asyncio.ensure_future(interrupted.wait())
                await asyncio.wait([watching, wait_interrupt], return_when=asyncio.FIRST_COMPLETED)
                wait_interrupt.cancel()
                if not interrupted.is_set() or watching.done():
                    continue
                interrupted.clear()
                if cancel_asked:
                    raise Detached
                if live is not None:
                    live.bars.stop()
                if fmt == "table" and sys.stdin.isatty():
                    answer = _ask("cancel the encode?", console)
                    again: asyncio.Future[Any] = asyncio.ensure_future(interrupted.wait())
                    await asyncio.wait([answer, again], return_when=asyncio.FIRST_COMPLETED)
                    again.cancel()
                    if not answer.done():
                        raise Detached  # Ctrl-C at the question: stop watching, cancel nothing
                    cancel = answer.result()
                    interrupted.clear()  # nothing typed during the question is replayed
                else:
                    cancel = True  # no one to ask: Ctrl-C cancels, a second one detaches
                if cancel:
                    cancel_asked = True
                    await stub.CancelEncode(
                        encode_service_pb2.CancelEncodeRequest(
                            request_id=uuid.uuid4().hex, encode_id=encode_id, reason="cancelled from the CLI"
                        )
                    )
                    print(f"cancelling {encode_id} (Ctrl-C again: stop watching)", file=sys.stderr)
                if live is not None:
                    live.bars.start()
        return watching.result()
    finally:
        watching.cancel()
        loop.remove_signal_handler(signal.SIGINT)
