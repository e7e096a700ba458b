"""Child processes of the embedded stack: started with their output in a log file, stopped politely."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cosmos import errors


@dataclass
class Child:
    """One child process and where its output goes."""

    name: str
    """Short name shown to the user, e.g. ``plato``."""
    argv: Sequence[str]
    """Program and arguments (never a shell string)."""
    log_path: Path
    """File receiving the child's stdout and stderr."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to this process's environment."""
    process: asyncio.subprocess.Process | None = None
    """The running process, once started."""
    role: str = ""
    """The service it runs (``plato`` for ``plato-2``), when it is one: whose certificate it shows."""

    async def start(self) -> None:
        """Spawn the process in its own process group (a Ctrl-C reaches the stack, not each child)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.process is not None
        return self.process.pid

    def exited(self) -> int | None:
        """The exit code if the child has ended, else None."""
        return None if self.process is None else self.process.returncode

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the child's log, to explain a failure."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, reason: str) -> errors.ProcessStartError:
        """An error saying the child failed, with the end of its log."""
        tail = self.log_tail()
        detail = f"{reason}\n{tail}" if tail else reason
        return errors.ProcessStartError(self.name, detail, str(self.log_path))

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL the group; return the exit code."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            return await self.process.wait()
