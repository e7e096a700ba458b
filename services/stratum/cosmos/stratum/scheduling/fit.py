"""Fit checks: the nodes a demand fits on now, and exactly whether it fits on one node.

:func:`candidates` filters with the arrays of the :class:`~.node_index.NodeIndex`. The arrays are
only a filter: nodes whose GPUs differ in model or memory ("mixed" nodes) and demands with a node
selector or runtime constraint get the exact check (:func:`fits`) on the candidates.
"""

from __future__ import annotations

import numpy as np

from cosmos.stratum.scheduling.model import Demand, GpuState, NodeState
from cosmos.stratum.scheduling.node_index import MIXED, IntArray, NodeIndex


def candidates(index: NodeIndex, demand: Demand) -> IntArray:
    """Slots of the schedulable nodes where ``demand`` fits now, ascending."""
    mask = index.eligible & (index.cpu_free >= demand.cpu_milli) & (index.memory_free >= demand.memory_bytes)
    if demand.gpu_count:
        if demand.fractional:
            mask &= index.max_free >= demand.gpu_milli
        else:
            mask &= index.full_gpus >= demand.gpu_count
        if demand.models:
            mask &= index.accept_lut(demand.models)[index.model_code + 2]
        if demand.gpu_memory_bytes:
            mask &= index.gpu_memory >= demand.gpu_memory_bytes
    slots = np.flatnonzero(mask)
    exact = bool(demand.node_selector or demand.runtimes)
    if len(slots) and (exact or (demand.gpu_count and index.mixed_nodes)):
        # Uniform nodes passed the arrays exactly; only mixed nodes, label selectors and runtime
        # constraints (rare: jobs with an image) need a look at each node.
        keep = [
            slot
            for slot in slots.tolist()
            if (not exact and index.model_code[slot] != MIXED) or fits(index.node_at(slot), demand)
        ]
        slots = np.asarray(keep, dtype=np.int64)
    return slots


def fits(node: NodeState, demand: Demand) -> bool:
    """Exact check: does ``demand`` fit on ``node`` as it is now?"""
    if node.cpu_free < demand.cpu_milli or node.memory_free < demand.memory_bytes:
        return False
    if any(node.labels.get(key) != value for key, value in demand.node_selector):
        return False
    if demand.runtimes and not demand.runtimes & node.runtimes:
        return False
    return len(usable_gpus(node, demand)) >= demand.gpu_count


def usable_gpus(node: NodeState, demand: Demand) -> list[GpuState]:
    """The node's GPUs that could take (their part of) ``demand`` now, in index order."""
    if not demand.gpu_count:
        return []
    need = demand.gpu_milli
    models = demand.models
    memory = demand.gpu_memory_bytes
    return [
        gpu
        for gpu in node.gpus
        if gpu.free_milli >= need and (not models or gpu.model in models) and gpu.memory_bytes >= memory
    ]
