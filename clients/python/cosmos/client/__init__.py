"""The Cosmos client for programs: build Stratum jobs, submit them, follow and cancel them.

>>> from cosmos.client import Job, StratumClient
>>> job = Job.builder().command("python3", "-c", "print('hi')").cpu(0.5).memory("256Mi").build()
>>> async with StratumClient.connect() as stratum:
...     handle = await stratum.submit(job)
...     done = await handle.result()

Scripts without an event loop: ``run_job(job)`` submits and waits (blocking).

Errors form one tree rooted in :class:`CosmosError` (see :mod:`cosmos.client.errors`). For step
handlers (code Plato calls) see :mod:`cosmos.sdk`.
"""

from cosmos.client.errors import (
    CosmosError,
    InvalidJobError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobTimedOutError,
    RpcError,
)
from cosmos.client.jobs import Artifact, Job, JobBuilder, parse_memory
from cosmos.client.keys import encode_request_id
from cosmos.client.stratum import JobHandle, StratumClient, run_job

__all__ = [
    "Artifact",
    "CosmosError",
    "InvalidJobError",
    "Job",
    "JobBuilder",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobHandle",
    "JobTimedOutError",
    "RpcError",
    "StratumClient",
    "encode_request_id",
    "parse_memory",
    "run_job",
]
