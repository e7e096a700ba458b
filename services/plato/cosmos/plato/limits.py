"""Sizes Plato holds a workflow to, checked where values come in (docs/plato.md, "Limits").

Every value that travels as one NATS message (a workflow input in its start, a step input in its
task, a step output in its result) must fit one: the server's ``max_payload`` less
:data:`MESSAGE_HEADROOM` for the envelope, subject and headers. Inside Plato's store nothing is
bounded by a message: values over :data:`INLINE_VALUE_BYTES` are kept in the blob store.
"""

from __future__ import annotations

NATS_DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default ``max_payload``."""
MESSAGE_HEADROOM = 16 * 1024
"""Bytes of a NATS message kept for what travels with a value (envelope, subject, headers)."""
DEFAULT_MAX_VALUE_BYTES = NATS_DEFAULT_MAX_PAYLOAD - MESSAGE_HEADROOM
"""The largest workflow input, step input or step output with the default ``max_payload``."""
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


def max_value_bytes(max_payload: int) -> int:
    """The largest single value for a NATS server announcing ``max_payload``."""
    return max(1024, max_payload - MESSAGE_HEADROOM)


def clip(text: str, limit: int = ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"
