"""One trace from the API call through Plato's events to the handler, across gRPC and NATS."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import nats
import security_harness
from nats.aio.msg import Msg
from opentelemetry import trace
from plato_harness import PlatoClient

from cosmos.plato.v1 import workflow_service_pb2
from cosmos.runtime import telemetry
from cosmos.sdk import StepContext, Worker

ONE_STEP = """\
workflow:
  id: traced
  rules:
    - when: workflow.started
      do: [work]
"""


async def test_events_and_handlers_continue_the_callers_trace(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    telemetry.configure_tracing("test-client")
    await plato.register(ONE_STEP)
    trace_id = secrets.token_hex(16)
    handler_traces: list[str] = []
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())

    @worker.handler("work")
    async def work(step: StepContext) -> dict[str, Any]:
        handler_traces.append(f"{trace.get_current_span().get_span_context().trace_id:032x}")
        return {}

    run_worker(worker)
    nc = await nats.connect(plato.nats_url, **security_harness.nats_options())
    headers: list[dict[str, str]] = []

    async def collect(msg: Msg) -> None:
        headers.append(dict(msg.headers or {}))

    await nc.subscribe("cosmos.workflow.events.*", cb=collect)
    request = workflow_service_pb2.StartWorkflowRequest(request_id="traced-1", definition_id="traced")
    metadata = (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)
    reply = await plato.stub.StartWorkflow(request, metadata=metadata)
    await plato.wait(reply.workflow.workflow_id)
    await asyncio.sleep(0.2)
    await nc.close()

    assert handler_traces == [trace_id]
    assert len(headers) == 5  # started, rule fired, scheduled, completed, workflow completed
    for event_headers in headers:
        assert event_headers["traceparent"].split("-")[1] == trace_id
