"""Optimus's webhook, end to end: a real Optimus (and Plato, NATS) process, a real HTTPS client that
trusts the mesh CA, signed S3 event notifications; what it started is read back over gRPC."""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import security_harness

from cosmos.optimus import webhook
from cosmos.optimus.v1 import encode_service_pb2, encode_service_pb2_grpc
from cosmos.runtime.config import free_port

OLD_SECRET = "old-" + "a" * 40
NEW_SECRET = "new-" + "b" * 40


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    (root / "default" / "incoming").mkdir(parents=True)
    # Stands for the bucket mounted at <root>/default (no S3 here yet): the file only has to exist,
    # nothing runs it (there is no Stratum in this test).
    (root / "default" / "incoming" / "title 1.mp4").write_bytes(b"not really a video")
    return root


@pytest.fixture
def optimus(start_service: Callable[..., Any], nats_url: str, tmp_path: Path, storage: Path) -> Any:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "old").write_text(OLD_SECRET + "\n")
    (tmp_path / "secrets" / "new").write_text(NEW_SECRET + "\n")
    config = {
        "secret_files": ["secrets/old", "secrets/new"],  # relative to the config file
        "max_body_bytes": 64 * 1024,
        "rules": [
            {
                "name": "mounted",
                "bucket": "media",
                "prefix": "incoming/",
                "source": f"file://{storage}/default/{{key}}",
                "output": f"file://{storage}/default/encoded/{{stem}}",
                "profiles": ["360p"],
                "quality": "off",
                "tenant": "default",
                "identity": "media-webhook",
            },
            {
                "name": "s3",
                "bucket": "raw",
                "prefix": "",
                "output": "s3://raw/encoded/{stem}/",
                "tenant": "default",
                "identity": "raw-webhook",
            },
        ],
    }
    (tmp_path / "webhook.yaml").write_text(json.dumps(config))
    plato = start_service("plato", "--nats", nats_url)
    service = start_service(
        "optimus", "--plato", plato.target, "--storage-root", str(storage),
        "--work-root", str(tmp_path / "work"), "--webhook-listen", f"127.0.0.1:{free_port()}",
        "--webhook-config", str(tmp_path / "webhook.yaml"),
    )  # fmt: skip
    return service


def webhook_url(optimus: Any) -> str:
    argv = optimus.proc.args
    return f"https://{argv[argv.index('--webhook-listen') + 1]}{webhook.PATH}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # Trusts the mesh CA and checks the name: the webhook serves Optimus's own certificate.
    context = ssl.create_default_context(cafile=str(security_harness.pki_dir() / "ca.pem"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


def s3_event(
    key: str, *, bucket: str = "media", name: str = "ObjectCreated:Put", event_id: str = ""
) -> bytes:
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": name,
        "eventID": event_id or uuid.uuid4().hex,
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 18, "sequencer": "0055AED6DCD90281E5"},
        },
    }
    return json.dumps({"Records": [record]}).encode()


def headers(body: bytes, secret: str = NEW_SECRET, *, at: float | None = None) -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    return {
        webhook.TIMESTAMP_HEADER: stamp,
        webhook.SIGNATURE_HEADER: webhook.sign(secret.encode(), stamp, body),
        "Content-Type": "application/json",
    }


async def post(http: aiohttp.ClientSession, url: str, body: bytes, hdrs: dict[str, str]) -> tuple[int, Any]:
    async with http.post(url, data=body, headers=hdrs) as reply:
        return reply.status, await reply.json(content_type=None)


async def encodes(optimus: Any) -> list[Any]:
    async with security_harness.channel(optimus.target) as channel:
        stub = encode_service_pb2_grpc.EncodeServiceStub(channel)
        reply = await stub.ListEncodes(encode_service_pb2.ListEncodesRequest(page_size=100))
    return list(reply.encodes)


async def test_a_signed_event_starts_one_encode_and_a_redelivery_or_replay_none(
    optimus: Any, http: aiohttp.ClientSession, storage: Path
) -> None:
    url = webhook_url(optimus)
    # S3 sends keys form-encoded: "title 1.mp4" arrives as "title+1.mp4".
    body = s3_event("incoming/title+1.mp4", event_id="evt-1")
    status, answer = await post(http, url, body, headers(body))
    assert status == 202, answer
    [started] = answer["encodes"]
    source = f"file://{storage}/default/incoming/title 1.mp4"
    assert started["source_uri"] == source and started["deduplicated"] is False, started
    [encode] = await encodes(optimus)
    assert encode.encode_id == started["encode_id"] and encode.source_uri == source
    assert list(encode.profiles) == ["360p"]

    # The same request again (a replay within the window), the same event redelivered later with a
    # new signature, and the old secret (mid-rotation) all name the same encode: nothing new starts.
    for again in (headers(body), headers(body, at=time.time() + 2), headers(body, OLD_SECRET)):
        status, answer = await post(http, url, body, again)
        assert status == 202 and answer["encodes"][0]["encode_id"] == encode.encode_id, answer
        assert answer["encodes"][0]["deduplicated"] is True
    assert [e.encode_id for e in await encodes(optimus)] == [encode.encode_id]

    # Another object, other events, other buckets and prefixes: one new encode for the new object.
    other = s3_event("incoming/title+1.mp4", event_id="evt-2")  # a second upload of the same key
    status, answer = await post(http, url, other, headers(other))
    assert status == 202 and answer["encodes"][0]["encode_id"] != encode.encode_id
    for ignored in (
        s3_event("incoming/x.mp4", name="ObjectRemoved:Delete"),
        s3_event("elsewhere/x.mp4"),
        s3_event("incoming/x.mp4", bucket="someone-else"),
    ):
        status, answer = await post(http, url, ignored, headers(ignored))
        assert status == 202 and answer == {"encodes": [], "ignored": 1}, answer
    assert len(await encodes(optimus)) == 2
    # Each start is audited as the rule's identity and tenant (never anything the body named).
    audit = '"identity": "user/media-webhook", "tenant": "default", "via": "webhook", '
    assert (
        f'{audit}"method": "/cosmos.optimus.v1.EncodeService/SubmitEncode", "resource": "{encode.encode_id}"'
        in (optimus.output())
    )


async def test_bad_signatures_stale_timestamps_and_big_bodies_are_refused(
    optimus: Any, http: aiohttp.ClientSession
) -> None:
    url = webhook_url(optimus)
    body = s3_event("incoming/title+1.mp4")
    unsigned = {"Content-Type": "application/json"}
    wrong_secret = headers(body, "c" * 44)
    tampered = headers(body)
    # A captured request replayed after the tolerance, and one dated past it: a minute's margin on
    # each, stamped just before it is sent. A "+301 s" stamp, cut to whole seconds and sent after
    # the posts before it, once landed back inside the 300 s window on a loaded CI machine.
    margin = webhook.TOLERANCE + 60
    cases: list[dict[str, str] | float] = [unsigned, wrong_secret, -margin, +margin]
    for case in cases:
        hdrs = headers(body, at=time.time() + case) if isinstance(case, float) else case
        status, answer = await post(http, url, body, hdrs)
        assert status == 401 and answer == {"error": "unauthenticated"}, (hdrs, answer)
    status, answer = await post(http, url, body.replace(b"title", b"other"), tampered)
    assert status == 401 and "other" not in json.dumps(answer)  # never echoed
    big = body + b" " * (64 * 1024)
    async with http.post(url, data=big, headers=headers(big)) as reply:
        assert reply.status == 413
    assert await encodes(optimus) == []
    log = optimus.output()
    refusal = (
        '"identity": "webhook/127.0.0.1", "tenant": "", "via": "webhook", "method": "POST /v1/webhooks/s3"'
    )
    assert log.count(refusal) == 5, log[-3000:]  # one audit line per 401
    assert "bad signature" in log and "stale or replayed" in log
    assert "title" not in log  # the body of a refused request is never logged


async def test_an_s3_source_is_submitted_as_its_s3_uri(optimus: Any, http: aiohttp.ClientSession) -> None:
    # The default source template: the encode is asked for s3://bucket/key. Until Optimus reads S3
    # it refuses the scheme; the webhook acknowledges the event (a retry would be refused the same
    # way) and reports the refusal.
    body = s3_event("cam/a.mov", bucket="raw")
    status, answer = await post(http, webhook_url(optimus), body, headers(body))
    assert status == 202, answer
    [result] = answer["encodes"]
    assert result["source_uri"] == "s3://raw/cam/a.mov"
    if "error" in result:
        assert result["error"]["code"] == "INVALID_ARGUMENT", result
        assert await encodes(optimus) == []
    else:  # Optimus accepts s3:// sources
        [encode] = await encodes(optimus)
        assert encode.source_uri == "s3://raw/cam/a.mov"
