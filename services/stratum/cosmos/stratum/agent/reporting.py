"""How an attempt's end is reported: the :class:`RunOutcome` of a process that has ended (its exit
classified, its outputs stored, its result file read), and of an attempt that never ran one.

Everything reported goes through the job's secret mask.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

from cosmos.stratum.agent import failures, staging
from cosmos.stratum.agent.attempt import RunOutcome, Stopped
from cosmos.stratum.agent.preparation import Prepared
from cosmos.stratum.agent.result_file import RESULT_FILE, read_result
from cosmos.stratum.agent.supervision import Ended
from cosmos.stratum.v1 import job_pb2

if TYPE_CHECKING:
    from cosmos.stratum.agent.runner import JobRun


def outcome(
    run: JobRun,
    state: job_pb2.JobState.ValueType,
    reason: str,
    error: str,
    *,
    result: job_pb2.JobResult | None = None,
    dropped: int = 0,
    malformed: int = 0,
    failure_class: job_pb2.FailureClass.ValueType | None = None,
) -> RunOutcome:
    """The outcome ``run`` ended with: ``error`` and its stderr tail masked, ``reason`` classified."""
    result = result or job_pb2.JobResult()
    result.error = run.mask(error)
    result.failure_code = reason
    result.failure_class = failures.classify(reason) if failure_class is None else failure_class
    result.stderr_tail = run.mask(run.stderr_tail())
    return RunOutcome(state, result, reason, dropped, malformed)


async def report(
    run: JobRun, prepared: Prepared, ended: Ended, *, dropped: int, malformed: int
) -> RunOutcome:
    """The outcome of a process that has ended: stopped, failed (as the job declared, for want of
    disk, by a signal or an exit code) or succeeded (once its outputs are stored)."""
    spec = run.spec
    status = ended.status
    result = job_pb2.JobResult(exit_code=status.exit_code, signal=status.signal)
    result.usage.CopyFrom(ended.usage)

    def ended_with(
        state: job_pb2.JobState.ValueType,
        reason: str,
        error: str,
        failure_class: job_pb2.FailureClass.ValueType | None = None,
    ) -> RunOutcome:
        return outcome(
            run,
            state,
            reason,
            error,
            result=result,
            dropped=dropped,
            malformed=malformed,
            failure_class=failure_class,
        )

    kill_note = (
        f"; still running {_seconds(ended.grace)} after SIGTERM, killed with SIGKILL"
        if ended.escalated
        else ""
    )
    if ended.stop_reason == "CANCELLED":
        return ended_with(job_pb2.JOB_STATE_CANCELLED, "CANCELLED", "cancelled" + kill_note)
    if ended.stop_reason == "TIMED_OUT":
        return ended_with(
            job_pb2.JOB_STATE_TIMED_OUT,
            "TIMED_OUT",
            f"timed out after {_seconds(ended.timeout)}" + kill_note,
        )
    tail = run.stderr_tail()
    tail_note = f"\n{tail}" if tail else ""
    if status.signal or status.exit_code != 0:
        how = f"exited with code {status.exit_code}"
        if status.signal:
            how = f"killed by signal {_signal_name(status.signal)}"
        declared = failures.read_declared(run.work_dir / failures.FAILURE_FILE)
        if declared is not None:
            # The job knows best why it failed (a corrupt source is not worth a retry).
            text = f"{declared.code}: {declared.message or how} ({how})"
            return ended_with(job_pb2.JOB_STATE_FAILED, declared.code, text, declared.failure_class)
        full = await asyncio.to_thread(_disk_full, run, tail)
        if full:
            return ended_with(job_pb2.JOB_STATE_FAILED, "NO_SPACE", f"NO_SPACE: {full} ({how}){tail_note}")
    if status.signal:
        return ended_with(
            job_pb2.JOB_STATE_FAILED,
            "SIGNAL",
            f"killed by signal {_signal_name(status.signal)}{tail_note}",
        )
    if status.exit_code != 0:
        return ended_with(
            job_pb2.JOB_STATE_FAILED, "EXIT_CODE", f"exited with code {status.exit_code}{tail_note}"
        )
    if spec.outputs:
        try:
            stored = await run._interruptible(
                staging.stage_outputs(
                    run.stores, spec.outputs, run.work_dir, spec.tenant or "default", prepared.output_owner()
                )
            )
        except Stopped:
            return ended_with(job_pb2.JOB_STATE_CANCELLED, "CANCELLED", "cancelled while storing outputs")
        except staging.StagingError as exc:
            return ended_with(job_pb2.JOB_STATE_FAILED, exc.reason, f"{exc.reason}: {exc}")
        result.outputs.extend(stored)
    try:
        output = read_result(run.work_dir / RESULT_FILE)
    except ValueError as exc:
        return ended_with(job_pb2.JOB_STATE_FAILED, "BAD_RESULT", f"BAD_RESULT: {exc}")
    if output is not None:
        result.output.update(output)
    return ended_with(job_pb2.JOB_STATE_SUCCEEDED, "", "")


def _disk_full(run: JobRun, tail: str) -> str:
    """Why the failed job's disk counts as full ("" when it does not)."""
    work_dir = run.work_dir
    reserve = run.limits.min_free_bytes
    if failures.says_disk_full(tail):
        return "disk full: the job reported 'No space left on device'"
    try:
        free = failures.free_bytes(work_dir)
    except OSError:
        return ""
    if free < reserve:
        return f"disk full: {work_dir} has {free} bytes free (reserve {reserve})"
    return ""


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)


def _seconds(value: float) -> str:
    """``30s``, ``1.5s``: durations as people write them."""
    return f"{value:g}s"
