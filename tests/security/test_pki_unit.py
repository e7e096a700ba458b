"""The CA, certificates, tokens and client contexts, in-process (no servers)."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509

from cosmos import errors
from cosmos.runtime import channels
from cosmos.security import context, pki, principals, tls, tokens
from cosmos.security.config import Security

pytestmark = pytest.mark.unit


def test_a_certificate_names_its_workload_and_keys_are_private(tmp_path: Path) -> None:
    ca = pki.Authority.create(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca-key.pem").stat().st_mode) == 0o600
    subject = pki.Subject("user", "alice", "acme", ("submitter", "viewer"))
    cert = ca.issue(pki.Paths.named(tmp_path, "alice"), subject, ttl=datetime.timedelta(hours=2))
    assert stat.S_IMODE((tmp_path / "alice-key.pem").stat().st_mode) == 0o600
    assert pki.subject_of(pki.load_cert(tmp_path / "alice.pem")) == subject
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cosmos/user/alice"]
    assert datetime.timedelta(hours=1, minutes=59) < pki.remaining(cert) <= datetime.timedelta(hours=2)

    server = ca.issue(pki.Paths.named(tmp_path, "plato"), pki.Subject("plato", "plato-0", dns=("p.svc",)))
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"plato.cosmos", "localhost", "p.svc"} <= set(names.get_values_for_type(x509.DNSName))


def test_renewal_happens_only_near_the_end_and_keeps_the_subject(tmp_path: Path) -> None:
    ca = pki.Authority.create(tmp_path)
    paths = pki.Paths.named(tmp_path, "agent")
    subject = pki.Subject("agent", "host-1")
    first = ca.issue(paths, subject, ttl=datetime.timedelta(hours=24))
    assert not pki.renew(ca, paths)  # 24 h left: nothing to do
    assert pki.renew(ca, paths, before=datetime.timedelta(hours=25))
    second = pki.load_cert(paths.cert)
    assert second.serial_number != first.serial_number
    assert pki.subject_of(second) == subject


def test_bad_names_roles_and_durations_are_refused(tmp_path: Path) -> None:
    ca = pki.Authority.create(tmp_path)
    for bad in (pki.Subject("root", "x"), pki.Subject("agent", "a/b"), pki.Subject("agent", "")):
        with pytest.raises(errors.ConfigError):
            ca.issue(pki.Paths.named(tmp_path, "bad"), bad)
    assert pki.parse_ttl("90m") == datetime.timedelta(minutes=90)
    for text in ("-1h", "soon", "0"):
        with pytest.raises(errors.ConfigError):
            pki.parse_ttl(text)


def test_tokens_verify_once_and_refuse_foreign_keys(tmp_path: Path) -> None:
    key = tokens.create_keypair(tmp_path)
    token = tokens.create(
        key, subject="ci", tenant="acme", roles=["submitter"], ttl=datetime.timedelta(minutes=5)
    )
    verifier = tokens.Verifier(tokens.load_public(tmp_path / tokens.PUBLIC_KEY))
    who = verifier.verify(token)
    assert (who.kind, who.name, who.tenant, who.roles) == ("token", "ci", "acme", frozenset({"submitter"}))
    assert verifier.verify(token) is who  # cached: no second signature check
    other = tokens.create_keypair(tmp_path / "other")
    forged = tokens.create(
        other, subject="ci", tenant="acme", roles=["admin"], ttl=datetime.timedelta(minutes=5)
    )
    with pytest.raises(errors.UnauthenticatedError, match="signature"):
        verifier.verify(forged)
    with pytest.raises(errors.ConfigError, match="unknown role"):
        tokens.create(key, subject="ci", tenant="acme", roles=["god"], ttl=datetime.timedelta(minutes=5))


def test_roles_grant_what_the_table_says() -> None:
    p = principals.P
    viewer = principals.Principal("user", "v", "acme", frozenset({"viewer"}))
    viewer.require(p.PERMISSION_JOBS_READ)
    with pytest.raises(errors.PermissionDeniedError) as caught:
        viewer.require(p.PERMISSION_JOBS_WRITE)
    assert caught.value.metadata["permission"] == "PERMISSION_JOBS_WRITE"
    assert not viewer.sees("globex") and viewer.sees("acme")
    admin = principals.Principal("user", "a", "default", frozenset({"admin"}))
    assert admin.sees("globex") and p.PERMISSION_POOL_ADMIN in admin.permissions
    agent = principals.Principal("agent", "host-1")
    assert agent.permissions == {p.PERMISSION_AGENT_CONNECT}
    back = principals.decode_delegation(viewer.delegation())
    assert (back.name, back.tenant, back.roles) == ("v", "acme", frozenset({"viewer"}))


def test_contexts_round_trip_privately(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSMOS_CONFIG", str(tmp_path / "config.yaml"))
    saved = context.Context(name="prod", endpoints={"optimus": "o:1"}, ca="/ca", cert="/c", key="/k")
    path = context.save(saved)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = context.load()
    assert loaded.name == "prod" and loaded.endpoint("optimus") == "o:1" and loaded.endpoint("plato")
    with pytest.raises(errors.ConfigError, match="no context 'nope'"):
        context.load("nope")


@pytest.mark.integration  # out of process (a port, a process or a connection)
async def test_a_client_channel_picks_up_renewed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = pki.Authority.create(tmp_path)
    ca.issue(pki.Paths.named(tmp_path, "admin"), pki.Subject("user", "admin", "default", ("admin",)))
    monkeypatch.setattr(tls, "RELOAD_CHECK_S", 0.0)
    channel = channels.connect("127.0.0.1:1", "plato", Security(tls=tls.TlsFiles.in_dir(tmp_path, "admin")))
    assert isinstance(channel, tls.ReloadingChannel)
    first = channel._current()
    assert channel._current() is first  # files unchanged: same channel
    pki.renew(ca, pki.Paths.named(tmp_path, "admin"), before=pki.CA_TTL)
    assert channel._current() is not first
    await channel.close()
