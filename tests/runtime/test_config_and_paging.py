"""Flags backed by environment variables, addresses, and the shared paging tokens."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cosmos import errors
from cosmos.runtime import config, paging

pytestmark = pytest.mark.unit


def test_flag_default_comes_from_environment_and_command_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSMOS_PLATO_GRACE_PERIOD", "3.5")
    parser = argparse.ArgumentParser()
    config.add_env_argument(parser, "COSMOS_PLATO", "--grace-period", default=10.0, type=float, help="grace")
    assert parser.parse_args([]).grace_period == 3.5
    assert parser.parse_args(["--grace-period", "1"]).grace_period == 1.0
    assert "COSMOS_PLATO_GRACE_PERIOD" in parser.format_help()


def test_malformed_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSMOS_NATS_PORT", "forty")
    with pytest.raises(errors.ConfigError, match="COSMOS_NATS_PORT='forty'"):
        config.add_env_argument(
            argparse.ArgumentParser(), "COSMOS", "--nats-port", default=4222, type=int, help=""
        )


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:50051", "127.0.0.1", 50051), (":4222", "127.0.0.1", 4222), ("[::1]:9", "::1", 9)],
)
def test_address_parse(text: str, host: str, port: int) -> None:
    address = config.Address.parse(text)
    assert (address.host, address.port) == (host, port)
    assert config.Address.parse(str(address)) == address


@pytest.mark.parametrize("text", ["localhost", "host:http", "host:70000"])
def test_bad_address_is_refused_naming_the_setting(text: str) -> None:
    with pytest.raises(errors.ConfigError, match="--listen"):
        config.Address.parse(text, setting="--listen")


@pytest.mark.integration  # out of process (a port, a process or a connection)
def test_port_in_use_is_detected() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(errors.PortInUseError) as caught:
            config.ensure_port_free(config.Address("127.0.0.1", port), "nats", "--nats-port")
    assert caught.value.port == port and "--nats-port" in str(caught.value)


def test_pages_cover_everything_once() -> None:
    items = list(range(7))
    seen: list[int] = []
    token = ""
    while True:
        page = paging.parse(3, token, "q")
        chunk, token = paging.slice_page(items, page, "q")
        seen += chunk
        if not token:
            break
    assert seen == items


def test_page_token_is_bound_to_its_query_and_size_validated() -> None:
    _, token = paging.slice_page(list(range(5)), paging.parse(2, "", "state=1"), "state=1")
    with pytest.raises(errors.InvalidArgumentError) as other_query:
        paging.parse(2, token, "state=2")
    assert other_query.value.violations[0].field == "page_token"
    with pytest.raises(errors.InvalidArgumentError) as negative:
        paging.parse(-1, "", "")
    assert negative.value.violations[0].field == "page_size"
    assert paging.parse(10_000, "", "").size == paging.MAX_PAGE_SIZE
    assert paging.parse(0, "", "").size == paging.DEFAULT_PAGE_SIZE


def test_newest_first_pages_neither_repeat_nor_skip_items_created_meanwhile() -> None:
    def key(item: tuple[int, str]) -> tuple[int, str]:
        return item

    items = [(t, f"w{t}") for t in (5, 1, 4, 2, 3)] + [(3, "w3b")]  # two created at the same instant
    page = paging.parse(2, "", "q")
    first, token = paging.newest_first(items, key, page, "q")
    assert first == [(5, "w5"), (4, "w4")]
    items.append((9, "w9"))  # created while the client pages: it belongs before page 1, not in page 2
    second, token = paging.newest_first(items, key, paging.parse(2, token, "q"), "q")
    assert second == [(3, "w3b"), (3, "w3")]
    third, token = paging.newest_first(items, key, paging.parse(2, token, "q"), "q")
    assert third == [(2, "w2"), (1, "w1")] and token == ""
    with pytest.raises(errors.InvalidArgumentError):
        paging.parse(2, paging.newest_first(items, key, page, "q")[1], "other query")


@pytest.mark.integration  # out of process (a port, a process or a connection)
def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    # An outgoing connection is given a port from the ephemeral range; a "free" port from there
    # could be taken by one before the server binds it (it happened in a clean-clone .ci/run).
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [config.free_port() for _ in range(100)]
    assert len(set(ports)) == 100
    assert all(p < low for p in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))


@pytest.mark.integration
def test_processes_side_by_side_never_get_the_same_free_port() -> None:
    # Four processes asking 400 ports each out of ~22,000: without the machine-wide hand-out about
    # 55 would repeat (two test workers once gave one port to two servers).
    script = "from cosmos.runtime import config\nprint(*(config.free_port() for _ in range(400)))"
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) for _ in range(4)]
    ports = [int(p) for proc in procs for p in proc.communicate(timeout=60)[0].split()]
    assert len(ports) == 1600
    assert len(set(ports)) == 1600


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry of handed-out ports of the test's own (not the machine's)."""
    path = tmp_path / "ports"
    monkeypatch.setattr(config, "_registry_path", lambda: path)
    return path


@pytest.mark.integration
def test_a_registry_others_could_write_is_not_trusted(registry: Path, tmp_path: Path) -> None:
    config.free_port()
    assert registry.stat().st_mode & 0o777 == 0o600 and registry.read_text().count(":") == 1
    registry.chmod(0o622)  # a file anyone may write to could hold anything: not read, not written
    config.free_port()
    assert registry.read_text().count(":") == 1
    registry.unlink()
    registry.symlink_to(tmp_path / "elsewhere")
    config.free_port()
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.integration
def test_consecutive_free_ports_are_bindable_and_each_is_handed_out(registry: Path) -> None:
    first = config.free_port(consecutive=3)
    held = {int(entry.split(":")[0]) for entry in registry.read_text().split()}
    assert held == {first, first + 1, first + 2}
    with socket.socket() as a, socket.socket() as b, socket.socket() as c:
        for sock, port in ((a, first), (b, first + 1), (c, first + 2)):
            sock.bind(("127.0.0.1", port))
