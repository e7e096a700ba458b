"""Configuration from flags and environment.

Every flag has an environment variable of the same meaning (``--listen`` of Plato is
``COSMOS_PLATO_LISTEN``); a flag given on the command line wins over the environment, which wins over
the default.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cosmos import errors


def env_name(prefix: str, flag: str) -> str:
    """The environment variable backing ``flag`` (``--grace-period`` → ``COSMOS_PLATO_GRACE_PERIOD``)."""
    return f"{prefix}_{flag.lstrip('-').replace('-', '_')}".upper()


def add_env_argument(
    parser: argparse.ArgumentParser,
    prefix: str,
    flag: str,
    *,
    default: str | int | float | None,
    help: str,
    type: type = str,
) -> None:
    """Add ``flag`` whose default is read from its environment variable, and say so in ``--help``."""
    var = env_name(prefix, flag)
    raw = os.environ.get(var)
    value: object = default
    if raw is not None:
        try:
            value = type(raw)
        except ValueError as exc:
            raise errors.ConfigError(f"{var}={raw!r} is not a valid {type.__name__}") from exc
    parser.add_argument(flag, default=value, type=type, help=f"{help} (env {var}; default {default})")


def env_flag(prefix: str, flag: str) -> bool:
    """A boolean flag's default from its environment variable (``1``, ``true``, ``yes`` are true)."""
    return os.environ.get(env_name(prefix, flag), "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Address:
    """A TCP host and port to listen on or dial."""

    host: str
    """Host name or IP literal; IPv6 literals are written without brackets."""
    port: int
    """TCP port, 0 to let the kernel choose when listening."""

    @classmethod
    def parse(cls, text: str, *, setting: str = "address") -> Address:
        """Parse ``HOST:PORT``, ``:PORT`` (loopback) or ``[V6]:PORT``."""
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise errors.ConfigError(f"{setting}: {text!r} is not HOST:PORT")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise errors.ConfigError(f"{setting}: port {port} is out of range 0-65535")
        host = host.strip("[]") or "127.0.0.1"
        return cls(host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(text: str, *, setting: str = "address") -> str:
    """A server to dial: ``HOST:PORT``, several replicas ``A:P,B:P``, or ``dns:///NAME:PORT`` resolving
    to every replica (see :func:`cosmos.runtime.channels.dial_target`)."""
    if text.startswith("dns:"):
        return text
    return ",".join(str(Address.parse(part.strip(), setting=setting)) for part in text.split(","))


def ensure_port_free(address: Address, owner: str, setting: str = "") -> None:
    """Raise :class:`PortInUseError` if nothing can listen on ``address`` right now."""
    if address.port == 0:
        return
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as the servers use it: a port in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            raise errors.PortInUseError(address.host, address.port, owner, setting) from exc


_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10_000
_HOLD_SECONDS = 30.0
"""How long a port handed out is kept from every other process of this user: time to bind it."""
_handed_out: set[int] = set()
_rand = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1", *, consecutive: int = 1) -> int:
    """A port free now (for tests and ``--port 0`` style launches), not handed out in the last 30 s
    by any process of this user on this machine (nor ever by this process); with ``consecutive``,
    the first of that many such ports in a row (a service and its token port, say).

    Chosen below the kernel's ephemeral range: a port from ``bind(0)`` is one the kernel also gives to
    outgoing connections, and one of those (any client socket on the machine) could take it before
    the server binds it. Processes that start servers side by side (test workers, ``cosmos up`` twice)
    would otherwise hand out the same port now and then, and one server would fail to bind it.
    """
    with _machine_registry() as held:
        high = _ephemeral_low()
        if high - _LOWEST_PORT < 1000:  # an unusual ephemeral range: the kernel's choice, or any port
            if consecutive == 1:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((host, 0))
                    port: int = sock.getsockname()[1]
                return _hand_out(range(port, port + 1), held)
            high = 65536
        for _ in range(500):
            first = _rand.randrange(_LOWEST_PORT, high - consecutive + 1)
            ports = range(first, first + consecutive)
            if any(p in _handed_out or p in held for p in ports) or not _bindable(host, ports):
                continue
            return _hand_out(ports, held)
    raise errors.ConfigError(f"no {consecutive} consecutive free port(s) found on {host}")


def _bindable(host: str, ports: range) -> bool:
    with contextlib.ExitStack() as probes:
        for port in ports:
            sock = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _hand_out(ports: range, held: dict[int, float]) -> int:
    until = time.time() + _HOLD_SECONDS
    for port in ports:
        _handed_out.add(port)
        held[port] = until
    return ports[0]


def _registry_path() -> Path:
    return Path(tempfile.gettempdir()) / f"cosmos-ports-{os.getuid()}"


@contextlib.contextmanager
def _machine_registry() -> Iterator[dict[int, float]]:
    """The ports handed out machine-wide and still held (port → until when, in epoch seconds), under
    an exclusive lock; what the block adds is written back. Where the file cannot be trusted (not
    ours, writable by others, a link) or used, an empty dict stands in: only this process's
    hand-outs are then avoided, as before."""
    try:
        fd = os.open(_registry_path(), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        yield {}
        return
    with os.fdopen(fd, "r+", encoding="ascii") as file:
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            yield {}
            return
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file is closed
        now = time.time()
        held: dict[int, float] = {}
        for entry in file.read().split():
            port, _, until = entry.partition(":")
            with contextlib.suppress(ValueError):
                if float(until) > now:
                    held[int(port)] = float(until)
        yield held
        file.seek(0)
        file.truncate()
        file.write(" ".join(f"{port}:{until:.0f}" for port, until in held.items()))
