"""Engine inputs as handlers and the API post them, with their de-duplication ids, and the
idempotency key of a step attempt.

One place for the message ids, so a result posted by the SDK over NATS and the same result posted
through ``StepService.CompleteStep`` are recognised as one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cosmos.common.v1 import progress_pb2
from cosmos.plato.v1 import engine_pb2
from cosmos.protocol import values


def idempotency_key(workflow_id: str, step_id: str, attempt: int) -> str:
    """The key handlers receive for one attempt (``StepTask.idempotency_key``); also the task's
    Nats-Msg-Id, and the default idempotency key of a Stratum job a step runs."""
    return f"{workflow_id}/{step_id}/{attempt}"


def start_msg_id(workflow_id: str) -> str:
    """Message id of a workflow's start."""
    return f"{workflow_id}:start"


def result(
    workflow_id: str,
    step_id: str,
    attempt: int,
    *,
    output: Mapping[str, Any] | None = None,
    error: str = "",
    non_retryable: bool = False,
    task_token: bytes = b"",
) -> tuple[engine_pb2.EngineInput, str]:
    """The result of one attempt (success when ``error`` is empty) and its message id."""
    inp = engine_pb2.EngineInput(
        workflow_id=workflow_id,
        result=engine_pb2.StepResultInput(
            step_id=step_id,
            attempt=attempt,
            success=not error,
            output=values.dict_to_struct(output),
            error=error,
            non_retryable=non_retryable,
            task_token=task_token,
        ),
    )
    return inp, f"{workflow_id}/{step_id}/{attempt}:result"


def heartbeat(
    workflow_id: str,
    step_id: str,
    attempt: int,
    progress: progress_pb2.Progress | None,
    beat: str | int,
    *,
    task_token: bytes = b"",
) -> tuple[engine_pb2.EngineInput, str]:
    """Heartbeat number ``beat`` of one attempt and its message id."""
    inp = engine_pb2.EngineInput(
        workflow_id=workflow_id,
        heartbeat=engine_pb2.StepHeartbeatInput(step_id=step_id, attempt=attempt, task_token=task_token),
    )
    inp.heartbeat.send_time.GetCurrentTime()
    if progress is not None:
        inp.heartbeat.progress.CopyFrom(progress)
    return inp, f"{workflow_id}/{step_id}/{attempt}:hb:{beat}"
