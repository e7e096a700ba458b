"""The Plato engine: a pure state machine (:mod:`.machine`) driven by the JetStream evaluator."""
