"""The encode-ladder workflow of a long title: every write of its state stays small, without a chunk cap.

Plato's state machine runs the shipped definition in-process, every step answered with an output
shaped like the media tool's (field for field, paths as long as the embedded stack's), from the start
until the encode completes; the largest header and the largest step record on the way are what a
commit writes (docs/plato.md, "Workflow state").
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from cosmos.optimus import api
from cosmos.optimus import profiles as catalog
from cosmos.optimus.media.chunks import chunk_length
from cosmos.plato import limits
from cosmos.plato.engine import machine
from cosmos.plato.engine.state import WorkflowState
from cosmos.plato.language import parser
from cosmos.plato.v1 import engine_pb2, workflow_pb2

pytestmark = pytest.mark.unit

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


def run_ladder(chunks: int, names: list[str]) -> tuple[int, int, workflow_pb2.Workflow]:
    """Run the encode-ladder definition to its end: the largest header and the largest step record
    written on the way, and the workflow."""
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
    state = WorkflowState(machine.new_record(ENCODE_ID, start, datetime.now(UTC)))
    largest_header = largest_step = 0
    queue = [engine_pb2.EngineInput(workflow_id=ENCODE_ID, start=start)]
    scheduled: list[str] = []
    while queue:
        # One input per transition, as results arrive one at a time.
        engine = machine.Machine(state, definition, datetime.now(UTC), rng.random)
        engine.begin()
        engine.apply(queue.pop(0))
        header = engine_pb2.WorkflowRecord()
        header.CopyFrom(state.record)
        del header.outbox[:]  # a transition's messages travel on their own (or as one blob)
        largest_header = max(largest_header, header.ByteSize())
        for step_id in state.table.dirty:
            record = state.table.record(step_id)
            largest_step = max(largest_step, record.ByteSize())
            if record.step.state == SS.STEP_STATE_SCHEDULED:
                scheduled.append(step_id)
        state.table.dirty.clear()
        for step_id in scheduled:
            step = state.table.record(step_id).step
            step.state = SS.STEP_STATE_RUNNING  # as its first heartbeat would; answered once
            result = engine_pb2.StepResultInput(step_id=step.step_id, attempt=step.attempt, success=True)
            result.output.update(output(step, chunks, names, rng))
            queue.append(engine_pb2.EngineInput(workflow_id=ENCODE_ID, result=result))
        scheduled.clear()
    return largest_header, largest_step, state.workflow()


def test_a_two_hour_title_plans_720_chunks_of_10_s_without_a_cap() -> None:
    assert api.MAX_CHUNKS == 0
    assert chunk_length(7200, 10, api.MAX_CHUNKS) == 10  # 720 chunks: no cap lengthens them
    assert chunk_length(7200, 4, api.MAX_CHUNKS) == 4
    assert chunk_length(7200, 4, 100) == 72  # the media tool's option still works for whoever asks


LADDERS = {
    "default": list(catalog.LADDERS["default"]),
    "the whole catalog": catalog.names(),
}


@pytest.mark.parametrize("names", LADDERS.values(), ids=LADDERS.keys())
def test_a_720_chunk_encode_writes_small_records_all_the_way(names: list[str]) -> None:
    chunks = 720
    largest_header, largest_step, workflow = run_ladder(chunks, names)
    assert workflow.state == workflow_pb2.WORKFLOW_STATE_COMPLETED, workflow.failure_reason
    groups = len(catalog.groups([catalog.get(n) for n in names]))
    assert len([s for s in workflow.steps if s.step_name == "encode"]) == chunks * groups
    # The header does not grow with the chunks: far under one message, and under the inline limit of
    # a value would only be wrong if it carried the steps.
    assert largest_header < limits.INLINE_EFFECTS_BYTES, largest_header
    # Each step record is written on its own; only the split and assemble steps' outputs (one entry
    # per chunk) are large, and those go to the blob store past the inline limit.
    assert largest_step < limits.DEFAULT_MAX_VALUE_BYTES, largest_step
