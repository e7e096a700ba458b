"""The services the console calls: one gRPC channel per service, to its token port, with the stubs
the handlers use.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc

from cosmos.optimus.v1 import encode_service_pb2_grpc
from cosmos.plato.v1 import workflow_service_pb2_grpc
from cosmos.runtime import channels
from cosmos.runtime.server import KEEPALIVE_OPTIONS
from cosmos.security import tls
from cosmos.stratum.v1 import job_service_pb2_grpc, pool_service_pb2_grpc


@dataclasses.dataclass(frozen=True)
class Endpoints:
    """The services' token ports (``HOST:PORT``, replicas comma-separated) and the CA they are
    trusted by."""

    optimus: str
    plato: str
    stratum: str
    ca: Path


class Backend:
    """One TLS channel per service (server authentication only); each call carries the user's token."""

    def __init__(self, endpoints: Endpoints) -> None:
        ca = endpoints.ca.read_bytes()

        def dial(target: str, role: str) -> grpc.aio.Channel:
            address, extra = channels.dial_target(target)
            options = [*KEEPALIVE_OPTIONS, *tls.server_name_options(role), *extra]
            return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca), options=options)

        self._channels = [
            dial(endpoints.optimus, "optimus"),
            dial(endpoints.plato, "plato"),
            dial(endpoints.stratum, "stratum"),
        ]
        self.encodes = encode_service_pb2_grpc.EncodeServiceStub(self._channels[0])
        self.workflows = workflow_service_pb2_grpc.WorkflowServiceStub(self._channels[1])
        self.jobs = job_service_pb2_grpc.JobServiceStub(self._channels[2])
        self.pool = pool_service_pb2_grpc.PoolServiceStub(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)
