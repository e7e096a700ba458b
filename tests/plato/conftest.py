"""Plato under test: a real NATS, real Plato server processes (the ``plato`` fixture of
tests/conftest.py), SDK workers in the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from cosmos.sdk import Worker


@pytest.fixture
async def run_worker() -> AsyncIterator[Callable[[Worker], None]]:
    """Run workers in the background for the test's duration."""
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def run(worker: Worker) -> None:
        tasks.append(asyncio.create_task(worker.run(stopping)))

    yield run
    stopping.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
