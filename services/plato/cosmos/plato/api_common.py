"""What every part of Plato's gRPC API shares: request checks, the not-found error, and
:class:`WorkflowRpcs`, the state and workflow reads that each group of WorkflowService RPCs builds on
(see :mod:`cosmos.plato.api`)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from cosmos import errors
from cosmos.plato import pollers, records
from cosmos.plato.store import PlatoStore
from cosmos.plato.v1 import engine_pb2, workflow_pb2, workflow_service_pb2_grpc
from cosmos.security import auth

Context = Any
WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_=-]{0,127}$")
RESPONSE_VALUE_BYTES = 2 * 1024 * 1024
"""Bytes of large values (inputs, outputs kept as blobs) one read answers with; past it a value
reads as ``{"omitted": {"bytes": N, ...}}``, so a response stays under gRPC's 4 MiB default."""
# One logger for every part, named as when the API was one module: its records keep their name.
log = logging.getLogger("cosmos.plato.api")


def require(value: str, field: str) -> None:
    errors.require(value, field, message=f"{field}: is required")


def check_id(value: str, field: str) -> None:
    require(value, field)
    if not _ID.match(value):
        raise errors.invalid(
            field, f"{value!r} must match {_ID.pattern} (letters, digits, _ = -; at most 128)"
        )


def workflow_not_found(workflow_id: str) -> errors.NotFoundError:
    return errors.NotFoundError(
        f"workflow {workflow_id!r} does not exist",
        reason=errors.Reason.ERROR_REASON_WORKFLOW_NOT_FOUND,
        metadata={"workflow_id": workflow_id},
    )


class WorkflowRpcs(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """The base of every group of ``WorkflowService`` RPCs: the store, and a workflow as its caller
    may see it."""

    def __init__(
        self,
        store: PlatoStore,
        stopping: asyncio.Event,
        created: Callable[[str, engine_pb2.WorkflowRecord, int], None] | None = None,
    ) -> None:
        self.store = store
        self.stopping = stopping
        self.created = created
        """Told of every record a start created, with its revision (the evaluator caches it)."""
        self.pollers = pollers.Pollers(lambda: store.js)
        """Which task queues have a worker: GetWorkflow marks steps that wait on one with none."""

    async def _record(self, workflow_id: str) -> engine_pb2.WorkflowRecord:
        """The workflow's header (its workflow without steps)."""
        require(workflow_id, "workflow_id")
        loaded = await records.load_header(self.store, workflow_id, RESPONSE_VALUE_BYTES)
        # Another tenant's workflow does not exist for this caller.
        if loaded is None or not auth.current().sees(loaded[0].workflow.tenant):
            raise workflow_not_found(workflow_id)
        return loaded[0]

    async def _workflow(self, workflow_id: str) -> workflow_pb2.Workflow:
        """The whole public workflow, steps included."""
        await self._record(workflow_id)
        state = await records.load(self.store, workflow_id, RESPONSE_VALUE_BYTES)
        if state is None:
            raise workflow_not_found(workflow_id)
        return state.workflow()
