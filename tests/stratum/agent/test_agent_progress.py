"""Progress and log parsing of the agent's job runner: ffmpeg blocks, the progress channel, line
splitting and the rate limits, on captured text (no processes)."""

from __future__ import annotations

import asyncio
import time

import pytest

from cosmos.common.v1 import progress_pb2
from cosmos.stratum.agent.progress import (
    TRUNCATED_MARK,
    ChannelParser,
    FfmpegProgressParser,
    LineSplitter,
)
from cosmos.stratum.agent.rate_limits import LogBatcher, ProgressThrottle
from cosmos.stratum.v1 import job_pb2

pytestmark = pytest.mark.unit

# Captured from `ffmpeg -progress pipe:1 -nostats` (n9.0.2) encoding a 6 s testsrc.
FIRST_BLOCK = """\
frame=0
fps=0.00
stream_0_0_q=0.0
bitrate=N/A
total_size=48
out_time_us=N/A
out_time_ms=N/A
out_time=N/A
dup_frames=0
drop_frames=0
speed=N/A
progress=continue
"""
MIDDLE_BLOCK = """\
frame=75
fps=49.87
stream_0_0_q=23.0
bitrate=   0.1kbits/s
total_size=48
out_time_us=3000000
out_time_ms=3000000
out_time=00:00:03.000000
dup_frames=0
drop_frames=0
speed=1.50x
progress=continue
"""
LAST_BLOCK = """\
frame=150
fps=54.84
stream_0_0_q=-1.0
bitrate= 155.0kbits/s
total_size=116243
out_time_us=6000000
out_time_ms=6000000
out_time=00:00:06.000000
dup_frames=0
drop_frames=0
speed=2.19x
progress=end
"""


def feed_all(parser: FfmpegProgressParser, text: str) -> list[progress_pb2.Progress]:
    return [p for line in text.splitlines() if (p := parser.feed(line)) is not None]


def seconds(d: object) -> float:
    from google.protobuf import duration_pb2

    assert isinstance(d, duration_pb2.Duration)
    return d.ToTimedelta().total_seconds()


def test_ffmpeg_blocks_become_progress_with_percent_and_eta() -> None:
    parser = FfmpegProgressParser(media_duration=6.0)
    first, middle, last = feed_all(parser, FIRST_BLOCK + MIDDLE_BLOCK + LAST_BLOCK)

    # Before the first frame everything is N/A: nothing known, nothing invented.
    assert first.percent == 0 and first.fps == 0 and first.speed == 0
    assert not first.HasField("eta") and not first.HasField("elapsed")

    assert middle.percent == pytest.approx(50.0)
    assert middle.frames == 75 and middle.fps == pytest.approx(49.87) and middle.speed == pytest.approx(1.5)
    assert seconds(middle.elapsed) == pytest.approx(3.0)
    # 3 s of media left at 1.5x realtime.
    assert seconds(middle.eta) == pytest.approx(2.0)
    assert middle.HasField("update_time")

    assert last.percent == 100.0 and last.frames == 150 and seconds(last.eta) == 0


def test_ffmpeg_parser_without_media_duration_reports_no_percent() -> None:
    (progress,) = feed_all(FfmpegProgressParser(), MIDDLE_BLOCK)
    assert progress.percent == 0 and not progress.HasField("eta")
    assert progress.frames == 75 and seconds(progress.elapsed) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # out_time_ms is microseconds as well (an old ffmpeg quirk kept for compatibility).
        (["out_time_ms=1500000"], 1.5),
        (["out_time=00:01:02.500000"], 62.5),
        # Before the first packet ffmpeg prints a huge negative time.
        (["out_time_us=-577014000000", "out_time=-577014:32:22.775808"], 0.0),
        (["out_time=-577014:32:22.775808"], 0.0),
    ],
)
def test_ffmpeg_media_time_variants(lines: list[str], expected: float) -> None:
    (progress,) = feed_all(FfmpegProgressParser(120.0), "\n".join([*lines, "progress=continue"]))
    assert seconds(progress.elapsed) == pytest.approx(expected)


def test_ffmpeg_percent_is_clamped_and_noise_ignored() -> None:
    parser = FfmpegProgressParser(media_duration=2.0)
    text = "garbage without equals\nspeed=N/A\nout_time_us=3000000\nprogress=continue\n"
    (progress,) = feed_all(parser, text)
    assert progress.percent == 100.0 and progress.speed == 0


def test_channel_lines_update_fields_and_malformed_lines_are_counted() -> None:
    parser = ChannelParser()
    first = parser.feed('{"percent": 42.5, "message": "pass 1", "fps": 30, "eta_seconds": 12}')
    assert first is not None
    assert first.percent == 42.5 and first.message == "pass 1" and first.fps == 30
    assert seconds(first.eta) == 12

    # A later line updates only what it names; unknown keys are ignored.
    second = parser.feed('{"percent": 0, "frames": 900, "elapsed": 36.5, "future_key": [1]}')
    assert second is not None
    assert second.percent == 0 and second.message == "pass 1" and second.frames == 900
    assert seconds(second.elapsed) == 36.5

    malformed = [
        "not json",
        "[1, 2]",
        '{"percent": "half"}',
        '{"percent": NaN}',
        '{"percent": true}',
        '{"fps": -1}',
        '{"message": 5}',
        '{"percent": 50',
    ]
    for line in malformed:
        assert parser.feed(line) is None, line
    assert parser.malformed == len(malformed)
    # Blank lines are neither progress nor errors; a malformed line changed nothing.
    assert parser.feed("   ") is None and parser.malformed == len(malformed)
    assert parser.current.percent == 0

    clamped = parser.feed('{"percent": 250}')
    assert clamped is not None and clamped.percent == 100


def test_line_splitter_truncates_long_lines_and_keeps_going() -> None:
    splitter = LineSplitter(max_bytes=8)
    lines = list(splitter.feed(b"short\nabcdefghijkl"))
    lines += list(splitter.feed(b"mnop\nnext\r\npartial"))
    lines += list(splitter.close())
    assert [line.text() for line in lines] == ["short", "abcdefgh" + TRUNCATED_MARK, "next", "partial"]
    assert list(splitter.close()) == []


def test_line_splitter_replaces_invalid_utf8() -> None:
    (line,) = LineSplitter().feed(b"caf\xc3\xa9 \xff\n")
    assert line.text() == "café \ufffd"


async def test_progress_throttle_rate_limits_and_always_delivers_the_last() -> None:
    seen: list[float] = []

    async def on_progress(progress: progress_pb2.Progress) -> None:
        seen.append(progress.percent)

    throttle = ProgressThrottle(on_progress, interval=0.2)
    began = time.monotonic()
    for percent in range(1, 101):
        throttle.update(progress_pb2.Progress(percent=percent))
        await asyncio.sleep(0.002)
    elapsed = time.monotonic() - began
    await throttle.close()
    # One per 0.2 s (plus the first and the final one), not a hundred; the final one is there.
    assert 2 <= len(seen) <= elapsed / 0.2 + 2, (seen, elapsed)
    assert seen[-1] == 100 and seen == sorted(seen)


async def test_log_batcher_bounds_lines_per_second_and_reports_drops() -> None:
    batches: list[list[job_pb2.LogLine]] = []

    async def on_logs(batch: list[job_pb2.LogLine]) -> None:
        batches.append(batch)

    batcher = LogBatcher(on_logs, max_lines_per_s=10, max_bytes_per_s=1 << 20, flush_interval=0.05)
    for i in range(25):
        batcher.add(job_pb2.LOG_STREAM_STDOUT, f"line {i}")
    await batcher.close()
    lines = [line for batch in batches for line in batch]
    assert [line.text for line in lines[:10]] == [f"line {i}" for i in range(10)]
    assert batcher.dropped == 15
    assert "15 log lines dropped" in lines[-1].text and lines[-1].stream == job_pb2.LOG_STREAM_STDERR
    assert all(line.HasField("time") for line in lines)


async def test_log_batcher_bounds_bytes_and_survives_a_failing_callback() -> None:
    calls = 0

    async def on_logs(batch: list[job_pb2.LogLine]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("stream down")

    batcher = LogBatcher(on_logs, max_lines_per_s=1000, max_bytes_per_s=100, flush_interval=0.01)
    for _ in range(5):
        batcher.add(job_pb2.LOG_STREAM_STDERR, "x" * 40)
    await asyncio.sleep(0.2)
    batcher.add(job_pb2.LOG_STREAM_STDERR, "over the budget of this second too")
    await batcher.close()
    assert batcher.dropped == 4  # 2 x 40 bytes fit in 100 bytes per second
    # The first batch failed; the batcher kept going and delivered the drop note after it.
    assert calls == 2
