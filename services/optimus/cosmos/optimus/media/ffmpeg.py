"""Running ffmpeg: locating the binary, progress on the Stratum channel, and clear failures.

Every ffmpeg run gets ``-progress pipe:1 -nostats``; the ``key=value`` blocks on stdout are turned into
JSON progress lines on ``COSMOS_PROGRESS_FD`` (or ``COSMOS_PROGRESS_FILE``), at most two a second.
stderr is collected; when ffmpeg fails, :class:`FfmpegError` carries its last meaningful lines.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from cosmos import errors

__all__ = [
    "CorruptMedia",
    "FfmpegError",
    "FfmpegRun",
    "InputError",
    "MediaError",
    "Progress",
    "classify_stderr",
    "ffmpeg_exe",
    "run_capture",
    "run_ffmpeg",
    "stderr_tail",
]


class MediaError(errors.CosmosError):
    """A failure the CLI reports as one line on stderr with ``exit_code``.

    ``code`` and ``permanent`` are what the CLI declares to Stratum (``$COSMOS_FAILURE_FILE``): a
    permanent failure fails the same way when run again, so it is not retried.
    """

    exit_code = 1
    code = "MEDIA_FAILED"
    permanent = False


class InputError(MediaError):
    """A missing, unreadable or unusable input, or bad usage (exit 2): running again cannot help."""

    exit_code = 2
    code = "INVALID_INPUT"
    permanent = True


class CorruptMedia(InputError):
    """A truncated or corrupt media file (exit 2); the message names the file."""

    code = "CORRUPT_SOURCE"


# What ffmpeg's stderr says about a failure that would repeat on every run; first match wins.
_PERMANENT_CAUSES = (
    ("NO_SPACE", re.compile(r"No space left on device|Disk quota exceeded")),
    (
        "UNSUPPORTED_CODEC",
        re.compile(r"Unknown encoder|Encoder not found|Decoder \(codec .*\) not found|Unsupported codec"),
    ),
    (
        "CORRUPT_INPUT",
        re.compile(r"corrupt decoded frame|Invalid data found when processing input|partial file"),
    ),
)


def classify_stderr(stderr: str) -> tuple[str, bool]:
    """``(code, permanent)`` of a failed ffmpeg run from its stderr (``FFMPEG_FAILED``, transient,
    when nothing in it says the failure would repeat)."""
    for code, pattern in _PERMANENT_CAUSES:
        if pattern.search(stderr):
            return code, True
    return "FFMPEG_FAILED", False


class FfmpegError(MediaError):
    """ffmpeg exited non-zero; the message ends with its last relevant stderr lines."""

    def __init__(self, what: str, returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        self.code, self.permanent = classify_stderr(stderr)
        tail = stderr_tail(stderr)
        super().__init__(f"{what}: ffmpeg exited with code {returncode}" + (f": {tail}" if tail else ""))


_NOISE = re.compile(r"^(\s|Input #|Output #|Stream mapping|Press \[q\]|  Stream #|  Metadata|  Duration)")


# Generic follow-up lines ffmpeg prints after the real cause; skipped when anything else is left.
_CONSEQUENCES = re.compile(
    r"Task finished with error code|Terminating thread with return code|Nothing was written into output"
    r"|Error sending frames to consumers|Could not open encoder before EOF|Error while filtering"
    r"|Conversion failed|Exiting with exit code|Error closing file|Error writing trailer"
)


def stderr_tail(stderr: str, lines: int = 4) -> str:
    """The last ``lines`` meaningful stderr lines joined with `` | ``: banner and stream dumps skipped,
    and the generic "task finished" aftermath dropped so that the actual cause is what remains."""
    kept = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not _NOISE.match(ln)]
    causes = [ln for ln in kept if not _CONSEQUENCES.search(ln)]
    return " | ".join((causes or kept)[-lines:])[-1500:]


def ffmpeg_exe() -> str:
    """The ffmpeg binary: ``$COSMOS_FFMPEG``, else imageio-ffmpeg's bundled build, else ``ffmpeg`` on PATH."""
    exe = os.environ.get("COSMOS_FFMPEG")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # no wheel binary for this platform: fall back to PATH
        found = shutil.which("ffmpeg")
        if not found:
            raise MediaError("ffmpeg not found (install imageio-ffmpeg or set COSMOS_FFMPEG)") from None
        return found


class Progress:
    """Writes JSON progress lines to the Stratum progress channel; a no-op outside Stratum.

    ``span`` maps a sub-task's 0-100 % into part of the command's overall range, so a command with
    several ffmpeg runs reports one monotonic percentage.
    """

    MIN_INTERVAL = 0.5  # at most 2 reports a second

    def __init__(self, fd: int | None = None, path: str | None = None) -> None:
        self._fd = fd
        self._path = path
        self._last = 0.0
        self._pending: dict[str, object] | None = None
        self.lo, self.hi = 0.0, 100.0

    @classmethod
    def from_env(cls) -> Progress:
        """The channel named by ``COSMOS_PROGRESS_FD`` or ``COSMOS_PROGRESS_FILE``, if any."""
        fd = os.environ.get("COSMOS_PROGRESS_FD")
        if fd and fd.strip().isdigit():
            return cls(fd=int(fd))
        return cls(path=os.environ.get("COSMOS_PROGRESS_FILE") or None)

    @property
    def enabled(self) -> bool:
        return self._fd is not None or self._path is not None

    def span(self, lo: float, hi: float) -> Progress:
        """Map the next sub-task's percentages to ``lo``..``hi`` of the overall run."""
        self.lo, self.hi = lo, hi
        return self

    def report(self, *, force: bool = False, percent: float | None = None, **fields: object) -> None:
        """Send one update (``percent`` is the sub-task's 0-100, mapped through :meth:`span`)."""
        if not self.enabled:
            return
        line: dict[str, object] = {}
        if percent is not None:
            p = min(max(percent, 0.0), 100.0)
            line["percent"] = round(self.lo + (self.hi - self.lo) * p / 100.0, 2)
        line.update({k: v for k, v in fields.items() if v is not None})
        now = time.monotonic()
        if not force and now - self._last < self.MIN_INTERVAL:
            self._pending = line
            return
        self._pending = None
        self._last = now
        self._write(line)

    def flush(self) -> None:
        """Send the last throttled update, if one is waiting."""
        if self._pending is not None:
            line, self._pending = self._pending, None
            self._last = time.monotonic()
            self._write(line)

    def _write(self, line: dict[str, object]) -> None:
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        try:
            if self._fd is not None:
                os.write(self._fd, data)
            elif self._path is not None:
                with open(self._path, "wb", buffering=0) as f:
                    f.write(data)
        except OSError:  # progress must never fail the job
            self._fd = None
            self._path = None


@dataclass
class FfmpegRun:
    """A finished ffmpeg run: its collected stderr."""

    stderr: str


def _num(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip().rstrip("x")
    try:
        f = float(value)
    except ValueError:
        return None
    return f if f == f and f >= 0 else None  # drop NaN and negatives


def _read_stderr(stream: IO[bytes], sink: collections.deque[str]) -> None:
    for raw in stream:
        sink.append(raw.decode("utf-8", "replace").rstrip("\r\n"))


def run_ffmpeg(
    args: Sequence[str],
    *,
    what: str,
    progress: Progress,
    duration: float | None = None,
    message: str | None = None,
    loglevel: str = "warning",
) -> FfmpegRun:
    """Run ``ffmpeg <args>`` with progress reporting; raise :class:`FfmpegError` on a non-zero exit.

    ``duration`` (seconds of media the run processes) turns ffmpeg's ``out_time`` into a percentage.
    """
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", loglevel]
    argv += ["-progress", "pipe:1", "-nostats", *args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    lines: collections.deque[str] = collections.deque(maxlen=20000)
    reader = threading.Thread(target=_read_stderr, args=(proc.stderr, lines), daemon=True)
    reader.start()
    block: dict[str, str] = {}
    for raw in proc.stdout:
        key, _, value = raw.decode("utf-8", "replace").strip().partition("=")
        if key != "progress":
            block[key] = value
            continue
        _report_block(progress, block, duration, message, end=value == "end")
        block = {}
    rc = proc.wait()
    reader.join()
    stderr = "\n".join(lines)
    if rc != 0:
        raise FfmpegError(what, rc, stderr)
    progress.flush()
    return FfmpegRun(stderr)


def _report_block(
    progress: Progress, block: dict[str, str], duration: float | None, message: str | None, *, end: bool
) -> None:
    us = _num(block.get("out_time_us")) or _num(block.get("out_time_ms"))
    elapsed = us / 1e6 if us is not None else None
    speed = _num(block.get("speed"))
    percent: float | None = None
    eta: float | None = None
    if duration and duration > 0 and elapsed is not None:
        percent = 100.0 * elapsed / duration
        if speed:
            eta = round(max(duration - elapsed, 0.0) / speed, 2)
    if end:
        percent, eta = (100.0 if duration else None), 0.0
    progress.report(
        force=end,
        percent=percent,
        fps=_num(block.get("fps")),
        speed=speed,
        eta_seconds=eta,
        message=message,
    )


def run_capture(args: Sequence[str], *, what: str, check: bool = True) -> tuple[int, str, str]:
    """Run ``ffmpeg <args>`` without progress, capturing stdout and stderr (for probes and packet dumps)."""
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise FfmpegError(what, proc.returncode, err)
    return proc.returncode, out, err
