"""The scheduler: nodes + queue + policy. Pure, single-threaded, deterministic given its inputs.

Typical use by the server::

    scheduler = Scheduler()                       # FGD; or Scheduler("best-fit")
    scheduler.add_node(NodeState.idle("host-a", 32_000, 64 << 30, ["A100", "A100"]))
    if (reason := scheduler.unfit_reason(demand)) is not None:
        ...  # refuse the job: it can never run on this pool
    scheduler.submit(demand)                      # queue it (and learn the task mix from it)
    for assignment in scheduler.schedule(now):    # on submit, job end, node change, timer
        ...  # send assignment.placement to its agent
    scheduler.release(job_id)                     # the job ended: free what it held

A server that keeps its queue elsewhere (e.g. in a store) calls :meth:`Scheduler.observe` on
submit and :meth:`Scheduler.schedule_demands` with the queued demands instead. Agents map to
nodes with :meth:`Scheduler.upsert_node` (inventory or state changed), :meth:`Scheduler.set_schedulable`
(cordon, drain, lost) and :meth:`Scheduler.remove_node`; jobs found running after a restart are
re-recorded with :meth:`Scheduler.assume`.

The scheduler never does I/O and keeps no clock: callers pass ``now`` (the same clock as
``Demand.enqueue_time``).
"""

from __future__ import annotations

from collections.abc import Iterable

from cosmos.stratum.scheduling.cluster import Cluster
from cosmos.stratum.scheduling.mix import TaskMix, WorkloadMix
from cosmos.stratum.scheduling.model import Assignment, Demand, NodeState, Placement
from cosmos.stratum.scheduling.policies import FgdPlacer, Policy, make_placer
from cosmos.stratum.scheduling.queue import JobQueue


class Scheduler:
    """Places queued demands on nodes with a policy; tracks allocations until released.

    ``policy``: see :mod:`.policies`. ``queue``: ordering parameters (aging, fair-share weights).
    ``workload``: the task-mix learner (its prior is the mix until jobs are observed);
    ``learn_mix=False`` keeps the prior. A learned mix is adopted when it moved more than
    ``mix_drift`` (L1) from the one in use, checked after ``mix_check_every`` observations, then
    at doubling intervals up to every ``mix_check_max``.

    ``starvation_after``: a demand that has waited this long (seconds) and still does not fit
    holds back the demands behind it in the pass that compete for the same resources (GPU jobs
    with an overlapping model set, or everything for a CPU-only demand), so that capacity freed by
    ending jobs goes to it instead of being taken by smaller jobs forever. ``None`` disables this.
    It applies only when the demand would fit on the schedulable nodes if they were empty.
    """

    def __init__(
        self,
        policy: Policy | str = Policy.FGD,
        *,
        queue: JobQueue | None = None,
        workload: WorkloadMix | None = None,
        learn_mix: bool = True,
        mix_check_every: int = 64,
        mix_check_max: int = 1024,
        mix_drift: float = 0.15,
        starvation_after: float | None = 600.0,
    ) -> None:
        self.policy = Policy(policy)
        self.cluster = Cluster()
        self.queue = queue if queue is not None else JobQueue()
        self.workload = workload if workload is not None else WorkloadMix()
        self.learn_mix = learn_mix
        self.mix_check_max = mix_check_max
        self._check_interval = mix_check_every
        self.mix_drift = mix_drift
        self.starvation_after = starvation_after
        self.placer = make_placer(self.policy, self.workload.snapshot())
        self._unchecked = 0

    # ----- nodes -----

    def add_node(self, node: NodeState) -> None:
        """A new agent: its capacity becomes schedulable (if ``node.schedulable``)."""
        self.cluster.add_node(node)

    def update_node(self, node: NodeState) -> None:
        """An agent re-registered (inventory, labels or state changed); its jobs stay allocated."""
        self.cluster.update_node(node)

    def upsert_node(self, node: NodeState) -> None:
        """:meth:`add_node` for a new id, else :meth:`update_node`."""
        if node.node_id in self.cluster:
            self.cluster.update_node(node)
        else:
            self.cluster.add_node(node)

    def remove_node(self, node_id: str) -> list[str]:
        """An agent is gone: returns the jobs it held (released here; requeue them as new attempts)."""
        return self.cluster.remove_node(node_id)

    def set_schedulable(self, node_id: str, schedulable: bool) -> None:
        """Cordon/drain/lost (False) or ready again (True)."""
        self.cluster.set_schedulable(node_id, schedulable)

    # ----- jobs -----

    def submit(self, demand: Demand) -> None:
        """Queue a demand and count it in the learned task mix."""
        self.queue.push(demand)
        self.observe(demand)

    def cancel(self, job_id: str) -> Demand | None:
        """Take a job out of the queue (not its allocation: use :meth:`release`)."""
        return self.queue.remove(job_id)

    def schedule(self, now: float) -> list[Assignment]:
        """Try every queued demand in queue order; place those that fit now and return them.

        Placed demands leave the queue and are allocated; the rest stay queued. A shape that did
        not fit is not tried again in the same pass (capacity only shrinks within a pass).
        """
        return self._pass(self.queue, now)

    def schedule_demands(self, demands: Iterable[Demand], now: float) -> list[Assignment]:
        """:meth:`schedule` for callers that keep the queue themselves: order ``demands`` like the
        queue would (aging, fair share), place those that fit now. The own queue is not touched
        and ``demands`` are not learned into the mix (use :meth:`observe` when they are submitted).
        """
        queue = JobQueue(
            aging_per_second=self.queue.aging_per_second,
            fair_share_weight=self.queue.fair_share_weight,
            tenant_weights=self.queue.tenant_weights,
        )
        for demand in demands:
            queue.push(demand)
        return self._pass(queue, now)

    def observe(self, demand: Demand) -> None:
        """Count a submitted demand in the learned task mix (done by :meth:`submit`)."""
        if self.learn_mix:
            self.workload.observe(demand)
            self._unchecked += 1
            if self._unchecked >= self._check_interval:
                # A new mix makes FGD rescore every node, so it is looked at less and less often
                # and adopted only when it moved.
                self._unchecked = 0
                self._check_interval = min(2 * self._check_interval, self.mix_check_max)
                self._maybe_refresh_mix()

    def _pass(self, queue: JobQueue, now: float) -> list[Assignment]:
        placed: list[Assignment] = []
        failed: set[tuple[object, ...]] = set()
        holding: list[Demand] = []
        # The queue asks for every tenant's share before each pick; it only changes when one of
        # the tenant's demands is placed.
        shares: dict[str, float] = {}

        def share(tenant: str) -> float:
            value = shares.get(tenant)
            if value is None:
                value = shares[tenant] = self.dominant_share(tenant)
            return value

        for demand in queue.ordered(now, share):
            shape = demand.shape()
            if shape in failed or any(_competes(demand, first) for first in holding):
                continue
            placement = self.place(demand)
            if placement is None:
                failed.add(shape)
                if self._starving(demand, now):
                    holding.append(demand)
                continue
            queue.remove(demand.job_id)
            shares.pop(demand.tenant, None)
            placed.append(Assignment(demand, placement))
        return placed

    def place(self, demand: Demand) -> Placement | None:
        """Place one demand now, bypassing the queue; ``None`` if it fits nowhere at the moment."""
        slots = self.cluster.candidates(demand)
        if not len(slots):
            return None
        slot, gpu_indices = self.placer.choose(self.cluster, demand, slots)
        placement = Placement(
            job_id=demand.job_id,
            node_id=self.cluster.node_at(slot).node_id,
            gpu_indices=gpu_indices,
            gpu_milli=demand.gpu_milli,
            cpu_milli=demand.cpu_milli,
            memory_bytes=demand.memory_bytes,
        )
        self.cluster.allocate(demand, placement)
        return placement

    def assume(self, demand: Demand, placement: Placement) -> None:
        """Record an allocation made earlier (e.g. jobs found running after a restart)."""
        self.cluster.allocate(demand, placement)

    def release(self, job_id: str) -> Placement | None:
        """A job ended: free its resources; ``None`` if it held none."""
        return self.cluster.release(job_id)

    # ----- questions -----

    def could_ever_fit(self, demand: Demand) -> bool:
        """Whether some node (cordoned ones included) could run ``demand`` when empty."""
        return self.unfit_reason(demand) is None

    def unfit_reason(self, demand: Demand, *, schedulable_only: bool = False) -> str | None:
        """Why no node could ever run ``demand`` (by total capacity), or ``None`` if one could."""
        return unfit_reason(self.cluster, demand, schedulable_only=schedulable_only)

    def dominant_share(self, tenant: str) -> float:
        """The tenant's weighted dominant share: max over CPU, memory, GPU of held / total."""
        usage = self.cluster.tenant_usage.get(tenant)
        if usage is None:
            return 0.0
        share = max(
            (used / total for used, total in zip(usage, self.cluster.totals, strict=True) if total > 0),
            default=0.0,
        )
        return share / self.queue.weight(tenant)

    @property
    def mix(self) -> TaskMix:
        """The task mix the FGD policy currently scores against."""
        if isinstance(self.placer, FgdPlacer):
            return self.placer.mix
        return self.workload.snapshot()

    # ----- internals -----

    def _maybe_refresh_mix(self) -> None:
        """Adopt the learned mix when it drifted: rescoring all nodes is not free, so not always."""
        if not isinstance(self.placer, FgdPlacer):
            return
        fresh = self.workload.snapshot()
        if fresh.distance(self.placer.mix) > self.mix_drift:
            self.placer.set_mix(fresh)

    def _starving(self, demand: Demand, now: float) -> bool:
        if self.starvation_after is None or now - demand.enqueue_time < self.starvation_after:
            return False
        return unfit_reason(self.cluster, demand, schedulable_only=True) is None


def _competes(demand: Demand, holder: Demand) -> bool:
    """Whether ``demand`` would take capacity a starving ``holder`` is waiting for."""
    if not holder.gpu_count:
        return True
    if not demand.gpu_count:
        return False
    return not holder.models or not demand.models or bool(holder.models & demand.models)


def unfit_reason(cluster: Cluster, demand: Demand, *, schedulable_only: bool = False) -> str | None:
    """Why ``demand`` fits no node of ``cluster`` even when empty, or ``None`` if it fits one."""
    nodes = [node for node in cluster.nodes() if node.schedulable or not schedulable_only]
    if not nodes:
        return "there are no nodes" + (" accepting jobs" if schedulable_only else "")
    selected = [node for node in nodes if all(node.labels.get(k) == v for k, v in demand.node_selector)]
    if not selected:
        return f"no node has the labels {dict(demand.node_selector)}"
    if demand.runtimes:
        selected = [node for node in selected if demand.runtimes & node.runtimes]
        if not selected:
            wanted = " or ".join(sorted(demand.runtimes))
            return f"no node has a container runtime ({wanted}) for a job with an image"
    for node in selected:
        gpus = sum(
            1
            for gpu in node.gpus
            if (not demand.models or gpu.model in demand.models)
            and gpu.memory_bytes >= demand.gpu_memory_bytes
        )
        if (
            node.cpu_milli >= demand.cpu_milli
            and node.memory_bytes >= demand.memory_bytes
            and gpus >= demand.gpu_count
        ):
            return None
    if all(node.cpu_milli < demand.cpu_milli for node in selected):
        return (
            f"needs {demand.cpu_milli} CPU millis; the largest node has {max(n.cpu_milli for n in selected)}"
        )
    if all(node.memory_bytes < demand.memory_bytes for node in selected):
        largest = max(n.memory_bytes for n in selected)
        return f"needs {demand.memory_bytes} bytes of memory; the largest node has {largest}"
    models = "|".join(sorted(demand.models)) or "any model"
    memory = f" with at least {demand.gpu_memory_bytes} bytes each" if demand.gpu_memory_bytes else ""
    return (
        f"needs {demand.gpu_count} GPU(s) of {models}{memory} on one node with its CPU and memory; none has"
    )
