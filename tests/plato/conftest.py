"""Plato under test: a real NATS, real Plato server processes, SDK workers in the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import security_harness
from plato_harness import PlatoClient

from cosmos.plato.v1 import workflow_service_pb2_grpc
from cosmos.sdk import Worker


@pytest.fixture
async def plato(start_service: Callable[..., Any], nats_url: str) -> AsyncIterator[PlatoClient]:
    service = start_service("plato", "--nats", nats_url)
    async with security_harness.channel(service.target) as channel:
        yield PlatoClient(
            service.target, nats_url, channel, workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        )


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
