"""The job API's side of the dispatcher: submit (validated, deduplicated by request id, secrets
sealed, wholly accepted or refused), get and cancel."""

from __future__ import annotations

import uuid

from cosmos import errors
from cosmos.runtime import telemetry, wellknown
from cosmos.security import secrets
from cosmos.stratum import metrics, validation
from cosmos.stratum.dispatcher import core
from cosmos.stratum.dispatcher.core import JS, TERMINAL, DispatcherCore
from cosmos.stratum.v1 import job_pb2

_NAMESPACE = uuid.UUID("0d7b0c2e-51d6-4f5e-a8c2-6c9f0b3a7e21")


class Submission(DispatcherCore):
    """Submit, get and cancel."""

    async def submit(self, request_id: str, spec_in: job_pb2.JobSpec) -> tuple[job_pb2.Job, bool]:
        """Queue a job (or return the one this ``request_id`` already made); True if deduplicated."""
        validation.check_spec(
            spec_in, self.registry, self.allocator, self.policy, self._wait.pool_complete(self.registry)
        )
        spec = job_pb2.JobSpec()
        spec.CopyFrom(spec_in)
        spec.tenant = spec.tenant or "default"
        # From here on the spec holds only the secrets' names: it is stored, returned and compared.
        values = dict(spec.secrets)
        for name in values:
            spec.secrets[name] = secrets.REDACTED
        if values and self.keyring is None:
            raise errors.FailedPreconditionError(
                "this job has secrets, but Stratum has no secrets key to encrypt them at rest: start it "
                "with --secrets-key-file (or --pki-dir holding secrets.key)",
                reason=errors.Reason.ERROR_REASON_SECRETS_NOT_CONFIGURED,
                metadata={"setting": "--secrets-key-file"},
            )
        # Two tenants' request ids never name the same job.
        job_id = "job-" + uuid.uuid5(_NAMESPACE, f"{spec.tenant}\n{request_id}").hex
        existing = self.jobs.get(job_id) or await self.store.get(job_id)
        if existing is not None:
            # Compared with the secrets redacted: a retry is recognised by the secrets' names.
            if existing.spec != spec:
                raise errors.AlreadyExistsError(
                    f"request_id {request_id!r} was used for a different job",
                    reason=errors.Reason.ERROR_REASON_REQUEST_ID_REUSED,
                    metadata={"job_id": job_id},
                )
            if existing.state == JS.JOB_STATE_QUEUED and job_id not in self.jobs:
                # Stored by a submit whose answer was lost (NATS went away after the save): queue it now.
                self.jobs[job_id] = existing
                self._kick.set()
            return existing, True
        job = job_pb2.Job(job_id=job_id, spec=spec, state=JS.JOB_STATE_QUEUED, request_id=request_id)
        if values:
            assert self.keyring is not None
            job.sealed_secrets.CopyFrom(self.keyring.seal(values, job_id=job_id))
        job.trace_context.update(telemetry.inject_headers())
        job.create_time.CopyFrom(wellknown.now())
        if job.ByteSize() > core.MAX_JOB_BYTES:
            raise errors.InvalidArgumentError(
                f"the job would be {job.ByteSize()} bytes; at most {core.MAX_JOB_BYTES}: send a smaller spec",
                violations=[errors.FieldViolation("spec", f"at most {core.MAX_JOB_BYTES} bytes")],
            )
        # Wholly accepted or refused: the job joins the queue only once its record is stored.
        await self._transition(job, JS.JOB_STATE_QUEUED)
        self.jobs[job_id] = job
        metrics.JOBS_SUBMITTED.inc()
        self._kick.set()
        return job, False

    async def get(self, job_id: str) -> job_pb2.Job:
        """A job, live or finished, or NOT_FOUND."""
        job = self.jobs.get(job_id) or await self.store.get(job_id)
        if job is None:
            raise self.not_found(job_id)
        return job

    @staticmethod
    def not_found(job_id: str) -> errors.NotFoundError:
        """The answer for a job that does not exist (or is another tenant's)."""
        return errors.NotFoundError(
            f"job {job_id!r} does not exist",
            reason=errors.Reason.ERROR_REASON_JOB_NOT_FOUND,
            metadata={"job_id": job_id},
        )

    async def cancel(self, job_id: str, reason: str) -> job_pb2.Job:
        """Cancel a job: at once if queued, through its agent if running."""
        job = await self.get(job_id)
        if job.state in TERMINAL:
            if job.state == JS.JOB_STATE_CANCELLED:
                return job
            raise errors.FailedPreconditionError(
                f"job {job_id!r} already ended ({JS.Name(job.state)})",
                reason=errors.Reason.ERROR_REASON_ALREADY_TERMINAL,
                metadata={"job_id": job_id},
            )
        job.failure_reason = reason or "cancelled"
        if job.state == JS.JOB_STATE_QUEUED or job.agent_id not in self.outboxes:
            self.allocator.release(job.job_id)
            await self._finish(job, JS.JOB_STATE_CANCELLED)
            return job
        # Stored before the agent hears of it: after a restart the attempt is cancelled, not resumed.
        job.cancel_requested = True
        await self.store.save(job)
        self._send_cancel(job)
        return job
