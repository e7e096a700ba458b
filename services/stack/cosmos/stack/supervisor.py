"""Keeps the embedded stack's children running: one that exits is started again, with backoff.

Only ``cosmos up``'s own stop (Ctrl-C, SIGTERM) ends the stack; a child that crashes — or is killed,
or exits on its own — is logged and restarted after a delay that doubles with each quick crash (1 s,
2 s, 4 s ... up to 30 s) and starts over once the child has stayed up for a minute. The platform is
built for this: NATS keeps its JetStream data, Plato and Stratum rebuild their state from it, and
agents and clients reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cosmos.stack.children import Child

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """How soon a crashed child is started again."""

    initial_backoff: float = 1.0
    """Seconds before the first restart of a child that crashed after running well."""
    max_backoff: float = 30.0
    """Longest wait between restarts of a child that keeps crashing."""
    healthy_after: float = 60.0
    """A child up this long before it crashes is restarted after ``initial_backoff`` again."""
    poll_interval: float = 0.2
    """Seconds between looks at the children."""


@dataclass
class _Track:
    started: float
    delay: float
    due: float | None = None
    restarts: int = 0


@dataclass
class Restart:
    """One restart decision, for whoever shows it to people."""

    child: Child
    """The child that exited (and is started again after ``delay``)."""
    code: int | None
    """Its exit code (negative: killed by that signal)."""
    delay: float
    """Seconds until it is started again."""
    restarts: int
    """How many times it has been restarted, this one included."""


@dataclass
class Supervisor:
    """Restarts the children of a running stack until stopped."""

    children: Sequence[Child]
    """The stack's children (the list is read on every look, so it may change)."""
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    """Backoff of restarts."""
    on_exit: Callable[[Restart], None] = lambda _: None
    """Called when a child is seen to have exited, before its restart is scheduled."""
    on_started: Callable[[Child], None] = lambda _: None
    """Called after a child was started again (its pid is new)."""
    _tracks: dict[str, _Track] = field(default_factory=dict)

    async def run(self, stopping: asyncio.Event) -> None:
        """Watch and restart until ``stopping`` is set."""
        loop = asyncio.get_running_loop()
        for child in self.children:
            self._tracks[child.name] = _Track(loop.time(), self.policy.initial_backoff)
        while not stopping.is_set():
            for child in list(self.children):
                await self._look(child, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.policy.poll_interval)

    async def _look(self, child: Child, now: float) -> None:
        code = child.exited()
        if code is None:
            return
        track = self._tracks.setdefault(child.name, _Track(now, self.policy.initial_backoff))
        if track.due is None:
            if now - track.started >= self.policy.healthy_after:
                track.delay = self.policy.initial_backoff
            track.due = now + track.delay
            track.restarts += 1
            log.warning(
                "component exited; restarting",
                extra={
                    "fields": {
                        "component": child.name,
                        "code": code,
                        "restart_in_s": track.delay,
                        "restarts": track.restarts,
                    }
                },
            )
            self.on_exit(Restart(child, code, track.delay, track.restarts))
            track.delay = min(track.delay * 2, self.policy.max_backoff)
            return
        if now < track.due:
            return
        try:
            await child.start()
        except OSError as exc:
            # Could not even spawn it (say, a full disk): try again after the next backoff.
            fields = {"component": child.name, "error": str(exc)}
            log.error("cannot restart component", extra={"fields": fields})
            track.due = None
            return
        track.started, track.due = now, None
        log.warning("component restarted", extra={"fields": {"component": child.name, "pid": child.pid}})
        self.on_started(child)
