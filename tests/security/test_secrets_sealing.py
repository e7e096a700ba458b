"""Envelope encryption of job secrets: round trip, binding to the job, key rotation, the key file."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from cosmos import errors
from cosmos.cli import security as cli
from cosmos.security import secrets

pytestmark = pytest.mark.unit

VALUES = {"API_TOKEN": "s3cr3t-value-1", "DB_PASSWORD": "hunter2 with spaces\nand a newline"}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.key"
    secrets.create_key_file(path, "k1")
    return path


def test_round_trip(key_file: Path) -> None:
    keyring = secrets.Keyring.load(key_file)
    sealed = keyring.seal(VALUES, job_id="job-1")
    assert sealed.key_id == "k1"
    assert keyring.unseal(sealed, job_id="job-1") == VALUES


def test_sealed_bytes_hold_no_value_and_differ_each_time(key_file: Path) -> None:
    keyring = secrets.Keyring.load(key_file)
    first = keyring.seal(VALUES, job_id="job-1")
    second = keyring.seal(VALUES, job_id="job-1")
    for value in VALUES.values():
        assert value.encode() not in first.SerializeToString()
    # A fresh data key and nonces per seal: equal secrets are not recognisable at rest.
    assert first.wrapped_key != second.wrapped_key
    assert first.ciphertext != second.ciphertext


def test_another_jobs_id_does_not_open(key_file: Path) -> None:
    keyring = secrets.Keyring.load(key_file)
    sealed = keyring.seal(VALUES, job_id="job-1")
    with pytest.raises(secrets.SecretsError, match="do not open"):
        keyring.unseal(sealed, job_id="job-2")


def test_wrong_key_does_not_open(tmp_path: Path, key_file: Path) -> None:
    other = tmp_path / "other.key"
    secrets.create_key_file(other, "k1")  # same id, different key
    sealed = secrets.Keyring.load(key_file).seal(VALUES, job_id="job-1")
    with pytest.raises(secrets.SecretsError, match="do not open"):
        secrets.Keyring.load(other).unseal(sealed, job_id="job-1")


def test_unknown_key_id_is_named(key_file: Path) -> None:
    sealed = secrets.Keyring.load(key_file).seal(VALUES, job_id="job-1")
    sealed.key_id = "gone"
    with pytest.raises(secrets.SecretsError, match="'gone', which is not in the keyring"):
        secrets.Keyring.load(key_file).unseal(sealed, job_id="job-1")


@pytest.mark.parametrize("field", ["wrapped_key", "ciphertext"])
def test_tampering_is_refused(key_file: Path, field: str) -> None:
    keyring = secrets.Keyring.load(key_file)
    sealed = keyring.seal(VALUES, job_id="job-1")
    blob = bytearray(getattr(sealed, field))
    blob[-1] ^= 1
    setattr(sealed, field, bytes(blob))
    with pytest.raises(secrets.SecretsError):
        keyring.unseal(sealed, job_id="job-1")
    # Swapping the two parts (both valid ciphertexts under some key) does not open either.
    swapped = keyring.seal(VALUES, job_id="job-1")
    swapped.wrapped_key, swapped.ciphertext = swapped.ciphertext, swapped.wrapped_key
    with pytest.raises(secrets.SecretsError):
        keyring.unseal(swapped, job_id="job-1")


def test_rotation_old_key_unseals_new_key_seals(key_file: Path) -> None:
    old = secrets.Keyring.load(key_file).seal(VALUES, job_id="job-1")
    new_id = secrets.rotate_key_file(key_file, "k2")
    assert new_id == "k2"
    keyring = secrets.Keyring.load(key_file)
    assert keyring.key_ids == ["k2", "k1"]
    assert keyring.unseal(old, job_id="job-1") == VALUES
    new = keyring.seal(VALUES, job_id="job-1")
    assert new.key_id == "k2"
    assert keyring.unseal(new, job_id="job-1") == VALUES
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # Once the old line is removed, what it sealed no longer opens, and says which key it needs.
    key_file.write_text(key_file.read_text().splitlines()[0] + "\n")
    with pytest.raises(secrets.SecretsError, match="'k1'"):
        secrets.Keyring.load(key_file).unseal(old, job_id="job-1")


def test_created_key_file_is_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "secrets.key"
    key_id = secrets.create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secrets.Keyring.load(path).primary == key_id
    before = path.read_bytes()
    with pytest.raises(errors.ConfigError, match="exists"):
        secrets.create_key_file(path)
    secrets.ensure_key_file(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_key_file_open_to_others_is_refused(key_file: Path, mode: int) -> None:
    os.chmod(key_file, mode)
    with pytest.raises(errors.ConfigError, match="chmod 600"):
        secrets.Keyring.load(key_file)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "# only a comment\n",
        "k1\n",
        "k1 not-base64!!\n",
        f"k1 {base64.b64encode(b'short').decode()}\n",
        f"bad/id {base64.b64encode(bytes(32)).decode()}\n",
        f"k1 {base64.b64encode(bytes(32)).decode()}\nk1 {base64.b64encode(bytes(32)).decode()}\n",
    ],
)
def test_malformed_key_file_is_refused_without_echoing_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "secrets.key"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(errors.ConfigError) as caught:
        secrets.Keyring.load(path)
    assert "not-base64" not in str(caught.value)


def test_comments_and_blank_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    key = base64.b64encode(bytes(range(32))).decode()
    path.write_text(f"# rotated 2026-12-05\n\nk9 {key}  # primary\n")
    os.chmod(path, 0o600)
    keyring = secrets.Keyring.load(path)
    assert keyring.key_ids == ["k9"]
    assert keyring.unseal(keyring.seal({"A": "b"}, job_id="j"), job_id="j") == {"A": "b"}


def test_empty_values_round_trip(key_file: Path) -> None:
    keyring = secrets.Keyring.load(key_file)
    assert keyring.unseal(keyring.seal({}, job_id="j"), job_id="j") == {}


def test_cli_creates_and_rotates_the_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.pki_main(["secrets-key", "--dir", str(tmp_path)]) == 0
    path = tmp_path / secrets.KEY_FILE
    first = secrets.Keyring.load(path).primary
    assert cli.pki_main(["secrets-key", "--dir", str(tmp_path)]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err
    assert cli.pki_main(["secrets-key", "--file", str(path), "--rotate"]) == 0
    keyring = secrets.Keyring.load(path)
    assert keyring.key_ids[1:] == [first] and keyring.primary != first
    printed = capsys.readouterr().out
    assert keyring.primary in printed
    assert not [line for line in path.read_text().splitlines() if line.split()[1] in printed]
