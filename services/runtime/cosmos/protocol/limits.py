"""How large a value may be to travel as one NATS message (a workflow input in its start, a step input
in its task, a step output in its result): the server's ``max_payload`` less :data:`MESSAGE_HEADROOM`
for the envelope, subject and headers. Plato checks values where they come in; a worker checks an
output before posting it.
"""

from __future__ import annotations

NATS_DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default ``max_payload``."""
MESSAGE_HEADROOM = 16 * 1024
"""Bytes of a NATS message kept for what travels with a value (envelope, subject, headers)."""
DEFAULT_MAX_VALUE_BYTES = NATS_DEFAULT_MAX_PAYLOAD - MESSAGE_HEADROOM
"""The largest workflow input, step input or step output with the default ``max_payload``."""


def max_value_bytes(max_payload: int) -> int:
    """The largest single value for a NATS server announcing ``max_payload``."""
    return max(1024, max_payload - MESSAGE_HEADROOM)
