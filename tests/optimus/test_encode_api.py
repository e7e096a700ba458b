"""The encode API on the whole embedded stack: validation, de-duplication, a real ladder, failures."""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psutil
import pytest
from google.protobuf import json_format

from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime import rpc_errors
from cosmos.runtime.config import free_port
from cosmos.stack.embedded import EmbeddedStack, StackConfig

ES = encode_pb2.EncodeState
TERMINAL = (ES.ENCODE_STATE_SUCCEEDED, ES.ENCODE_STATE_FAILED, ES.ENCODE_STATE_CANCELLED)


def media(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "cosmos.optimus.media", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    line = [x for x in done.stdout.splitlines() if x.startswith("COSMOS_RESULT ")][-1]
    result: dict[str, object] = json.loads(line.removeprefix("COSMOS_RESULT "))
    return result


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "source.mp4"
    media("make-test-clip", "--out", str(path), "--seconds", "6", "--size", "640x360", "--fps", "24")
    return path


def tenant_files(stack: EmbeddedStack) -> Path:
    """The default tenant's directory of the stack (its jobs own it): outputs go there."""
    directory = stack.config.storage_dir / "default"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def files(stack: EmbeddedStack) -> Path:
    return tenant_files(stack)


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """The local admin's storage area of the stack (its default root, tenant default)."""
    path = tmp_path / "data" / "storage" / "default"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def clip(clip_file: Path, area: Path) -> Path:
    """The clip inside the storage area (the services accept files there only)."""
    path = area / "source.mp4"
    os.link(clip_file, path)
    return path


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    cfg = StackConfig(
        optimus_port=free_port(), plato_port=free_port(), stratum_port=free_port(), nats_port=free_port(),
        data_dir=tmp_path / "data", token_port_offset=0,
    )  # fmt: skip
    async with EmbeddedStack(cfg) as running:
        yield running


@pytest.fixture
async def encodes(stack: EmbeddedStack) -> AsyncIterator[encode_service_pb2_grpc.EncodeServiceAsyncStub]:
    async with stack.context().channel("optimus") as channel:
        yield encode_service_pb2_grpc.EncodeServiceStub(channel)


async def wait(
    stub: encode_service_pb2_grpc.EncodeServiceAsyncStub, encode_id: str, timeout: float = 240
) -> encode_pb2.Encode:
    async def follow() -> encode_pb2.Encode:
        last = encode_pb2.Encode()
        async for reply in stub.WatchEncode(encode_service_pb2.WatchEncodeRequest(encode_id=encode_id)):
            last = reply.encode
        return last

    return await asyncio.wait_for(follow(), timeout)


async def test_bad_submits_name_the_field(
    encodes: encode_service_pb2_grpc.EncodeServiceAsyncStub, clip: Path, area: Path
) -> None:
    good = {"source_uri": clip.as_uri(), "profiles": ["360p"], "output_uri": (area / "out").as_uri()}
    read_only = area / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    bad, pre = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
    missing = (area / "missing.mp4").as_uri()
    cases: list[tuple[dict[str, object], grpc.StatusCode, str, str]] = [
        ({"source_uri": missing}, bad, "source_uri", "ERROR_REASON_SOURCE_UNREADABLE"),
        ({"profiles": ["4320p"]}, bad, "profiles[0]", "ERROR_REASON_UNKNOWN_PROFILE"),
        ({"output_uri": "s3://bucket/out"}, bad, "output_uri", "ERROR_REASON_OUTSIDE_STORAGE_ROOT"),
        ({"source_uri": "ftp://host/x.mp4"}, bad, "source_uri", "ERROR_REASON_OUTSIDE_STORAGE_ROOT"),
        ({"output_uri": (clip / "out").as_uri()}, pre, "output_uri", "ERROR_REASON_OUTPUT_UNWRITABLE"),
        ({"quality": 9}, bad, "quality", "ERROR_REASON_INVALID_ARGUMENT"),  # not a QualityMode
    ]
    if os.geteuid() != 0:  # root writes anywhere; the case only bites for other users
        cases.append(
            ({"output_uri": (read_only / "x").as_uri()}, pre, "output_uri", "ERROR_REASON_OUTPUT_UNWRITABLE")
        )
    for change, code, field, reason in cases:
        request = encode_service_pb2.SubmitEncodeRequest(**{**good, **change})  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await encodes.SubmitEncode(request)
        assert caught.value.code() == code, change
        info, violations = rpc_errors.details_of(caught.value)
        assert info is not None and info.reason == reason, change
        assert field in [v.field for v in violations], change


async def test_concurrent_submits_each_get_their_own_answer(
    encodes: encode_service_pb2_grpc.EncodeServiceAsyncStub, clip: Path, area: Path
) -> None:
    # Concurrent submits share StartWorkflows calls to Plato; each still gets its own answer.
    def submit(request_id: str, profiles: list[str]) -> encode_service_pb2.SubmitEncodeRequest:
        return encode_service_pb2.SubmitEncodeRequest(
            request_id=request_id, source_uri=clip.as_uri(), profiles=profiles,
            output_uri=(area / request_id).as_uri(), quality=encode_pb2.QUALITY_MODE_OFF,
        )  # fmt: skip

    first = (await encodes.SubmitEncode(submit("c-0", ["360p"]))).encode
    requests = [submit(f"c-{i}", ["360p"]) for i in range(1, 11)]
    requests += [submit("c-0", ["360p"]), submit("c-0", ["540p"])]  # a retry; a reused request_id
    replies = await asyncio.gather(*(encodes.SubmitEncode(r) for r in requests), return_exceptions=True)
    started = replies[:10]
    assert all(isinstance(r, encode_service_pb2.SubmitEncodeResponse) for r in started), started
    ids = {r.encode.encode_id for r in started if isinstance(r, encode_service_pb2.SubmitEncodeResponse)}
    assert len(ids) == 10 and first.encode_id not in ids
    retry, reused = replies[10:]
    assert isinstance(retry, encode_service_pb2.SubmitEncodeResponse)
    assert retry.deduplicated and retry.encode.encode_id == first.encode_id
    assert isinstance(reused, grpc.aio.AioRpcError) and reused.code() == grpc.StatusCode.ALREADY_EXISTS
    info, _ = rpc_errors.details_of(reused)
    assert info is not None and info.reason == "ERROR_REASON_REQUEST_ID_REUSED"
    assert info.metadata["encode_id"] == first.encode_id
    for encode_id in [*ids, first.encode_id]:
        await encodes.CancelEncode(
            encode_service_pb2.CancelEncodeRequest(request_id=f"stop-{encode_id}", encode_id=encode_id)
        )


async def test_a_ladder_encodes_dedupes_and_publishes_verified_manifests(
    encodes: encode_service_pb2_grpc.EncodeServiceAsyncStub, clip: Path, area: Path
) -> None:
    out = area / "ladder"
    request = encode_service_pb2.SubmitEncodeRequest(
        request_id="ladder-1", source_uri=clip.as_uri(), profiles=["360p", "540p"], output_uri=out.as_uri()
    )
    first = (await encodes.SubmitEncode(request)).encode
    again = await encodes.SubmitEncode(request)
    assert again.deduplicated and again.encode.encode_id == first.encode_id
    done = await wait(encodes, first.encode_id)
    assert done.state == ES.ENCODE_STATE_SUCCEEDED, (done.failed_step, done.error_message)
    assert [r.profile for r in done.renditions] == ["360p", "540p"]
    assert done.quality == encode_pb2.QUALITY_MODE_SAMPLED  # the default
    for rendition in done.renditions:
        assert rendition.state == ES.ENCODE_STATE_SUCCEEDED
        assert rendition.bitrate_bps > 0 and rendition.size_bytes > 0
        assert 30 < rendition.vmaf <= 100 and rendition.psnr > 20
        # 6 s at 24 fps sampled every 25th frame (the title's frames 0, 25, ... 125).
        assert rendition.quality_frames == 6
    assert done.manifests.hls_master_uri == (out / "master.m3u8").as_uri()
    assert done.progress.percent == 100
    verified = media(
        "verify",
        "--hls",
        str(out / "master.m3u8"),
        "--mpd",
        str(out / "manifest.mpd"),
        "--expect-duration",
        "6",
    )
    assert verified["ok"] is True and verified["renditions"] == 2
    # Without a request_id, the content key (source, profiles, output) de-duplicates; force starts anew.
    by_content = encode_service_pb2.SubmitEncodeRequest(
        source_uri=clip.as_uri(), profiles=["360p"], output_uri=out.as_uri()
    )
    one = (await encodes.SubmitEncode(by_content)).encode.encode_id
    assert (await encodes.SubmitEncode(by_content)).encode.encode_id == one
    by_content.force = True
    assert (await encodes.SubmitEncode(by_content)).encode.encode_id != one


@pytest.fixture(scope="module")
def longer_clip(clips: Path) -> Path:
    # Long enough that chunk encodes are still running when the test looks for one.
    path = clips / "longer.mp4"
    media("make-test-clip", "--out", str(path), "--seconds", "16", "--size", "1280x720", "--fps", "24")
    return path


def ffmpeg_processes(fragment: str, step: str = "") -> list[psutil.Process]:
    """ffmpeg processes whose command line mentions ``fragment`` (run by the media tool's ``step``)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if not cmdline or "ffmpeg" not in os.path.basename(cmdline[0]):
                continue
            if not any(fragment in part for part in cmdline):
                continue
            parent = proc.parent()
            if step and (parent is None or step not in parent.cmdline()):
                continue
        except psutil.Error:
            continue
        found.append(proc)
    return found


async def test_a_killed_chunk_retries_alone_and_cancel_leaves_no_ffmpeg(
    stack: EmbeddedStack, encodes: encode_service_pb2_grpc.EncodeServiceAsyncStub, clip: Path, area: Path
) -> None:
    request = encode_service_pb2.SubmitEncodeRequest(
        request_id=uuid.uuid4().hex,
        source_uri=clip.as_uri(),
        profiles=["360p"],
        output_uri=(area / "k").as_uri(),
    )
    encode = (await encodes.SubmitEncode(request)).encode
    victim: list[psutil.Process] = []
    for _ in range(600):
        victim = ffmpeg_processes(f"{encode.encode_id}/encoded/360p/", step="encode")
        if victim:
            break
        await asyncio.sleep(0.05)
    assert victim, "a chunk encode started"
    victim[0].send_signal(signal.SIGKILL)
    done = await wait(encodes, encode.encode_id)
    assert done.state == ES.ENCODE_STATE_SUCCEEDED, done.error_message
    async with stack.context().channel("plato") as channel:
        workflow = (
            await workflow_service_pb2_grpc.WorkflowServiceStub(channel).GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(workflow_id=encode.encode_id)
            )
        ).workflow
    attempts = sorted(s.attempt for s in workflow.steps if s.step_name == "encode")
    assert attempts[-1] == 2 and attempts[:-1] == [1] * (len(attempts) - 1)  # only the killed chunk re-ran

    second = encode_service_pb2.SubmitEncodeRequest(
        request_id=uuid.uuid4().hex,
        source_uri=clip.as_uri(),
        profiles=["540p", "360p"],
        output_uri=(area / "c").as_uri(),
    )
    running = (await encodes.SubmitEncode(second)).encode
    for _ in range(600):
        if ffmpeg_processes(running.encode_id):
            break
        await asyncio.sleep(0.05)
    await encodes.CancelEncode(
        encode_service_pb2.CancelEncodeRequest(request_id="stop", encode_id=running.encode_id, reason="test")
    )
    cancelled = await wait(encodes, running.encode_id)
    assert cancelled.state == ES.ENCODE_STATE_CANCELLED
    for _ in range(100):
        if not ffmpeg_processes(running.encode_id):
            break
        await asyncio.sleep(0.1)
    assert ffmpeg_processes(running.encode_id) == []


def grpcurl(stack: EmbeddedStack, *args: str) -> subprocess.CompletedProcess[str]:
    binary = str(Path(sys.executable).parent / "grpcurl")
    ctx = stack.context()
    tls = ["-cacert", ctx.ca, "-cert", ctx.cert, "-key", ctx.key]
    return subprocess.run([binary, *tls, *args], capture_output=True, text=True, timeout=180)


async def test_grpcurl_submits_an_encode_with_json_and_watches_it(
    stack: EmbeddedStack, clip: Path, area: Path
) -> None:
    target = str(stack.config.address(stack.config.optimus_port))
    body = {
        "request_id": "curl-1",
        "source_uri": clip.as_uri(),
        "profiles": ["360p"],
        "output_uri": (area / "g").as_uri(),
    }
    submitted = await asyncio.to_thread(
        grpcurl, stack, "-d", json.dumps(body), target, "cosmos.optimus.v1.EncodeService/SubmitEncode"
    )
    assert submitted.returncode == 0, submitted.stderr
    encode_id = json.loads(submitted.stdout)["encode"]["encode_id"]
    watched = await asyncio.to_thread(
        grpcurl,
        stack,
        "-d",
        json.dumps({"encode_id": encode_id}),
        target,
        "cosmos.optimus.v1.EncodeService/WatchEncode",
    )
    assert watched.returncode == 0, watched.stderr
    snapshots = [json.loads(chunk) for chunk in re.split(r"(?<=\n})\n(?={)", watched.stdout.strip())]
    assert len(snapshots) >= 2
    assert snapshots[-1]["encode"]["state"] == "ENCODE_STATE_SUCCEEDED"
    assert snapshots[-1]["encode"]["manifests"]["hls_master_uri"].endswith("master.m3u8")


async def test_nvenc_profiles_get_a_gpu_and_fail_clearly_without_nvenc(
    clip: Path, area: Path, tmp_path: Path
) -> None:
    # The local agent declares one T4: the NVENC group's chunk jobs must be placed on it with that GPU
    # (CUDA_VISIBLE_DEVICES='0'), next to the software group's jobs. Without a usable NVENC encoder
    # here they fail after their retries and the encode names the step and the cause.
    cfg = StackConfig(
        optimus_port=free_port(), plato_port=free_port(), stratum_port=free_port(), nats_port=free_port(),
        data_dir=tmp_path / "data", agent_gpus="1xT4", token_port_offset=0,
    )  # fmt: skip
    async with EmbeddedStack(cfg) as stack, stack.context().channel("optimus") as ch:
        stub = encode_service_pb2_grpc.EncodeServiceStub(ch)
        request = encode_service_pb2.SubmitEncodeRequest(
            request_id=uuid.uuid4().hex,
            source_uri=clip.as_uri(),
            profiles=["360p", "360p-nvenc"],
            output_uri=(area / "out").as_uri(),
            quality=encode_pb2.QUALITY_MODE_OFF,
        )
        encode = (await stub.SubmitEncode(request)).encode
        done = await wait(stub, encode.encode_id)
        async with stack.context().channel("plato") as pch:
            workflow = (
                await workflow_service_pb2_grpc.WorkflowServiceStub(pch).GetWorkflow(
                    workflow_service_pb2.GetWorkflowRequest(workflow_id=encode.encode_id)
                )
            ).workflow
    groups = {
        s.step_id: json_format.MessageToDict(s.fanout_vars)["group"]["name"]
        for s in workflow.steps
        if s.step_name == "encode"
    }
    assert set(groups.values()) == {"cpu", "gpu"}
    if done.state == ES.ENCODE_STATE_SUCCEEDED:  # a machine with a real NVENC-capable GPU 0
        assert [r.state for r in done.renditions] == [ES.ENCODE_STATE_SUCCEEDED] * 2
        return
    assert done.state == ES.ENCODE_STATE_FAILED
    assert groups[done.failed_step] == "gpu", done.failed_step
    assert "needs an NVIDIA GPU with NVENC; CUDA_VISIBLE_DEVICES='0'" in done.error_message
    # The software chunks were not held back by the failing GPU ones.
    cpu_states = {s.state for s in workflow.steps if groups.get(s.step_id) == "cpu"}
    assert cpu_states == {workflow_pb2.STEP_STATE_COMPLETED}


async def test_cli_encode_puts_a_local_source_and_a_relative_out_in_the_storage_area(
    stack: EmbeddedStack, clip_file: Path, area: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Right after `cosmos up`: the source lies outside the storage root, --out is relative.
    from rich.console import Console

    from cosmos.cli import encode as cli

    console = Console(record=True, width=300)
    argv = [str(clip_file), "--profiles", "360p", "--out", "ladder", "--quality", "off"]
    assert await cli.run_encode(cli.parser().parse_args(argv), console, stack.context()) == 0
    printed = capsys.readouterr().err  # notes go to stderr: stdout is the encode alone
    upload = area / "uploads" / clip_file.name
    assert f"copied {clip_file} into your storage area: {upload}" in printed, printed
    assert filecmp.cmp(upload, clip_file, shallow=False)
    published = area / "ladder"
    assert (published / "master.m3u8").is_file() and (published / ".cosmos-publish.json").is_file()
    # A new encode to the same place fails at publishing without --overwrite and leaves the ladder;
    # with --overwrite it replaces it.
    first = (published / "master.m3u8").stat().st_mtime_ns
    assert await cli.run_encode(cli.parser().parse_args([*argv, "--force"]), console, stack.context()) != 0
    assert (published / "master.m3u8").stat().st_mtime_ns == first
    again = cli.parser().parse_args([*argv, "--force", "--overwrite"])
    assert await cli.run_encode(again, console, stack.context()) == 0
    assert (published / "master.m3u8").stat().st_mtime_ns != first
