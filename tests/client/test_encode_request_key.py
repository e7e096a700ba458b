"""``cosmos encode`` sends the card's key as its request id unless told otherwise (no server: the
Optimus stub is replaced by one that records what the CLI sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cosmos.cli import encode as cli
from cosmos.client import encode_request_id
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.security.context import Context

pytestmark = pytest.mark.unit

sent: list[encode_service_pb2.SubmitEncodeRequest] = []


class FakeStub:
    def __init__(self, channel: Any) -> None:
        pass

    async def SubmitEncode(self, request: encode_service_pb2.SubmitEncodeRequest) -> Any:
        sent.append(request)
        done = encode_pb2.Encode(encode_id="enc-1", state=encode_pb2.ENCODE_STATE_SUCCEEDED)
        return encode_service_pb2.SubmitEncodeResponse(encode=done)

    def WatchEncode(self, request: Any) -> AsyncIterator[Any]:
        async def replies() -> AsyncIterator[Any]:
            done = encode_pb2.Encode(encode_id="enc-1", state=encode_pb2.ENCODE_STATE_SUCCEEDED)
            yield encode_service_pb2.WatchEncodeResponse(encode=done)

        return replies()


class FakeChannel:
    async def __aenter__(self) -> FakeChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeContext(Context):
    def channel(self, service: str) -> Any:
        return FakeChannel()


@pytest.fixture(autouse=True)
def fake_optimus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode_service_pb2_grpc, "EncodeServiceStub", FakeStub)
    sent.clear()


async def submit(*argv: str) -> encode_service_pb2.SubmitEncodeRequest:
    args = cli.parser().parse_args(["/media/in.mp4", "--out", "/media/out", *argv])
    assert await cli.run_encode(args, Console(record=True), FakeContext(insecure=True)) == 0
    return sent[-1]


async def test_without_a_request_id_the_key_is_sha256_of_source_profiles_and_output() -> None:
    first = await submit("--profiles", "720p,360p")
    again = await submit("--profiles", "360p,720p")
    expected = encode_request_id(
        Path("/media/in.mp4").as_uri(),
        ["720p", "360p"],
        output_uri=Path("/media/out").as_uri(),
        quality="sampled",
    )
    assert first.request_id == again.request_id == expected
    assert (await submit("--profiles", "720p")).request_id != expected
    assert (await submit("--profiles", "720p,360p", "--quality", "off")).request_id != expected


async def test_an_explicit_request_id_wins_and_force_sends_none() -> None:
    assert (await submit("--profiles", "360p", "--request-id", "mine")).request_id == "mine"
    forced = await submit("--profiles", "360p", "--force")
    assert forced.request_id == "" and forced.force  # Optimus picks a fresh id: a new encode
    retried = await submit("--profiles", "360p", "--retry")
    assert retried.request_id.startswith("encode-") and retried.retry  # resumes the same encode


async def test_image_is_sent_and_is_part_of_the_key() -> None:
    plain = await submit("--profiles", "360p")
    boxed = await submit("--profiles", "360p", "--image", "localhost/cosmos-worker:1")
    assert plain.image == "" and boxed.image == "localhost/cosmos-worker:1"
    assert boxed.request_id != plain.request_id
    # Encodes without an image keep the key they always had.
    assert plain.request_id == encode_request_id(
        Path("/media/in.mp4").as_uri(), ["360p"], output_uri=Path("/media/out").as_uri(), quality="sampled"
    )
