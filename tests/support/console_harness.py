"""A stack with the web console and a headless Chromium to drive it: shared by the browser test
(tests/console/test_browser.py) and the screenshot script (scripts/console_screenshots.py)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cosmos.optimus.media.ffmpeg import Progress
from cosmos.optimus.media.testclip import make_test_clip
from cosmos.optimus.v1 import encode_pb2, encode_service_pb2, encode_service_pb2_grpc
from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime.config import free_port
from cosmos.security import tokens
from cosmos.stack import credentials
from cosmos.stack.embedded import EmbeddedStack, StackConfig

TOKEN_OFFSET = 1
HANG = """\
workflow:
  id: console-hang
  description: one step that no worker takes, so the workflow runs until it is cancelled
  rules:
    - when: workflow.started
      do: [wait-for-nobody]
"""


def chromium() -> tuple[str, str]:
    """The system Chromium's path, or ``("", why not)``."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path, ""
    return "", "no chromium on PATH (Debian: apt-get install chromium; `make install` does it as root)"


def browser_args(stack: EmbeddedStack) -> list[str]:
    """Chromium flags that make it trust the console's certificate (its public key, pinned), as a
    browser that has the dev CA installed would: a secure context, so Secure cookies are kept."""
    assert stack.credentials is not None
    cert = x509.load_pem_x509_certificate(stack.credentials.files("console").cert.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return ["--no-sandbox", f"--ignore-certificate-errors-spki-list={pin}"]


def stack_config(data_dir: Path) -> StackConfig:
    return StackConfig(
        optimus_port=free_port(consecutive=TOKEN_OFFSET + 1),
        plato_port=free_port(consecutive=TOKEN_OFFSET + 1),
        stratum_port=free_port(consecutive=TOKEN_OFFSET + 1),
        nats_port=free_port(),
        console_port=free_port(),
        token_port_offset=TOKEN_OFFSET,
        data_dir=data_dir,
        log_level="warning",
    )


def token(stack: EmbeddedStack, role: str, subject: str = "") -> str:
    """A platform token of tenant ``default`` with ``role``, as `cosmos token create` makes it."""
    assert stack.credentials is not None
    key = tokens.load_private(stack.credentials.directory / tokens.PRIVATE_KEY)
    return tokens.create(
        key,
        subject=subject or f"console-{role}",
        tenant=credentials.ADMIN_TENANT,
        roles=[role],
        ttl=datetime.timedelta(hours=1),
    )


async def make_clip(stack_cfg: StackConfig, seconds: float = 8.0, size: str = "640x360") -> Path:
    area = stack_cfg.storage_dir / credentials.ADMIN_TENANT
    area.mkdir(parents=True, exist_ok=True)
    clip = area / "console-source.mp4"
    if not clip.exists():
        await asyncio.to_thread(make_test_clip, str(clip), seconds, size, 24.0, Progress())
    return clip


async def submit_encode(
    stack: EmbeddedStack,
    clip: Path,
    *,
    quality: encode_pb2.QualityMode.ValueType = encode_pb2.QUALITY_MODE_OFF,
) -> encode_pb2.Encode:
    out = clip.parent / f"console-out-{uuid.uuid4().hex[:8]}"
    async with stack.context().channel("optimus") as channel:
        reply = await encode_service_pb2_grpc.EncodeServiceStub(channel).SubmitEncode(
            encode_service_pb2.SubmitEncodeRequest(
                request_id=uuid.uuid4().hex,
                source_uri=clip.as_uri(),
                profiles=["360p", "540p"],
                output_uri=out.as_uri(),
                quality=quality,
                force=True,
            ),
            timeout=30,
        )
    return reply.encode


async def start_hanging_workflow(stack: EmbeddedStack, workflow_id: str) -> None:
    async with stack.context().channel("plato") as channel:
        plato = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        await plato.RegisterDefinition(
            workflow_service_pb2.RegisterDefinitionRequest(request_id="console-hang", source_yaml=HANG)
        )
        await plato.StartWorkflow(
            workflow_service_pb2.StartWorkflowRequest(
                request_id=workflow_id, definition_id="console-hang", workflow_id=workflow_id
            )
        )
        # Pages list it by state: wait until the engine has taken it up (slow on a loaded machine).
        deadline = time.monotonic() + 60
        while True:
            got = await plato.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id))
            if got.workflow.state == workflow_pb2.WORKFLOW_STATE_RUNNING:
                return
            assert time.monotonic() < deadline, f"{workflow_id} still {got.workflow.state} after 60 s"
            await asyncio.sleep(0.1)


async def wait_text(page: Any, selector: str, accept: Callable[[str], bool], timeout: float = 300) -> str:
    """Poll the text of ``selector`` until ``accept`` takes it (polled from Python: the console's CSP
    forbids the string evaluation Playwright's wait_for_function would do in the page)."""
    deadline = time.monotonic() + timeout
    while True:
        text = str(await page.inner_text(selector)).strip()
        if accept(text):
            return text
        if time.monotonic() > deadline:
            raise TimeoutError(f"{selector}: {text!r} after {timeout:.0f}s")
        await asyncio.sleep(0.1)
