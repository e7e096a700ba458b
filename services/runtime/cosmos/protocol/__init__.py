"""What Plato and the step workers (the SDK, the built-in Stratum runner) must agree on, and nothing
else: the names on NATS (:mod:`~cosmos.protocol.subjects`), the engine inputs a worker posts with
their de-duplication ids and the steps' idempotency keys (:mod:`~cosmos.protocol.inputs`), the value
codec (:mod:`~cosmos.protocol.values`) and the size of a value that travels as one message
(:mod:`~cosmos.protocol.limits`).

Plato and the SDK both import this package; neither imports the other.
"""
