"""What a running job reports, parsed: progress (ffmpeg ``-progress`` or the progress channel) and log
lines, with its secrets masked.

Everything here is bounded, because a job is untrusted input: lines are truncated, messages cut, and
a malformed progress line is counted and ignored. How often the parsed values are delivered is
:mod:`cosmos.stratum.agent.rate_limits`' business.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from google.protobuf import duration_pb2

from cosmos.common.v1 import progress_pb2
from cosmos.runtime import wellknown
from cosmos.stratum.v1 import job_pb2

MAX_LINE_BYTES = 4096
"""Longer output lines are cut to this many bytes (and marked)."""
TRUNCATED_MARK = " …[truncated]"


MAX_LINES_PER_BATCH = 1000
"""Lines of one log batch Stratum keeps (the agent sends a few hundred a second at most)."""


def bounded_lines(lines: Iterable[job_pb2.LogLine]) -> list[job_pb2.LogLine]:
    """``lines`` as Stratum stores them: each text cut to :data:`MAX_LINE_BYTES` (and marked), at most
    :data:`MAX_LINES_PER_BATCH`, whatever the sender (an old or modified agent) did."""
    kept: list[job_pb2.LogLine] = []
    for line in itertools.islice(lines, MAX_LINES_PER_BATCH):
        data = line.text.encode()
        if len(data) > MAX_LINE_BYTES:
            line = job_pb2.LogLine(stream=line.stream, time=line.time)
            line.text = Line(data[:MAX_LINE_BYTES], truncated=True).text()
        kept.append(line)
    return kept


def duration(seconds: float) -> duration_pb2.Duration:
    """A protobuf Duration of ``seconds`` (nanosecond precision)."""
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


# --------------------------------------------------------------------------------------------- lines


@dataclass(frozen=True)
class Line:
    """One line of output: at most ``max_bytes`` of its bytes, without the newline."""

    data: bytes
    truncated: bool

    def text(self) -> str:
        """UTF-8 text (invalid bytes replaced), marked when it was cut."""
        text = self.data.decode("utf-8", errors="replace").rstrip("\r")
        return text + TRUNCATED_MARK if self.truncated else text


class LineSplitter:
    """Splits a byte stream into lines, keeping at most ``max_bytes`` of each.

    Unlike ``StreamReader.readline`` it never fails or buffers without bound on a huge line: the
    excess is discarded up to the next newline.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._overflow = False

    def feed(self, chunk: bytes) -> Iterator[Line]:
        """Lines completed by ``chunk``."""
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            yield self._take(chunk[start:end])
            start = end + 1
        rest = chunk[start:]
        room = self.max_bytes - len(self._buf)
        if len(rest) > room:
            self._overflow = True
            rest = rest[: max(room, 0)]
        self._buf += rest

    def close(self) -> Iterator[Line]:
        """The last line, when the stream did not end with a newline."""
        if self._buf or self._overflow:
            yield self._take(b"")

    def _take(self, tail: bytes) -> Line:
        room = self.max_bytes - len(self._buf)
        truncated = self._overflow or len(tail) > room
        data = bytes(self._buf) + tail[: max(room, 0)]
        self._buf.clear()
        self._overflow = False
        return Line(data, truncated)


# ------------------------------------------------------------------------------------------- secrets

SECRET_MASK = "***"


class SecretMask:
    """Replaces a job's secret values with ``***`` in text it reports (log lines, stderr tail, errors).

    A job may print its secrets, by mistake or not: what leaves the agent must not carry them. A value
    of several lines is masked line by line too, since output is reported a line at a time; the longest
    values are replaced first so that one secret containing another is masked whole.
    """

    def __init__(self, values: Iterable[str]) -> None:
        parts = {part for value in values for part in (value, *value.splitlines()) if part.strip()}
        self._values = sorted(parts, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, self._values))) if self._values else None

    def __call__(self, text: str) -> str:
        """``text`` with every secret value masked."""
        if self._pattern is None:
            return text
        return self._pattern.sub(SECRET_MASK, text)


# -------------------------------------------------------------------------------------------- ffmpeg

_CLOCK = re.compile(r"^(-?)(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


class FfmpegProgressParser:
    """Parses ``ffmpeg -progress`` output: ``key=value`` lines, each block ended by ``progress=...``.

    ``media_duration`` (seconds, 0 when unknown) turns the processed media time into percent and eta.
    """

    def __init__(self, media_duration: float = 0.0) -> None:
        self.media_duration = max(media_duration, 0.0)
        self._block: dict[str, str] = {}

    def feed(self, line: str) -> progress_pb2.Progress | None:
        """Consume one line; returns the block's progress when the line ends a block."""
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        key, value = key.strip(), value.strip()
        if key != "progress":
            self._block[key] = value
            return None
        block, self._block = self._block, {}
        return self.progress(block, ended=value == "end")

    def progress(self, block: dict[str, str], *, ended: bool = False) -> progress_pb2.Progress:
        """The Progress of one parsed block."""
        out = progress_pb2.Progress(update_time=wellknown.now())
        frames = _number(block.get("frame"))
        if frames is not None:
            out.frames = max(int(frames), 0)
        fps = _number(block.get("fps"))
        if fps is not None and fps > 0:
            out.fps = fps
        speed = _number(block.get("speed", "").rstrip("x"))
        if speed is not None and speed > 0:
            out.speed = speed
        media_time = _media_time(block)
        if media_time is not None:
            out.elapsed.CopyFrom(duration(media_time))
        if self.media_duration > 0:
            if ended:
                out.percent = 100.0
                out.eta.CopyFrom(duration(0))
            elif media_time is not None:
                out.percent = min(max(media_time / self.media_duration * 100.0, 0.0), 100.0)
                if out.speed > 0:
                    remaining = max(self.media_duration - media_time, 0.0)
                    out.eta.CopyFrom(duration(remaining / out.speed))
        return out


def _number(text: str | None) -> float | None:
    # ffmpeg writes "N/A" (and, for an empty output, sometimes nothing) before it knows a value.
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _media_time(block: dict[str, str]) -> float | None:
    """Processed media time in seconds; ffmpeg's ``out_time_ms`` is in microseconds too (a known quirk)."""
    for key in ("out_time_us", "out_time_ms"):
        micros = _number(block.get(key))
        if micros is not None:
            return max(micros / 1e6, 0.0)
    clock = _CLOCK.match(block.get("out_time", ""))
    if clock is None:
        return None
    sign, hours, minutes, seconds = clock.groups()
    if sign:
        return 0.0  # before the first frame ffmpeg prints a large negative time
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


# ------------------------------------------------------------------------------------------- channel

MAX_MESSAGE_CHARS = 1024


class ChannelParser:
    """Parses the progress channel: one JSON object per line, keys named like Progress fields.

    Each line updates the fields it names; the others keep their last value. Durations are seconds
    (``eta``/``eta_seconds``, ``elapsed``/``elapsed_seconds``). Unknown keys are ignored (newer
    programs, older agents); anything else unexpected makes the line malformed: it is ignored and
    counted in :attr:`malformed`.
    """

    _NUMBERS: ClassVar[tuple[str, ...]] = ("fps", "speed")
    _DURATIONS: ClassVar[dict[str, str]] = {
        "eta": "eta",
        "eta_seconds": "eta",
        "elapsed": "elapsed",
        "elapsed_seconds": "elapsed",
    }

    def __init__(self) -> None:
        self.current = progress_pb2.Progress()
        self.malformed = 0

    def feed(self, line: str) -> progress_pb2.Progress | None:
        """Consume one line; returns the updated progress, or None for a blank or malformed line."""
        if not line.strip():
            return None
        try:
            fields = self._parse(line)
        except (ValueError, TypeError):
            self.malformed += 1
            return None
        # Applied only once the whole line parsed: a malformed line changes nothing.
        for name, value in fields.items():
            if isinstance(value, duration_pb2.Duration):
                getattr(self.current, name).CopyFrom(value)
            else:
                setattr(self.current, name, value)
        self.current.update_time.CopyFrom(wellknown.now())
        out = progress_pb2.Progress()
        out.CopyFrom(self.current)
        return out

    def _parse(self, line: str) -> dict[str, float | int | str | duration_pb2.Duration]:
        obj = json.loads(line, parse_constant=_reject_constant)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        fields: dict[str, float | int | str | duration_pb2.Duration] = {}
        for key, value in obj.items():
            if key == "percent":
                fields[key] = min(_non_negative(value), 100.0)
            elif key in self._NUMBERS:
                fields[key] = _non_negative(value)
            elif key == "frames":
                fields[key] = int(_non_negative(value))
            elif key in self._DURATIONS:
                fields[self._DURATIONS[key]] = duration(_non_negative(value))
            elif key == "message":
                if not isinstance(value, str):
                    raise TypeError("message must be a string")
                fields[key] = value[:MAX_MESSAGE_CHARS]
        return fields


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _non_negative(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a finite number >= 0")
    return float(value)
