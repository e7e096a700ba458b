"""Fixtures of the Stratum tests: a Stratum process on a fresh NATS and a client to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from stratum_harness import JobsClient


@pytest.fixture
def stratum(start_service: Callable[..., Any], nats_url: str, tmp_path: Path) -> Any:
    # tmp_path is the storage root: jobs' files lie in tmp_path/default (the admin's tenant).
    return start_service(
        "stratum", "--nats", nats_url, "--lease-seconds", "2", "--heartbeat-interval", "0.3",
        "--storage-root", str(tmp_path),
    )  # fmt: skip


@pytest.fixture
async def jobs(stratum: Any) -> AsyncIterator[JobsClient]:
    client = JobsClient.connect(stratum.target)
    yield client
    await client.channel.close(None)
