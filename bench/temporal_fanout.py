"""The benchmark's fan-out workflow for Temporal: one step, K no-op steps in parallel, a final step.

Kept in its own module, importing nothing but ``temporalio``, so that Temporal's workflow sandbox can
re-import it cheaply (the sandbox re-imports a workflow's module, which must be deterministic).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

STEP_TIMEOUT = timedelta(seconds=60)


@activity.defn(name="first")
async def first(items: list[int]) -> dict[str, Any]:
    """The first step: no work."""
    return {"count": len(items)}


@activity.defn(name="noop")
async def noop(item: int) -> dict[str, Any]:
    """One fanned-out step: no work."""
    return {"item": item}


@activity.defn(name="last")
async def last(count: int) -> dict[str, Any]:
    """The final step: no work."""
    return {"done": count}


@workflow.defn(name="bench-fanout")
class FanoutWorkflow:
    """``first`` → ``noop`` once per item, all at once → ``last`` (K + 2 activities)."""

    @workflow.run
    async def run(self, items: list[int]) -> dict[str, Any]:
        await workflow.execute_activity(first, items, start_to_close_timeout=STEP_TIMEOUT)
        await asyncio.gather(
            *(workflow.execute_activity(noop, item, start_to_close_timeout=STEP_TIMEOUT) for item in items)
        )
        return await workflow.execute_activity(last, len(items), start_to_close_timeout=STEP_TIMEOUT)


ACTIVITIES: list[Callable[..., Any]] = [first, noop, last]
