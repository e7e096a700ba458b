"""Stratum's placement scheduler: pure Python (numpy for the node index), no I/O, deterministic.

- :mod:`.model`: ``NodeState``/``GpuState`` (an agent's capacity and what is free), ``Demand`` (a
  queued job's needs, tenant, priority, enqueue time), ``Placement`` (node, GPU indices, milli-GPUs
  per GPU), ``Assignment``.
- :mod:`.cluster`: ``Cluster``, the nodes and the allocations on them (``PlacementError``), built on
  :mod:`.node_index` (each node in a slot, per-slot numpy arrays); :mod:`.fit`: the vectorised filter
  of the nodes a demand fits on and the exact check.
- :mod:`.mix` and :mod:`.fragmentation`: the learned typical task mix and node fragmentation.
- :mod:`.policies`: ``fgd`` (default), ``fgd-paper`` (the paper's measure), ``best-fit``,
  ``first-fit``.
- :mod:`.queue`: ``JobQueue``, priority with aging and weighted-DRF fair share.
- :mod:`.scheduler`: ``Scheduler``, the entry point for the server.

Nothing here knows protobuf: the server converts agents and job specs (see
``cosmos.stratum.placement``).
"""

from cosmos.stratum.scheduling.cluster import Cluster, PlacementError
from cosmos.stratum.scheduling.mix import DEFAULT_MIX, TaskClass, TaskMix, WorkloadMix
from cosmos.stratum.scheduling.model import (
    MAX_GPUS_PER_JOB,
    MILLI,
    PROCESS_RUNTIME,
    Assignment,
    Demand,
    GpuState,
    NodeState,
    Placement,
    normalize_model,
)
from cosmos.stratum.scheduling.policies import Policy
from cosmos.stratum.scheduling.queue import JobQueue
from cosmos.stratum.scheduling.scheduler import Scheduler, unfit_reason

__all__ = [
    "DEFAULT_MIX",
    "MAX_GPUS_PER_JOB",
    "MILLI",
    "PROCESS_RUNTIME",
    "Assignment",
    "Cluster",
    "Demand",
    "GpuState",
    "JobQueue",
    "NodeState",
    "Placement",
    "PlacementError",
    "Policy",
    "Scheduler",
    "TaskClass",
    "TaskMix",
    "WorkloadMix",
    "normalize_model",
    "unfit_reason",
]
