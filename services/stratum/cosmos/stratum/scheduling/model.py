"""The scheduler's data model: nodes (agents) with their GPUs, demands (queued jobs) and placements.

Units are integers throughout so that arithmetic is exact and results are deterministic: CPU in
millicores, memory in bytes, GPU capacity in milli-GPUs (``MILLI`` = one whole device).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MILLI = 1000
"""Milli-GPUs in one whole GPU."""
MAX_GPUS_PER_JOB = 8
"""Largest whole-GPU count one job may ask for (all on one node)."""
PROCESS_RUNTIME = "process"
"""The runtime every node has: jobs run as host processes."""


def normalize_model(model: str) -> str:
    """GPU model names match exactly but case-insensitively ("a100" is "A100")."""
    return model.strip().upper()


@dataclass(slots=True)
class GpuState:
    """One GPU of a node and how much of it is still free."""

    index: int
    """Device index on the host (what ``CUDA_VISIBLE_DEVICES`` names)."""
    model: str
    """Model name, normalised to upper case (see :func:`normalize_model`)."""
    free_milli: int = MILLI
    """Unallocated milli-GPUs, 0..1000; 1000 means no job holds any share of it."""
    memory_bytes: int = 0
    """Device memory in bytes (0 = unknown); only checked against ``Demand.gpu_memory_bytes``."""
    uuid: str = ""
    """Device UUID, carried for the caller (not used for placement)."""

    def __post_init__(self) -> None:
        self.model = normalize_model(self.model)


@dataclass(slots=True)
class NodeState:
    """A node (one agent's host) as the scheduler sees it.

    Create fresh nodes with :meth:`idle`. Once added to a :class:`~.cluster.Cluster` the cluster owns
    the object and mutates the ``*_free`` fields on allocate/release; treat it as read-only then.
    """

    node_id: str
    cpu_milli: int
    """Schedulable CPU in millicores."""
    memory_bytes: int
    """Schedulable memory in bytes."""
    cpu_free: int
    memory_free: int
    gpus: list[GpuState] = field(default_factory=list)
    schedulable: bool = True
    """False while the agent is cordoned, draining, lost or disconnected: no new placements."""
    labels: dict[str, str] = field(default_factory=dict)
    runtimes: frozenset[str] = frozenset({PROCESS_RUNTIME})
    """Job runtimes the node's agent has (``process``, ``podman``, ``docker``)."""

    @classmethod
    def idle(
        cls,
        node_id: str,
        cpu_milli: int,
        memory_bytes: int,
        gpus: Iterable[GpuState | str] = (),
        *,
        labels: Mapping[str, str] | None = None,
        schedulable: bool = True,
        runtimes: Iterable[str] = (PROCESS_RUNTIME,),
    ) -> NodeState:
        """A node with nothing allocated; ``gpus`` as states or bare model names (indices 0, 1, ...)."""
        states = [
            gpu if isinstance(gpu, GpuState) else GpuState(index=position, model=gpu)
            for position, gpu in enumerate(gpus)
        ]
        return cls(
            node_id=node_id,
            cpu_milli=cpu_milli,
            memory_bytes=memory_bytes,
            cpu_free=cpu_milli,
            memory_free=memory_bytes,
            gpus=states,
            schedulable=schedulable,
            labels=dict(labels or {}),
            runtimes=frozenset(runtimes),
        )

    @property
    def gpu_free_milli(self) -> int:
        """Unallocated GPU capacity of the node in milli-GPUs."""
        return sum(gpu.free_milli for gpu in self.gpus)


@dataclass(frozen=True, slots=True)
class Demand:
    """What one queued job needs, plus what orders it in the queue.

    GPU forms: ``gpu_count`` whole GPUs (``gpu_milli`` 1000, 1..8 devices on one node, each fully
    free), or a share of one GPU (``gpu_count`` 1, ``gpu_milli`` 1..999; several jobs may share a
    device). ``Demand("j", gpu_count=2)`` means two whole GPUs, ``Demand("j", gpu_milli=250)`` a
    quarter of one. ``models`` lists acceptable GPU models (empty = any), matched case-insensitively.
    """

    job_id: str
    cpu_milli: int = 0
    memory_bytes: int = 0
    gpu_count: int = 0
    gpu_milli: int = 0
    """Milli-GPUs per GPU: 1000 for whole GPUs, less for a share of one GPU; 0 without GPUs."""
    models: frozenset[str] = frozenset()
    gpu_memory_bytes: int = 0
    """Minimum device memory of each GPU, 0 = any."""
    node_selector: tuple[tuple[str, str], ...] = ()
    """Node labels that must all match, as sorted (key, value) pairs; empty = any node."""
    tenant: str = "default"
    priority: int = 0
    """Higher runs first; waiting raises it (aging, see :class:`~.queue.JobQueue`)."""
    enqueue_time: float = 0.0
    """When the job (this attempt) entered the queue, in the caller's clock (seconds)."""
    runtimes: frozenset[str] = frozenset()
    """Runtimes that can run the job, one of which the node must have (a job with an image:
    ``{"podman", "docker"}``); empty = any node (every node runs processes)."""

    def __post_init__(self) -> None:
        count, milli = self.gpu_count, self.gpu_milli
        if count > 0 and milli == 0:
            milli = MILLI
        elif count == 0 and 0 < milli < MILLI:
            count = 1
        if self.cpu_milli < 0 or self.memory_bytes < 0 or self.gpu_memory_bytes < 0:
            raise ValueError(f"demand {self.job_id!r}: resources must not be negative")
        if not 0 <= count <= MAX_GPUS_PER_JOB:
            raise ValueError(f"demand {self.job_id!r}: gpu_count must be 0..{MAX_GPUS_PER_JOB}, got {count}")
        if count == 0 and milli != 0:
            raise ValueError(f"demand {self.job_id!r}: gpu_milli {milli} without GPUs")
        if count > 0 and not 0 < milli <= MILLI:
            raise ValueError(f"demand {self.job_id!r}: gpu_milli must be 1..{MILLI}, got {milli}")
        if count > 1 and milli != MILLI:
            raise ValueError(f"demand {self.job_id!r}: a GPU share is for one GPU, not {count}")
        object.__setattr__(self, "gpu_count", count)
        object.__setattr__(self, "gpu_milli", milli)
        object.__setattr__(self, "models", frozenset(normalize_model(m) for m in self.models if m.strip()))
        object.__setattr__(self, "node_selector", tuple(sorted(self.node_selector)))
        object.__setattr__(self, "runtimes", frozenset(self.runtimes))
        object.__setattr__(self, "tenant", self.tenant or "default")

    @property
    def fractional(self) -> bool:
        """True for a share of one GPU (gpu_milli < 1000)."""
        return 0 < self.gpu_milli < MILLI

    @property
    def gpu_total_milli(self) -> int:
        """All GPU capacity asked for, in milli-GPUs."""
        return self.gpu_count * self.gpu_milli

    def shape(self) -> tuple[object, ...]:
        """Everything that decides where the demand fits (not who asks or when)."""
        return (
            self.cpu_milli,
            self.memory_bytes,
            self.gpu_count,
            self.gpu_milli,
            self.models,
            self.gpu_memory_bytes,
            self.node_selector,
            self.runtimes,
        )


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a job runs and what it holds there."""

    job_id: str
    node_id: str
    gpu_indices: tuple[int, ...]
    """Device indices on the node (for ``CUDA_VISIBLE_DEVICES``); empty without GPUs."""
    gpu_milli: int
    """Milli-GPUs held on each of those GPUs: 1000 for whole GPUs, less for a shared one."""
    cpu_milli: int
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class Assignment:
    """A scheduling decision: the demand and where it was placed."""

    demand: Demand
    placement: Placement
