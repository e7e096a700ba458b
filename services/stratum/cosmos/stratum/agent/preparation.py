"""Everything before a job's process starts: the cheap refusals, the disk-space check, a fresh work
dir, the staged inputs, and who the job will run as (the process sandbox's plan, or a container's
user and caps).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cosmos.stratum.agent import containers, failures, sandbox, sandbox_plan, staging
from cosmos.stratum.agent.attempt import Refused
from cosmos.stratum.v1 import job_pb2

if TYPE_CHECKING:
    from cosmos.stratum.agent.runner import JobRun


@dataclass(frozen=True)
class Prepared:
    """What the process is started with."""

    engine: containers.Engine | None
    """The container engine of a container job; None runs a local process."""
    plan: sandbox_plan.Plan | None = None
    """How the process sandbox confines a local process; None runs it as the agent's own user."""
    container_user: containers.ContainerUser | None = None
    """Who a container job runs as."""

    def output_owner(self) -> staging.Owner | None:
        """Who the job's stored outputs belong to: the uid it ran as, when the agent (root) made it
        someone else, so that its tenant's later jobs (an encode's clean-up) can remove them."""
        user = self.container_user
        if user is not None and not user.keep_id:
            return (user.uid, user.gid)
        if self.plan is not None and self.plan.identity is not None:
            return (self.plan.identity.uid, self.plan.identity.gid)
        return None


async def prepare(run: JobRun) -> Prepared:
    """Everything before the process starts; cheap refusals first."""
    if not run.spec.argv or not run.spec.argv[0]:
        raise Refused("INVALID_SPEC", "argv is empty")
    staging.check(run.stores, [*run.spec.inputs, *run.spec.outputs], run.work_dir)
    engine = await containers.resolve(run.spec)
    await asyncio.to_thread(_check_space, run)
    try:
        await asyncio.to_thread(_fresh_work_dir, run)
    except OSError as exc:
        full = staging.no_space(exc, "cannot create the work dir")
        if full is None:
            raise
        raise full from exc
    await staging.stage_inputs(run.stores, run.spec.inputs, run.work_dir, run.spec.tenant or "default")
    try:
        if run.jail is not None and engine is None:
            # After staging: the staged inputs become the job's too.
            plan = await asyncio.to_thread(
                run.jail.prepare, run.spec.tenant, run.work_dir, run.spec.resources.memory_bytes
            )
            return Prepared(engine, plan=plan)
        if engine is not None:
            user = await asyncio.to_thread(_container_identity, run, engine)
            return Prepared(engine, container_user=user)
    except (sandbox.SandboxError, OSError) as exc:
        raise Refused("SANDBOX_FAILED", f"cannot sandbox the job: {exc}") from exc
    return Prepared(engine)


def _container_identity(run: JobRun, engine: containers.Engine) -> containers.ContainerUser:
    """Who a container job runs as, its work dir made its own: the tenant's sandbox uid (as for a
    process job), else ``nobody``; never root. A rootless agent runs it as itself (keep-id)."""
    if os.geteuid() != 0:
        if engine.name == "podman":
            return containers.ContainerUser(keep_id=True)
        return containers.ContainerUser(os.geteuid(), os.getegid())
    ident = None
    if run.jail is not None:
        # The process sandbox's plan is not used (the container is the sandbox), only its uid and
        # the ownership it gives the work dir.
        ident = run.jail.prepare(run.spec.tenant, run.work_dir, run.spec.resources.memory_bytes).identity
    if ident is None:
        ident = sandbox.Identity(containers.UNPRIVILEGED_UID, containers.UNPRIVILEGED_UID)
        sandbox.chown_tree(run.work_dir, ident)
        os.chmod(run.work_dir, 0o700)
    return containers.ContainerUser(ident.uid, ident.gid)


def container_limits(jail: sandbox.Sandbox | None, spec: job_pb2.JobSpec) -> containers.ContainerLimits:
    """The job's declared resources as container caps, with the process sandbox's rlimits."""
    limits = jail.limits if jail is not None else sandbox.Limits()
    res = spec.resources
    return containers.ContainerLimits(
        cpus=res.cpu_millis / 1000 if res.cpu_millis > 0 else 0.0,
        memory_bytes=limits.memory_for(res.memory_bytes),
        pids=limits.processes,
        open_files=limits.open_files,
        file_size_bytes=limits.file_size_bytes,
    )


def _check_space(run: JobRun) -> None:
    """Refuse (``NO_SPACE``) a job whose inputs would not fit with the reserve left."""
    tenant = run.spec.tenant or "default"
    sources = []
    for i, artifact in enumerate(run.spec.inputs):
        if not artifact.uri.lower().startswith("file:"):
            continue  # other stores: size unknown before the fetch (ENOSPC then ends the job)
        # The same guard staging applies: only files this tenant may read are looked at.
        real = run.stores.guard(artifact.uri, tenant, f"spec.inputs[{i}].uri", is_input=True)
        sources.append(staging.file_uri_path(real))
    needed = failures.copied_bytes(sources, run.work_dir.parent)
    failures.check_space(run.work_dir, needed, run.limits.min_free_bytes)


def _fresh_work_dir(run: JobRun) -> None:
    # A re-sent assignment of the same attempt starts from scratch, not from a half-run's files.
    shutil.rmtree(run.work_dir, ignore_errors=True)
    run.work_dir.mkdir(parents=True)
