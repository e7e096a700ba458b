"""The embedded stack: NATS with JetStream, Plato, Stratum, Optimus and a local agent on one machine."""
