"""Reflection serves the protos' comments: ``grpcurl describe`` on a running service shows the docs
of services, methods, messages and fields (the descriptor set ``make gen`` writes with source info)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import security_harness

from cosmos.runtime import reflection_docs

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def test_the_descriptor_set_holds_every_cosmos_file_with_its_comments() -> None:
    files = reflection_docs.documented_files()
    assert "cosmos/plato/v1/workflow_service.proto" in files and "cosmos/stratum/v1/job.proto" in files
    assert all(f.source_code_info.location for f in files.values())


def test_grpcurl_describe_shows_the_comments(start_service: Callable[..., Any], nats_url: str) -> None:
    plato = start_service("plato", "--nats", nats_url)
    admin = security_harness.admin()
    tls = ["-cacert", str(admin.ca), "-cert", str(admin.cert), "-key", str(admin.key)]

    def describe(symbol: str) -> str:
        done = subprocess.run(
            [GRPCURL, *tls, plato.target, "describe", symbol], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    service = describe("cosmos.plato.v1.WorkflowService")
    assert "// Resumes a FAILED or CANCELLED workflow" in service, service
    message = describe("cosmos.plato.v1.StepExecution")
    assert "// Task queue the step's task was published to" in message, message
    assert "no_worker_since_time = 19" in message
    # Files outside Cosmos (google/*) still resolve: describe a request with a Struct field.
    assert ".google.protobuf.Struct input" in describe("cosmos.plato.v1.StartWorkflowRequest")
