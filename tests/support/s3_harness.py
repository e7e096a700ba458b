"""A real SeaweedFS S3 gateway for tests: the embedded stack's own launcher, in a temporary dir."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from servers import stop_process

from cosmos.stack import seaweed


@contextlib.contextmanager
def running_s3(tmp: Path) -> Iterator[seaweed.S3Server]:
    """``weed server -s3`` on free loopback ports with authentication on and the bucket created."""
    server = seaweed.prepare(tmp)
    log = (tmp / "weed.log").open("wb")
    proc = subprocess.Popen(server.argv(), stdout=log, stderr=subprocess.STDOUT)
    try:
        server.wait_ready()
        server.create_bucket()
        yield server
    finally:
        # weed's filer waits 15 s on SIGTERM (its own metadata streams); a test's data is thrown away.
        stop_process(proc, timeout=2)
        log.close()
