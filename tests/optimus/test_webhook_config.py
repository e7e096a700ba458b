"""The webhook's config file, signatures and event identities, without a server."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from pathlib import Path

import pytest

from cosmos import errors
from cosmos.optimus import webhook
from cosmos.optimus.v1 import encode_pb2
from cosmos.runtime.config import Address, free_port
from cosmos.security import pki
from cosmos.security.config import Security
from cosmos.security.tls import TlsFiles

pytestmark = pytest.mark.unit


def config(tmp_path: Path, **extra: object) -> webhook.WebhookConfig:
    (tmp_path / "s1").write_text("x" * 32)
    rule = {"name": "r", "prefix": "in/", "output": "s3://b/out/{stem}/", "tenant": "t", "identity": "hook"}
    data = {"secret_files": ["s1"], "rules": [rule], **extra}
    return webhook.WebhookConfig.parse(data, tmp_path)


def test_rules_build_the_encode_from_templates_never_from_the_body(tmp_path: Path) -> None:
    [rule] = config(tmp_path).rules
    request = rule.request("b", "in/show/ep 1.mov", "webhook-1")
    assert request.source_uri == "s3://b/in/show/ep 1.mov"
    assert request.output_uri == "s3://b/out/in/show/ep 1/"
    assert request.quality == encode_pb2.QUALITY_MODE_SAMPLED and request.request_id == "webhook-1"
    principal = rule.principal()
    assert (principal.identity, principal.tenant) == ("user/hook", "t")
    assert principal.roles == frozenset({"submitter"})
    assert rule.matches("any-bucket", "in/x") and not rule.matches("b", "out/x")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"secret_files": []}, "at least one secret file"),
        ({"secret_files": ["missing"]}, "webhook secret"),
        ({"rules": [{"name": "r", "output": "o", "tenant": "t"}]}, "identity are required"),
        ({"rules": [{"name": "r", "output": "o", "tenant": "t", "identity": "i", "bogus": 1}]}, "rules[0]"),
        ({"unknown": 1}, "unknown key"),
    ],
)
def test_bad_configs_are_refused_at_start(tmp_path: Path, extra: dict[str, object], message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message.replace("[", r"\[")):
        config(tmp_path, **extra)


def test_signatures_timestamps_and_rotation(tmp_path: Path) -> None:
    (tmp_path / "s2").write_text("y" * 32 + "\n")
    hook = webhook.Webhook(config(tmp_path, secret_files=["s1", "s2"]), submit=None)  # type: ignore[arg-type]
    body, now = b'{"Records": []}', str(int(time.time()))
    for secret in (b"x" * 32, b"y" * 32):  # both secrets of a rotation sign validly
        assert hook.verify(now, webhook.sign(secret, now, body), body) == ""
    assert hook.verify(now, webhook.sign(b"z" * 32, now, body), body) == "bad signature"
    assert hook.verify(now, webhook.sign(b"x" * 32, now, body), body + b" ") == "bad signature"
    old = str(int(time.time()) - 301)
    assert "stale" in hook.verify(old, webhook.sign(b"x" * 32, old, body), body)
    assert hook.verify(None, None, body) == "missing signature headers"
    assert hook.verify("soon", "sha256=00", body) == "malformed timestamp"
    # A rotated secret file is read again: the old value stops working without a restart.
    (tmp_path / "s1").write_text("w" * 32)
    assert hook.verify(now, webhook.sign(b"x" * 32, now, body), body) == "bad signature"


def test_event_identity_prefers_the_event_id_then_the_sequencer() -> None:
    record = {"eventID": "e1", "s3": {"object": {"sequencer": "0A"}}}
    assert webhook.event_identity(record, "b", "k") == "id:e1"
    assert webhook.event_identity({"s3": {"object": {"sequencer": "0A"}}}, "b", "k") == "seq:b/k@0A"
    assert webhook.event_identity({"s3": {"object": {}}}, "b", "k") == ""


def test_create_secret_is_private_and_kept(tmp_path: Path) -> None:
    path = webhook.create_secret(tmp_path / "hook" / "secret")
    first = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600 and (tmp_path / "hook").stat().st_mode & 0o777 == 0o700
    assert webhook.create_secret(path).read_text() == first and len(first.strip()) == 64


@pytest.mark.integration  # out of process (a port, a process or a connection)
async def test_a_renewed_certificate_is_served_from_the_next_handshake(tmp_path: Path) -> None:
    authority = pki.Authority.create(tmp_path)
    paths = pki.Paths.named(tmp_path, "optimus")
    authority.issue(paths, pki.Subject("optimus", "optimus"))
    security = Security(tls=TlsFiles.in_dir(tmp_path, "optimus"))
    hook = webhook.Webhook(config(tmp_path), submit=None)  # type: ignore[arg-type]
    listen = Address("127.0.0.1", free_port())
    runner = await webhook.start(listen, security, hook)
    try:

        def served() -> bytes:
            client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            client.check_hostname = False  # the name is the server's SPIFFE identity, not 127.0.0.1
            with (
                socket.create_connection((listen.host, listen.port)) as raw,
                client.wrap_socket(raw) as conn,
            ):
                cert = conn.getpeercert(binary_form=True)
                assert cert is not None
                return cert

        first = await asyncio.to_thread(served)
        assert await asyncio.to_thread(served) == first
        authority.issue(paths, pki.Subject("optimus", "optimus"))  # renewed in place, as cosmos up does
        renewed = await asyncio.to_thread(served)
        assert renewed != first and renewed == ssl.PEM_cert_to_DER_cert(paths.cert.read_text())
    finally:
        await runner.cleanup()


@pytest.mark.integration  # out of process (a port, a process or a connection)
async def test_malformed_and_oversized_notifications_and_a_lost_secret(tmp_path: Path) -> None:
    import aiohttp

    hook = webhook.Webhook(config(tmp_path), submit=None)  # type: ignore[arg-type]  # never reached
    listen = Address("127.0.0.1", free_port())
    runner = await webhook.start(listen, Security(insecure=True), hook)  # plain HTTP: loopback only
    url = f"http://{listen}{webhook.PATH}"

    async def post(body: bytes) -> tuple[int, object]:
        stamp = str(int(time.time()))
        headers = {
            webhook.TIMESTAMP_HEADER: stamp,
            webhook.SIGNATURE_HEADER: webhook.sign(b"x" * 32, stamp, body),
        }
        async with session.post(url, data=body, headers=headers) as reply:
            return reply.status, await reply.json(content_type=None)

    try:
        async with aiohttp.ClientSession() as session:
            assert await post(b"not json") == (400, {"error": "not an S3 event notification"})
            many = json.dumps({"Records": [{}] * 101}).encode()
            assert await post(many) == (400, {"error": "more than 100 records"})
            assert await post(b'{"Records": [{}]}') == (202, {"encodes": [], "ignored": 1})
            (tmp_path / "s1").unlink()
            assert await post(b'{"Records": []}') == (500, {"error": "webhook misconfigured"})
    finally:
        await runner.cleanup()
