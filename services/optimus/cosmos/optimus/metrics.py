"""Optimus's metrics (docs/metrics.md), on the process registry of :mod:`cosmos.runtime.metrics`.

An encode's final state is its workflow's: ``cosmos_plato_workflows_total{definition="encode-ladder"}``.
"""

from __future__ import annotations

from prometheus_client import Counter

from cosmos.runtime.metrics import REGISTRY

ENCODES_SUBMITTED = Counter(
    "cosmos_optimus_encodes_submitted",
    "Encodes accepted by SubmitEncode, by outcome: started (a new encode), deduplicated (the same "
    "request again: the existing encode), resumed (a failed encode retried).",
    ["outcome"],
    registry=REGISTRY,
)
ENCODES_CANCELLED = Counter(
    "cosmos_optimus_encodes_cancelled",
    "Encodes cancelled through CancelEncode.",
    registry=REGISTRY,
)

for _outcome in ("started", "deduplicated", "resumed"):
    ENCODES_SUBMITTED.labels(_outcome)  # shown at 0 before the first submit
