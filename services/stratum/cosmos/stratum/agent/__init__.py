"""The Stratum agent: one process per host, connected to Stratum by a bidirectional stream."""
