"""What every encode handler uses, on :class:`EncodeApiBase`: the Plato stub, the settings, how a call
to Plato acts for the caller, and the workflow definition an encode is.

The handlers are split by what they do: submitting (:class:`cosmos.optimus.api.EncodeApi`, with the
checks of :mod:`cosmos.optimus.submission` and :mod:`cosmos.optimus.s3_checks`) and looking at or
cancelling encodes (:class:`cosmos.optimus.reads.EncodeReads`), mixins over this class as the
console's handlers are (:mod:`cosmos.console.base`): each keeps the ``self.workflows`` it had, and
mypy (strict) checks the attributes it touches against the annotations here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from cosmos.optimus.s3_checks import S3Checks
from cosmos.optimus.v1 import encode_service_pb2_grpc
from cosmos.plato.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime import batching
from cosmos.security import auth, job_policy, principals, storage

DEFINITION_ID = "encode-ladder"
DEFINITION_FILE = Path(__file__).with_name("workflows") / "encode-ladder.yaml"

# Optimus and Plato start together: a call waits for the channel to connect (up to the timeout)
# instead of failing fast while it backs off from an earlier refused connection.
PLATO_CALL: dict[str, Any] = {"wait_for_ready": True, "timeout": 15.0}


def for_caller() -> dict[str, Any]:
    """:data:`PLATO_CALL` acting for the caller of the RPC being handled: Plato authorizes *them*
    (their tenant and roles), not Optimus."""
    caller = auth.current()
    if not caller.is_person:
        return PLATO_CALL
    return {**PLATO_CALL, "metadata": ((principals.ON_BEHALF_OF, caller.delegation()),)}


class EncodeApiBase(encode_service_pb2_grpc.EncodeServiceServicer):
    """Answers from Plato; holds nothing but a channel."""

    def __init__(
        self,
        plato: grpc.aio.Channel,
        work_root: Path,
        stopping: asyncio.Event,
        storage_roots: Sequence[storage.Root] = (),
        job_policy: job_policy.JobPolicy | None = None,
    ) -> None:
        self.workflows = workflow_service_pb2_grpc.WorkflowServiceStub(plato)
        self.work_root = work_root.absolute()
        self.storage_roots = tuple(storage_roots)
        """Where callers' sources and outputs may lie (``<root>/<tenant>/...``); none: no file URI."""
        self.job_policy = job_policy
        """Stratum's per-tenant allow-list, for the ``image`` of an encode; None: any image."""
        self.stopping = stopping
        self.s3 = S3Checks()
        """The submit-time checks of ``s3://`` sources and outputs (their client made on first use)."""
        self.registered = False
        self._starts: dict[
            str,
            batching.Coalescer[
                workflow_service_pb2.StartWorkflowsEntry, workflow_service_pb2.StartWorkflowResponse
            ],
        ] = {}
        """Concurrent submits of one caller share ``StartWorkflows`` calls (under load most of a
        start's cost in both services is the RPC itself); a batch acts for one caller only."""
