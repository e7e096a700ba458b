"""Configuration from flags and environment.

Every flag has an environment variable of the same meaning (``--listen`` of Plato is
``COSMOS_PLATO_LISTEN``); a flag given on the command line wins over the environment, which wins over
the default.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
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
_handed_out: set[int] = set()
_rand = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now (for tests and ``--port 0`` style launches), not handed out before by this
    process.

    Chosen below the kernel's ephemeral range: a port from ``bind(0)`` is one the kernel also gives to
    outgoing connections, and one of those (any client socket on the machine) could take it before
    the server binds it.
    """
    high = _ephemeral_low()
    if high - _LOWEST_PORT < 1000:  # an unusual range: fall back to the kernel's choice
        return _kernel_port(host)
    for _ in range(200):
        port = _rand.randrange(_LOWEST_PORT, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    return _kernel_port(host)


def _kernel_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        _handed_out.add(port)
        return port
