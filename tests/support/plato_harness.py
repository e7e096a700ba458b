"""Helpers for Plato tests: the card's workflow, a client with waits and history, event names, the
README's SDK worker run against a Plato."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import security_harness
import yaml

from cosmos.plato.v1 import (
    events_pb2,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

CARD_WORKFLOW = """\
workflow:
  id: encode-workflow-v3
  rules:
    - when: workflow.started
      do: [probe-source]
    - when: probe-source.completed
      do:
        - fanout: {for: each profile in input.profiles, run: encode-segment}
    - when: all encode-segment.completed
      do: [mux-final, publish-manifest]
    - when: any.failed
      retry: {max: 3, backoff: exponential}
      onExhausted: [notify-oncall]
"""

TERMINAL = (
    workflow_pb2.WORKFLOW_STATE_COMPLETED,
    workflow_pb2.WORKFLOW_STATE_FAILED,
    workflow_pb2.WORKFLOW_STATE_CANCELLED,
)


@dataclass
class PlatoClient:
    """A channel to a Plato server and the helpers tests use."""

    target: str
    nats_url: str
    channel: grpc.aio.Channel
    stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub

    async def register(self, source: str) -> int:
        reply = await self.stub.RegisterDefinition(
            workflow_service_pb2.RegisterDefinitionRequest(request_id=uuid.uuid4().hex, source_yaml=source)
        )
        return reply.definition.version

    async def start(self, definition_id: str, input: dict[str, Any] | None = None, **kw: Any) -> str:
        request = workflow_service_pb2.StartWorkflowRequest(
            request_id=kw.pop("request_id", uuid.uuid4().hex), definition_id=definition_id, **kw
        )
        request.input.update(input or {})
        reply = await self.stub.StartWorkflow(request)
        return reply.workflow.workflow_id

    async def get(self, workflow_id: str) -> workflow_pb2.Workflow:
        reply = await self.stub.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id))
        return reply.workflow

    async def wait(self, workflow_id: str, timeout: float = 60) -> workflow_pb2.Workflow:
        async def poll() -> workflow_pb2.Workflow:
            while True:
                wf = await self.get(workflow_id)
                if wf.state in TERMINAL:
                    return wf
                await asyncio.sleep(0.05)

        return await asyncio.wait_for(poll(), timeout)

    async def history(self, workflow_id: str) -> list[events_pb2.WorkflowEvent]:
        events: list[events_pb2.WorkflowEvent] = []
        token = ""
        while True:
            reply = await self.stub.ListWorkflowEvents(
                workflow_service_pb2.ListWorkflowEventsRequest(
                    workflow_id=workflow_id, page_size=100, page_token=token
                )
            )
            events.extend(reply.events)
            token = reply.next_page_token
            if not token:
                return events


def event_names(events: list[events_pb2.WorkflowEvent]) -> list[str]:
    """``TYPE step_id`` per event, for readable assertions."""
    names = []
    for event in events:
        kind = events_pb2.WorkflowEventType.Name(event.type).removeprefix("WORKFLOW_EVENT_TYPE_")
        names.append(f"{kind} {event.step_id}".strip())
    return names


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``."""
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


async def run_readme_worker(
    plato: PlatoClient, tmp_path: Path, python: str = sys.executable, env: Mapping[str, str] | None = None
) -> None:
    """Run the README's SDK example as written (only the NATS address and the certificate's place
    changed) with ``python``, in its own process, and check that it completes the README's card
    workflow started with the README's input."""
    card = next(b for b in readme_blocks("yaml") if "encode-workflow-v3" in b)
    example = next(b for b in readme_blocks("python") if "@worker.handler" in b and "mux-final" in b)
    definition = yaml.safe_load(card)["workflow"]
    steps = {s for rule in definition["rules"] for s in rule.get("do", []) if isinstance(s, str)}
    steps |= {
        rule["do"][0]["fanout"]["run"] for rule in definition["rules"] if "fanout" in str(rule.get("do"))
    }
    steps |= {s for rule in definition["rules"] for s in rule.get("onExhausted", [])}
    for step in steps:  # a handler for every step the card names
        assert f'@worker.handler("{step}")' in example, step
    tls = security_harness.worker_tls()
    example = example.replace('"nats://127.0.0.1:4222"', repr(plato.nats_url))
    example = example.replace(
        'TlsFiles.in_dir(Path(".cosmos/pki"), "worker")',
        f"TlsFiles.in_dir(Path({str(tls.ca.parent)!r}), {tls.cert.stem!r})",
    )
    script = tmp_path / "worker.py"
    script.write_text(example)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            python, str(script), stdout=out, stderr=out, env=None if env is None else dict(env)
        )
    try:
        assert await plato.register(card) >= 1
        wf_id = await plato.start(
            "encode-workflow-v3", {"sourceUri": "file:///in.mp4", "profiles": ["1080p", "720p"]}
        )
        try:
            wf = await plato.wait(wf_id, timeout=60)
        except TimeoutError:
            raise AssertionError(f"{await plato.get(wf_id)}\nworker: {log.read_text()}") from None
        assert wf.state == workflow_pb2.WORKFLOW_STATE_COMPLETED, f"{wf}\nworker: {log.read_text()}"
        assert {s.step_name for s in wf.steps} == {
            "probe-source",
            "encode-segment",
            "mux-final",
            "publish-manifest",
        }
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
