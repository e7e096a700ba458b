"""What every Cosmos server shares: configuration, logging, tracing, rich errors and the gRPC host."""
