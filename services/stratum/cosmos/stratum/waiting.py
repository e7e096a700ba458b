"""Jobs no agent could run *right now* wait for one, with a deadline, instead of being refused.

Right after a Stratum restart the pool is empty until its agents reconnect (each retries with a
backoff of at most a few seconds, well within a lease), and a pool may lose its only GPU host for a
while. So a job is refused at submit (``UNSATISFIABLE_RESOURCES``, ``UNSUPPORTED_RUNTIME``) only when
the pool is *complete* — some agent is connected, and every agent that held jobs before a restart has
reconnected (or a lease has passed since the start) — and still no agent of the pool could ever run
it. Otherwise it is queued; if no agent that could run it has appeared after ``timeout`` seconds
(``cosmos stratum --unplaceable-timeout``) it fails with the reason. The clock starts when a sweep
first sees the job unplaceable, and again after a restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from cosmos.stratum.agent import containers
from cosmos.stratum.placement import PoolAllocator
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.v1 import job_pb2

SWEEP_INTERVAL = 1.0
"""Seconds between two looks at the queue for jobs no agent could run (each costs a fit check per job)."""


def unplaceable(spec: job_pb2.JobSpec, registry: AgentRegistry, allocator: PoolAllocator) -> str | None:
    """Why no agent of the pool could ever run ``spec`` (even idle), or None if one could."""
    engines = containers.acceptable_engines(spec)
    if spec.image and not any(set(engines) & set(a.inventory.runtimes) for a in registry.sorted()):
        wanted = " or ".join(engines) or "a container runtime"
        return f"no agent in the pool has {wanted} for a job with an image"
    return allocator.could_ever_fit(spec)


@dataclass
class AgentWait:
    """Which queued jobs have waited too long for an agent that could run them."""

    timeout: float
    """Seconds a queued job may wait for an agent that could run it before it fails."""
    settle: float
    """Seconds after start during which the pool is not complete yet (agents reconnecting)."""
    started: float = field(default_factory=time.monotonic)
    """Monotonic time this Stratum started."""
    _since: dict[str, float] = field(default_factory=dict)
    _swept: float = 0.0

    def pool_complete(self, registry: AgentRegistry) -> bool:
        """Whether the pool has an agent and every agent expected back has had its chance to reconnect:
        a submit no agent could run is then refused at once rather than queued."""
        records = list(registry.agents.values())
        if not any(record.connected for record in records):
            return False
        if time.monotonic() - self.started >= self.settle:
            return True
        # An agent that held jobs before the restart and has not reconnected to this process yet.
        return not any(not r.connected and not r.agent.HasField("connect_time") for r in records)

    def overdue(
        self, queued: Iterable[job_pb2.Job], registry: AgentRegistry, allocator: PoolAllocator
    ) -> list[tuple[job_pb2.Job, str]]:
        """Queued jobs no agent could run for ``timeout`` seconds, with why (one sweep a second)."""
        now = time.monotonic()
        if now - self._swept < SWEEP_INTERVAL:
            return []
        self._swept = now
        waiting: dict[str, float] = {}
        late = []
        for job in queued:
            reason = unplaceable(job.spec, registry, allocator)
            if reason is None:
                continue
            since = waiting[job.job_id] = self._since.get(job.job_id, now)
            if now - since >= self.timeout:
                late.append((job, reason))
        self._since = waiting
        return late
