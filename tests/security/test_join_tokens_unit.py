"""The pure parts of agent joining, in-process: the token format, checking a token against its record,
spending uses, reading CSRs, the rate limiter and the agent's renewal schedule."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from cosmos import errors
from cosmos.security import join, pki
from cosmos.stratum.agent import enroll
from cosmos.stratum.enrollment import RateLimiter, peer_host
from cosmos.stratum.v1 import join_token_pb2

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2030, 1, 1, 12, 0, tzinfo=datetime.UTC)


def _record(
    token: join.Token, *, uses: int = 1, ttl_s: float = 3600, agent_id: str = ""
) -> join_token_pb2.JoinTokenRecord:
    return join.new_record(
        token,
        uses=uses,
        ttl=datetime.timedelta(seconds=ttl_s),
        agent_id=agent_id,
        creator="user/admin",
        description="",
        now=NOW,
    )


def _cause(exc: pytest.ExceptionInfo[errors.UnauthenticatedError]) -> str:
    assert exc.value.reason == "ERROR_REASON_JOIN_TOKEN_INVALID"
    return exc.value.metadata["cause"]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_a_token_round_trips_and_its_id_comes_from_the_request_id() -> None:
    token = join.generate(join.token_id_for("req-1"))
    assert str(token).startswith("cjt_") and join.parse(str(token)) == token
    assert join.token_id_for("req-1") == token.token_id != join.token_id_for("req-2")
    assert join.generate(token.token_id).secret != token.secret  # fresh secret every time


@pytest.mark.parametrize(
    "text",
    ["", "cjt_", "cjt_0123456789abcdef", "xyz_0123456789abcdef." + "a" * 43,
     "cjt_0123456789ABCDEF." + "a" * 43, "cjt_0123456789abcdef." + "a" * 42,
     "cjt_0123456789abcdef." + "a" * 43 + "!", "c" * 5000],
)  # fmt: skip
def test_malformed_tokens_are_refused(text: str) -> None:
    with pytest.raises(errors.UnauthenticatedError) as caught:
        join.parse(text)
    assert _cause(caught) == "malformed"


def test_only_a_hash_of_the_secret_is_stored() -> None:
    token = join.generate("0123456789abcdef")
    record = _record(token)
    stored = record.SerializeToString()
    assert token.secret.encode() not in stored
    assert record.secret_hash == join.secret_hash(token) and len(record.secret_hash) == 32


def test_unknown_and_wrong_secret_read_the_same() -> None:
    token = join.generate("0123456789abcdef")
    record = _record(token)
    wrong = join.Token(token.token_id, join.generate(token.token_id).secret)
    for found, presented in ((None, token), (record, wrong)):
        with pytest.raises(errors.UnauthenticatedError) as caught:
            join.check(found, presented, "a1", NOW)
        # Nothing about the record leaks to a caller without the secret.
        assert _cause(caught) == "unknown" and "token_id" not in caught.value.metadata


def test_expired_used_up_and_bound_tokens_are_refused_with_their_cause() -> None:
    token = join.generate("0123456789abcdef")
    assert join.check(_record(token), token, "a1", NOW) is False  # valid: a use is to be spent
    with pytest.raises(errors.UnauthenticatedError) as caught:
        join.check(_record(token, ttl_s=60), token, "a1", NOW + datetime.timedelta(seconds=60))
    assert _cause(caught) == "expired"
    bound = _record(token, agent_id="host-1")
    assert join.check(bound, token, "host-1", NOW) is False
    with pytest.raises(errors.UnauthenticatedError) as caught:
        join.check(bound, token, "host-2", NOW)
    assert _cause(caught) == "agent_mismatch" and "host-1" in caught.value.message


def test_uses_are_spent_one_per_join_and_a_retry_spends_none() -> None:
    token = join.generate("0123456789abcdef")
    record = _record(token, uses=2)
    key = _key().public_key()
    first = join.redemption("r1", "a1", key)
    assert join.check(record, token, "a1", NOW, first) is False
    join.spend(record, "a1", first)
    assert join.check(record, token, "a1", NOW, first) is True  # the same join retried
    second = join.redemption("r2", "a2", key)
    assert join.check(record, token, "a2", NOW, second) is False
    join.spend(record, "a2", second)
    assert (record.token.uses, record.token.uses_left, list(record.token.joined_agent_ids)) == (
        2,
        0,
        ["a1", "a2"],
    )
    with pytest.raises(errors.UnauthenticatedError) as caught:
        join.check(record, token, "a3", NOW, join.redemption("r3", "a3", key))
    assert _cause(caught) == "used_up"
    # A retry with another key is another join, not a retry.
    with pytest.raises(errors.UnauthenticatedError):
        join.check(record, token, "a1", NOW, join.redemption("r1", "a1", _key().public_key()))


def test_limits_and_defaults() -> None:
    assert join.check_limits(0, None, "") == (1, datetime.timedelta(hours=1))
    assert join.check_limits(5, datetime.timedelta(minutes=5), "x") == (5, datetime.timedelta(minutes=5))
    for uses, ttl, description, field in (
        (join.MAX_USES + 1, None, "", "uses"),
        (1, join.MAX_TTL + datetime.timedelta(seconds=1), "", "ttl"),
        (1, datetime.timedelta(seconds=-1), "", "ttl"),
        (1, None, "d" * (join.MAX_DESCRIPTION + 1), "description"),
    ):
        with pytest.raises(errors.InvalidArgumentError) as caught:
            join.check_limits(uses, ttl, description)
        assert [v.field for v in caught.value.violations] == [field]


def test_a_csr_gives_its_key_when_valid() -> None:
    key = _key()
    found = join.public_key_of(join.make_csr(key, "a1"))
    assert found.public_numbers() == key.public_key().public_numbers()
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert isinstance(join.public_key_of(join.make_csr(p384, "a1")).curve, ec.SECP384R1)


def _csr_with(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a1")])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def test_bad_csrs_are_refused_naming_the_field() -> None:
    good = join.make_csr(_key(), "a1")
    # Flip a byte of the signature (the end of the DER): the CSR still parses, the signature fails.
    der = bytearray(x509.load_pem_x509_csr(good.encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    cases = {
        "": "required",
        "not a csr": "not a PEM certificate signing request",
        "x" * (join.MAX_CSR_BYTES + 1): "above the limit",
        _csr_with(rsa.generate_private_key(public_exponent=65537, key_size=2048)): "EC P-256 or P-384",
        _csr_with(ed25519.Ed25519PrivateKey.generate()): "EC P-256 or P-384",
        tampered: "signature is not valid",
    }
    for pem, why in cases.items():
        with pytest.raises(errors.InvalidArgumentError) as caught:
            join.public_key_of(pem)
        assert caught.value.reason == "ERROR_REASON_INVALID_CSR" and why in caught.value.message, why
        assert [v.field for v in caught.value.violations] == ["csr_pem"]


def test_the_chain_carries_an_intermediate_but_not_a_root(tmp_path: Path) -> None:
    root = pki.Authority.create(tmp_path)
    cert = root.sign(_key().public_key(), pki.Subject("agent", "a1"))
    assert join.chain_pem(cert, root.cert).count("BEGIN CERTIFICATE") == 1
    intermediate = root.sign(_key().public_key(), pki.Subject("agent", "not-a-ca"))  # issuer != subject
    assert join.chain_pem(cert, intermediate).count("BEGIN CERTIFICATE") == 2


def test_the_rate_limiter_bounds_each_address_and_everyone() -> None:
    limiter = RateLimiter(burst=3, rate=1.0, total_burst=5, total_rate=1.0)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("a", 1.0)  # one earned back after a second
    # b has its own bucket, but everyone's (5, one earned back, four taken) runs dry after two more.
    assert [limiter.allow("b", 1.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("c", 3.0)
    assert peer_host("ipv4:127.0.0.1:5555") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "ipv6:[::1]"


def _cert(start: datetime.datetime, hours: float) -> x509.Certificate:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a1")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(hours=hours))
        .sign(key, hashes.SHA256())
    )


def test_renewal_is_scheduled_at_two_thirds_of_the_lifetime() -> None:
    cert = _cert(NOW, 24)
    assert enroll.renewal_delay(cert, NOW) == pytest.approx(16 * 3600)
    assert enroll.renewal_delay(cert, NOW + datetime.timedelta(hours=10)) == pytest.approx(6 * 3600)
    # Past the point: soon, but never in a tight loop; a short certificate at half its time left.
    assert enroll.renewal_delay(cert, NOW + datetime.timedelta(hours=20)) == enroll.MIN_RENEW_WAIT_S
    short = _cert(NOW, 1 / 60)  # one minute
    assert enroll.renewal_delay(short, NOW + datetime.timedelta(seconds=50)) == pytest.approx(5)
    assert enroll.renewal_delay(short, NOW + datetime.timedelta(minutes=5)) == 0.0
