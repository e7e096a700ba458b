"""The encode-ladder workflow's state fits Plato's record (one NATS message) for the longest source.

Plato's state machine runs the shipped definition in-process, every step answered with an output
shaped like the media tool's (field for field, paths as long as the embedded stack's), from the start
until the encode completes; the record's largest size on the way is what a save must fit.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from cosmos.optimus import api
from cosmos.optimus import profiles as catalog
from cosmos.optimus.media.chunks import chunk_length
from cosmos.plato.engine import machine
from cosmos.plato.engine.evaluator import RECORD_HEADROOM
from cosmos.plato.language import parser
from cosmos.plato.v1 import engine_pb2, workflow_pb2

NATS_MAX_PAYLOAD = 1024 * 1024  # the server's default, and what deploy/ runs with
ENCODE_ID = "enc-" + "0123456789abcdef01234567"
WORK = f"/var/lib/cosmos/data/work/{ENCODE_ID}"
SS = workflow_pb2.StepState


def job(rng: random.Random) -> dict[str, Any]:
    return {
        "agent_id": "gpu-node-017.example.internal",
        "attempt": 1,
        "exit_code": 0,
        "wall_seconds": rng.random() * 100,
        "cpu_seconds": rng.random() * 100,
        "outputs": [],
        "job_id": f"job-{rng.getrandbits(128):032x}",
    }


def rendition(profile: str, rng: random.Random, **extra: Any) -> dict[str, Any]:
    return {
        "profile": profile,
        "path": f"{WORK}/encoded/{profile}/chunk_00000.mp4",
        "bytes": rng.randrange(10**9),
        "bitrate": rng.randrange(10**7),
        "duration": rng.random() * 100,
        "vmaf": rng.random() * 100,
        "psnr": rng.random() * 60,
        "psnr_y": rng.random() * 60,
        "quality_frames": 72,
        "quality_chunks": 1,
        **extra,
    }


def output(
    step: workflow_pb2.StepExecution, chunks: int, names: list[str], rng: random.Random
) -> dict[str, Any]:
    """An output shaped like the media tool's result for ``step`` (plus the runner's ``job``)."""
    duration = 7200.0
    seconds = duration / chunks
    name = step.step_name
    if name == "probe":
        return {
            "path": "/media/in/title.mov",
            "duration": duration,
            "container_duration": duration,
            "width": 3840,
            "height": 2160,
            "fps": 23.976,
            "frames": 172627,
            "bitrate": 45_000_000,
            "video_codec": "prores",
            "has_audio": True,
            "audio_codec": "pcm_s24le",
            "job": job(rng),
        }
    if name == "split":
        return {
            "chunks": [
                {
                    "index": i,
                    "path": f"{WORK}/chunks/chunk_{i:05d}.mp4",
                    "start": i * seconds,
                    "duration": seconds,
                    "frames": round(seconds * 23.976),
                }
                for i in range(chunks)
            ],
            "count": chunks,
            "duration": duration,
            "source": "/media/in/title.mov",
            "chunk_seconds": seconds,
            "fps": 23.976,
            "width": 3840,
            "height": 2160,
            "job": job(rng),
        }
    if name == "audio":
        return {
            "path": f"{WORK}/audio/audio.mp4",
            "source": "/media/in/title.mov",
            "bytes": 115_200_000,
            "bitrate": 128000,
            "codec": "aac",
            "duration": duration,
            "job": job(rng),
        }
    if name == "encode":
        group = step.fanout_vars.fields["group"].struct_value
        members = [v.string_value for v in group.fields["profiles"].list_value.values]
        index = int(step.fanout_vars.fields["chunk"].struct_value.fields["index"].number_value)
        return {
            "quality": "sampled",
            "chunk": f"{WORK}/chunks/chunk_{index:05d}.mp4",
            "index": index,
            "duration": seconds,
            "renditions": [rendition(p, rng, index=index) for p in members],
            "job": job(rng),
        }
    if name == "assemble":
        profile = step.fanout_vars.fields["profile"].struct_value.fields["name"].string_value
        return {
            **rendition(profile, rng),
            "path": f"{WORK}/renditions/{profile}.mp4",
            "chunks": chunks,
            "codec": "h264",
            "width": 3840,
            "height": 2160,
            "fps": 23.976,
            "frames": 172627,
            "job": job(rng),
        }
    if name == "package":
        return {
            "hls_master": f"{WORK}/package/master.m3u8",
            "dir": f"{WORK}/package",
            "files": 4000,
            "renditions": [
                {
                    **rendition(p, rng),
                    "playlist": f"{WORK}/package/media_{i}.m3u8",
                    "codecs": "avc1.640033",
                    "representation": str(i),
                    "width": 3840,
                    "height": 2160,
                }
                for i, p in enumerate(names)
            ],
            "job": job(rng),
        }
    if name == "publish":
        return {
            "uri": "file:///media/out/title",
            "hls_master_uri": "file:///media/out/title/master.m3u8",
            "dash_mpd_uri": "file:///media/out/title/manifest.mpd",
            "bytes": 10**10,
            "files": 4000,
            "job": job(rng),
        }
    if name in ("cleanup", "cleanup-after-failure"):
        return {"removed": WORK, "bytes": 10**10, "files": 4000, "left": 0, "job": job(rng)}
    raise AssertionError(f"no output shaped for step {name!r}: the workflow has a new job step")


def run_ladder(chunks: int, names: list[str]) -> tuple[int, workflow_pb2.Workflow]:
    """Run the encode-ladder definition to its end; the largest record on the way, and the workflow."""
    definition = parser.parse(api.DEFINITION_FILE.read_text())
    ladder, _ = catalog.ladder_input(tuple(names))
    start = engine_pb2.StartInput(definition_id=api.DEFINITION_ID, definition_version=1, request_id="r")
    start.input.update(
        {
            "source": "/media/in/title.mov",
            "source_uri": "file:///media/in/title.mov",
            "output": "file:///media/out/title",
            "overwrite": False,
            "output_area": "/media/out",
            "quality": "sampled",
            "ladder": "",
            "priority": 0,
            "work_dir": WORK,
            "work_area": WORK.rsplit("/", 1)[0],
            "chunk_seconds": api.CHUNK_SECONDS,
            "max_chunks": api.MAX_CHUNKS,
            "request_id": "a-client-chosen-request-id-0001",
            "content_key": "f" * 64,
            **ladder,
        }
    )
    rng = random.Random(7)
    record = machine.new_record(ENCODE_ID, start, datetime.now(UTC))
    largest = 0
    queue = [engine_pb2.EngineInput(workflow_id=ENCODE_ID, start=start)]
    while queue:
        # One input per transition, as results arrive one at a time.
        engine = machine.Machine(record, definition, datetime.now(UTC), rng.random)
        engine.begin()
        engine.apply(queue.pop(0))
        largest = max(largest, record.ByteSize())
        for step in record.workflow.steps:
            if step.state == SS.STEP_STATE_SCHEDULED:
                step.state = SS.STEP_STATE_RUNNING  # as its first heartbeat would; answered once
                result = engine_pb2.StepResultInput(step_id=step.step_id, attempt=step.attempt, success=True)
                result.output.update(output(step, chunks, names, rng))
                queue.append(engine_pb2.EngineInput(workflow_id=ENCODE_ID, result=result))
    return largest, record.workflow


def test_long_sources_and_wide_ladders_get_fewer_longer_chunks() -> None:
    assert chunk_length(60, 4, 100) == 4
    assert chunk_length(400, 4, 100) == 4  # exactly 100 chunks of 4 s
    assert chunk_length(7200, 4, 100) == 72  # 2 h: 100 chunks of 72 s (whole 2 s GOPs)
    assert chunk_length(7201, 4, 100) == 74
    assert chunk_length(7200, 4, 0) == 4  # no limit
    assert [api.max_chunks(n) for n in (1, 3, 4, 6, 16)] == [100, 100, 100, 66, 25]


LADDERS = {
    "default": list(catalog.LADDERS["default"]),
    "full and NVENC": [*catalog.LADDERS["full"], "1080p-nvenc", "720p-nvenc"],
    "the whole catalog": catalog.names(),
}


@pytest.mark.parametrize("names", LADDERS.values(), ids=LADDERS.keys())
def test_any_ladder_at_its_most_chunks_fits_one_nats_message(names: list[str]) -> None:
    chunks = api.max_chunks(len(names))
    largest, workflow = run_ladder(chunks, names)
    assert workflow.state == workflow_pb2.WORKFLOW_STATE_COMPLETED, workflow.failure_reason
    groups = len(catalog.groups([catalog.get(n) for n in names]))
    assert len([s for s in workflow.steps if s.step_name == "encode"]) == chunks * groups
    # Under half of what a record may hold, so outputs somewhat larger than these still fit.
    assert largest < (NATS_MAX_PAYLOAD - RECORD_HEADROOM) / 2, largest


def test_without_the_limits_a_long_title_would_not_fit() -> None:
    # What the limits are for: 4 s chunks of a 34 min title (500) into the default ladder (a 2 h
    # title would have 1,800).
    largest, _ = run_ladder(500, LADDERS["default"])
    assert largest > NATS_MAX_PAYLOAD
