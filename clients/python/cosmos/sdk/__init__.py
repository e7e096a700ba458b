"""The Python SDK for step handlers: register a function per task queue, run a :class:`Worker`.

NATS accepts a worker by its certificate (a user certificate with the ``worker`` role; ``cosmos up``
writes one to ``.cosmos/pki/worker.pem``):

>>> tls = TlsFiles.in_dir(Path(".cosmos/pki"), "worker")
>>> worker = Worker("nats://127.0.0.1:4222", tls=tls)
>>> @worker.handler("encode-segment")
... async def encode(step: StepContext) -> dict[str, object]:
...     await step.heartbeat(percent=50)
...     return {"uri": "file:///out/seg.mp4"}
>>> await worker.run(stopping)
"""

from cosmos.sdk.watch import watch_workflow
from cosmos.sdk.worker import StepContext, StepError, Worker, WorkerConfig

__all__ = ["StepContext", "StepError", "Worker", "WorkerConfig", "watch_workflow"]
