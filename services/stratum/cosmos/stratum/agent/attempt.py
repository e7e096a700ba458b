"""What every part of a job attempt shares: its tunables (:class:`RunLimits`), how it ended
(:class:`RunOutcome`), and the two errors that end it before its process runs.

The attempt itself is :class:`cosmos.stratum.agent.runner.JobRun`; this module is apart so that the
modules it is split into (preparation, process, supervision, reporting) can share these without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from cosmos import errors
from cosmos.stratum.v1 import job_pb2


@dataclass(frozen=True)
class RunLimits:
    """Tunables of a run; the defaults suit production, tests shrink them."""

    kill_grace_s: float = 10.0
    """Grace between SIGTERM and SIGKILL when the job times out."""
    leftover_grace_s: float = 1.0
    """Grace for processes the job left behind after its main process exited."""
    progress_interval_s: float = 0.25
    """At most one progress callback per this many seconds."""
    log_lines_per_s: int = 200
    log_bytes_per_s: int = 64 * 1024
    log_flush_s: float = 0.25
    line_bytes: int = 4096
    """Output lines are cut to this many bytes."""
    usage_interval_s: float = 0.5
    """How often the process tree is sampled for CPU time and RSS."""
    drain_s: float = 2.0
    """After exit, how long to wait for the pipes to close (a stray process may hold them)."""
    min_free_bytes: int = 128 << 20
    """Disk space a job must leave free on its work dir's disk: checked (with the inputs' size) before
    staging, and a job that fails with less left is classified ``NO_SPACE``."""


@dataclass(frozen=True)
class RunOutcome:
    """How an attempt ended."""

    state: job_pb2.JobState.ValueType
    """SUCCEEDED, FAILED, CANCELLED or TIMED_OUT."""
    result: job_pb2.JobResult
    """Exit code, signal, stored outputs, usage, error text and stderr tail."""
    reason: str = ""
    """Stable code of why it did not succeed: ``EXIT_CODE``, ``SIGNAL``, ``CANCELLED``, ``TIMED_OUT``,
    ``INVALID_SPEC``, ``UNSUPPORTED_RUNTIME``, ``UNSUPPORTED_SCHEME``, ``INPUT_FAILED``,
    ``OUTPUT_FAILED``, ``NO_SPACE``, ``SANDBOX_FAILED``, ``SPAWN_FAILED``, ``AGENT_ERROR``, or the
    code the job declared in its failure file; empty on success. Also ``result.failure_code``."""
    dropped_log_lines: int = 0
    """Log lines dropped over the rate limit."""
    malformed_progress_lines: int = 0
    """Progress channel lines that were not valid progress JSON."""


class Stopped(errors.CosmosError):
    """A cancel arrived while the attempt was not running a process."""


class Refused(errors.CosmosError):
    """The attempt cannot start; carries the reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
