"""A server on the shared runtime whose GetWorkflow takes a while: the subject of the shutdown tests.

Run as ``python slow_server.py DELAY_SECONDS GRACE_SECONDS PKI_DIR`` (it serves Plato's certificate
from PKI_DIR); prints ``PORT <n>`` once serving.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from cosmos.runtime import logs
from cosmos.runtime.config import Address
from cosmos.runtime.server import Server, ServerConfig, ServiceBinding
from cosmos.security.config import Security
from cosmos.security.tls import TlsFiles


class SlowWorkflows(workflow_service_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def GetWorkflow(
        self, request: workflow_service_pb2.GetWorkflowRequest, context: Any
    ) -> workflow_service_pb2.GetWorkflowResponse:
        await asyncio.sleep(self.delay)
        return workflow_service_pb2.GetWorkflowResponse(
            workflow=workflow_pb2.Workflow(workflow_id=request.workflow_id)
        )


async def main(delay: float, grace: float, pki_dir: Path) -> None:
    security = Security(tls=TlsFiles.in_dir(pki_dir, "plato"))
    server = Server(
        ServerConfig("slow", Address("127.0.0.1", 0), grace_period=grace, security=security),
        [
            ServiceBinding(
                "cosmos.plato.v1.WorkflowService",
                SlowWorkflows(delay),  # type: ignore[abstract]
                workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server,
            )
        ],
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await server.start()
    print(f"PORT {server.port}", flush=True)
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    logs.configure_logging("slow", level="info", fmt="json")
    asyncio.run(main(float(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])))
