"""The queue of pending demands and the order in which the scheduler tries them.

Order = effective priority, highest first (a multifactor priority, as in Slurm):

    effective = priority + aging_per_second x waited_seconds - fair_share_weight x share(tenant)

- **Aging** makes waiting jobs rise without bound, so a low-priority job eventually overtakes a
  stream of newer high-priority ones (by default one priority point per minute waited).
- **Fair share** is weighted dominant resource fairness (DRF): ``share(tenant)`` is the tenant's
  largest fraction of any cluster resource it holds (CPU, memory, GPU), divided by its weight. It
  is re-read after every placement in a pass, so two tenants with equal priorities are served
  alternately towards equal dominant shares (progressive filling).

Ties go to the earlier enqueue time, then to submission order. Aging is the same rate for all,
so each tenant's pending list has a fixed order (by priority - rate x enqueue time) and picking
the next demand costs one comparison per tenant.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterator, Mapping
from itertools import count

from cosmos.stratum.scheduling.model import Demand

_Entry = tuple[float, float, int, str]
"""(-static priority, enqueue time, sequence, job id): ascending = best first."""


class JobQueue:
    """Pending demands by tenant, yielded in effective-priority order with fair share."""

    def __init__(
        self,
        *,
        aging_per_second: float = 1 / 60,
        fair_share_weight: float = 10.0,
        tenant_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.aging_per_second = aging_per_second
        self.fair_share_weight = fair_share_weight
        self.tenant_weights = dict(tenant_weights or {})
        """Tenant -> weight (default 1): a tenant with weight 2 is entitled to twice the share."""
        self._pending: dict[str, tuple[Demand, _Entry]] = {}
        self._by_tenant: dict[str, list[_Entry]] = {}
        self._sequence = count()

    def push(self, demand: Demand) -> None:
        """Queue a demand (``ValueError`` if its job id is already queued)."""
        if demand.job_id in self._pending:
            raise ValueError(f"job {demand.job_id!r} is already queued")
        static = demand.priority - self.aging_per_second * demand.enqueue_time
        entry = (-static, demand.enqueue_time, next(self._sequence), demand.job_id)
        self._pending[demand.job_id] = (demand, entry)
        insort(self._by_tenant.setdefault(demand.tenant, []), entry)

    def remove(self, job_id: str) -> Demand | None:
        """Take a demand out of the queue (placed or cancelled); ``None`` if it is not queued."""
        item = self._pending.pop(job_id, None)
        if item is None:
            return None
        demand, entry = item
        entries = self._by_tenant[demand.tenant]
        del entries[bisect_left(entries, entry)]
        if not entries:
            del self._by_tenant[demand.tenant]
        return demand

    def get(self, job_id: str) -> Demand | None:
        """The queued demand with this job id, if any."""
        item = self._pending.get(job_id)
        return None if item is None else item[0]

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._pending

    def weight(self, tenant: str) -> float:
        """The tenant's fair-share weight."""
        return self.tenant_weights.get(tenant, 1.0)

    def effective_priority(self, demand: Demand, now: float, share: float = 0.0) -> float:
        """The demand's priority at ``now`` given its tenant's (weighted) dominant share."""
        waited = max(0.0, now - demand.enqueue_time)
        return demand.priority + self.aging_per_second * waited - self.fair_share_weight * share

    def ordered(self, now: float, share: Callable[[str], float]) -> Iterator[Demand]:
        """Every queued demand, best first; ``share(tenant)`` is asked again before each pick.

        Works on a snapshot of the queue: demands pushed while iterating wait for the next pass, and
        demands removed while iterating are skipped.
        """
        if len(self._by_tenant) == 1:
            # One tenant: fair share cannot reorder anything, its own order is the order.
            for entry in list(next(iter(self._by_tenant.values()))):
                item = self._pending.get(entry[3])
                if item is not None:
                    yield item[0]
            return
        lists = {tenant: list(entries) for tenant, entries in self._by_tenant.items()}
        heads = dict.fromkeys(lists, 0)
        tenants = sorted(lists)
        while tenants:
            best_tenant = ""
            best_key: tuple[float, float, int] | None = None
            for tenant in tenants:
                neg_static, enqueued, sequence, _ = lists[tenant][heads[tenant]]
                effective = -neg_static + self.aging_per_second * now - self.fair_share_weight * share(tenant)
                key = (-effective, enqueued, sequence)
                if best_key is None or key < best_key:
                    best_key, best_tenant = key, tenant
            entry = lists[best_tenant][heads[best_tenant]]
            heads[best_tenant] += 1
            if heads[best_tenant] == len(lists[best_tenant]):
                tenants.remove(best_tenant)
            item = self._pending.get(entry[3])
            if item is not None:
                yield item[0]
