"""Sizes Plato holds a workflow to, checked where values come in (docs/plato.md, "Limits").

Every value that travels as one NATS message (a workflow input in its start, a step input in its
task, a step output in its result) must fit one: the server's ``max_payload`` less
:data:`MESSAGE_HEADROOM` for the envelope, subject and headers. Inside Plato's store nothing is
bounded by a message: values over :data:`INLINE_VALUE_BYTES` are kept in the blob store. The
message-size figures are :mod:`cosmos.protocol.limits`' (shared with the workers), re-exported here.
"""

from __future__ import annotations

from cosmos.protocol.limits import (
    DEFAULT_MAX_VALUE_BYTES,
    MESSAGE_HEADROOM,
    NATS_DEFAULT_MAX_PAYLOAD,
    max_value_bytes,
)

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "ERROR_CHARS",
    "EVENT_PAYLOAD_BYTES",
    "INLINE_EFFECTS_BYTES",
    "INLINE_VALUE_BYTES",
    "MAX_HEADER_BYTES",
    "MESSAGE_HEADROOM",
    "NATS_DEFAULT_MAX_PAYLOAD",
    "clip",
    "max_value_bytes",
]

INLINE_VALUE_BYTES = 16 * 1024
"""Values larger than this are kept in the blob store, referenced from their record."""
INLINE_EFFECTS_BYTES = 128 * 1024
"""A transition's effects (step records, messages) larger than this go to the blob store."""
EVENT_PAYLOAD_BYTES = 64 * 1024
"""A history event's payload larger than this is left out (its value is in GetWorkflow)."""
ERROR_CHARS = 4096
"""Longest step error or failure reason kept; longer ones are cut (saying so)."""
MAX_HEADER_BYTES = 512 * 1024
"""The largest workflow header: a transition that would grow it past this fails the workflow."""


def clip(text: str, limit: int = ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"
