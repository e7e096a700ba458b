"""The dispatcher over a real NATS (in-process, no agent process): a job is wholly accepted or refused,
one that cannot be sent is failed with a reason instead of retried forever, and log lines are bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import security_harness

from cosmos import errors
from cosmos.runtime import jetstream
from cosmos.security.tls import TlsFiles
from cosmos.stratum.agent import progress
from cosmos.stratum.dispatcher import Dispatcher, core
from cosmos.stratum.placement import SchedulerAllocator
from cosmos.stratum.registry import AgentRegistry
from cosmos.stratum.store import EVENTS_STREAM, JobStore, events_subject
from cosmos.stratum.v1 import agent_pb2, agent_service_pb2, job_pb2

JS = job_pb2.JobState


@dataclass
class Pool:
    dispatcher: Dispatcher
    outbox: object


@pytest.fixture
async def pool(nats_url: str) -> AsyncIterator[Pool]:
    nc, js = await jetstream.connect(
        nats_url, "test-dispatcher", tls=TlsFiles.in_dir(security_harness.pki_dir(), "stratum")
    )
    store = JobStore(nc, js, memory=True)
    await store.ensure()
    registry = AgentRegistry()
    dispatcher = Dispatcher(store, registry, SchedulerAllocator())
    agent = agent_pb2.Agent(agent_id="agent-1")
    agent.inventory.cpu_millis = 4000
    agent.inventory.memory_bytes = 8 << 30
    agent.inventory.runtimes.append("process")
    record = registry.connect(agent)
    outbox = dispatcher.agent_connected(record.agent, [])
    yield Pool(dispatcher, outbox)
    await nc.close()


def spec(env_bytes: int = 0) -> job_pb2.JobSpec:
    job = job_pb2.JobSpec(argv=["true"])
    job.resources.cpu_millis = 100
    job.resources.memory_bytes = 64 << 20
    if env_bytes:
        job.env["BLOB"] = "x" * env_bytes
    return job


async def test_a_job_too_big_to_store_is_refused_and_left_nowhere(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "MAX_JOB_BYTES", 10_000)
    with pytest.raises(errors.InvalidArgumentError):
        await pool.dispatcher.submit("too-big", spec(env_bytes=20_000))
    assert not pool.dispatcher.jobs
    assert await pool.dispatcher.store.load_all() == []


async def test_a_job_that_cannot_be_sent_is_failed_once_with_a_reason(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, _ = await pool.dispatcher.submit("unsendable", spec(env_bytes=20_000))
    # Accepted, but (say the limit changed) its assignment no longer fits an agent's message.
    monkeypatch.setattr(core, "MAX_JOB_BYTES", 10_000)
    await pool.dispatcher._pass()
    await pool.dispatcher._pass()  # nothing left to retry: the second pass finds no job
    assert job.job_id not in pool.dispatcher.jobs
    stored = await pool.dispatcher.store.get(job.job_id)
    assert stored is not None and stored.state == JS.JOB_STATE_FAILED
    assert "an agent takes at most 10000" in stored.failure_reason
    assert stored.attempt == 0  # never ASSIGNED: no ghost attempt for cancel or a restart to chase
    assert pool.outbox.empty()  # type: ignore[attr-defined]


async def test_log_lines_are_cut_whatever_the_agent_sends(pool: Pool) -> None:
    job, _ = await pool.dispatcher.submit("chatty", spec())
    await pool.dispatcher._pass()
    assignment = pool.outbox.get_nowait()  # type: ignore[attr-defined]
    assert assignment.assign.job_id == job.job_id
    batch = agent_service_pb2.JobLogBatch(job_id=job.job_id, attempt=1)
    batch.lines.add(stream=job_pb2.LOG_STREAM_STDOUT, text="x" * (10 << 20))
    await pool.dispatcher.agent_message("agent-1", agent_service_pb2.ConnectRequest(logs=batch))
    last = await pool.dispatcher.store.js.get_last_msg(EVENTS_STREAM, events_subject(job.job_id))
    event = job_pb2.JobEvent.FromString(last.data or b"")
    assert event.log.text.startswith("x" * progress.MAX_LINE_BYTES)
    assert event.log.text.endswith(progress.TRUNCATED_MARK)
    assert len(event.log.text.encode()) < progress.MAX_LINE_BYTES + 64


async def test_a_result_whose_store_fails_leaves_the_job_as_it_was_and_is_applied_when_sent_again(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS losing a node while an agent reports a result: the live job must not run ahead of its
    stored record (it once went SUCCEEDED in memory only, and the result, sent again after the
    agent's reconnect, was refused as stale: the job hung for good)."""
    job, _ = await pool.dispatcher.submit("flaky-store", spec())
    await pool.dispatcher._pass()
    assert pool.outbox.get_nowait().assign.job_id == job.job_id  # type: ignore[attr-defined]
    started = agent_service_pb2.JobStarted(job_id=job.job_id, attempt=1)
    await pool.dispatcher.agent_message("agent-1", agent_service_pb2.ConnectRequest(started=started))
    finished = agent_service_pb2.ConnectRequest(
        finished=agent_service_pb2.JobFinished(
            job_id=job.job_id, attempt=1, final_state=JS.JOB_STATE_SUCCEEDED
        )
    )
    real_save = pool.dispatcher.store.save

    async def unavailable(record: job_pb2.Job) -> None:
        raise errors.UnavailableError("NATS lost a node")

    monkeypatch.setattr(pool.dispatcher.store, "save", unavailable)
    with pytest.raises(errors.UnavailableError):
        await pool.dispatcher.agent_message("agent-1", finished)
    live = pool.dispatcher.jobs[job.job_id]
    assert (live.state, live.attempt, live.agent_id) == (JS.JOB_STATE_RUNNING, 1, "agent-1")
    assert live.HasField("result") is False and not live.HasField("end_time")

    monkeypatch.setattr(pool.dispatcher.store, "save", real_save)
    await pool.dispatcher.agent_message("agent-1", finished)  # sent again after the reconnect
    assert job.job_id not in pool.dispatcher.jobs
    stored = await pool.dispatcher.store.get(job.job_id)
    assert stored is not None and stored.state == JS.JOB_STATE_SUCCEEDED
    acks = []
    while not pool.outbox.empty():  # type: ignore[attr-defined]
        acks.append(pool.outbox.get_nowait())  # type: ignore[attr-defined]
    assert [a.ack.accepted for a in acks if a.WhichOneof("message") == "ack"] == [True]


async def test_a_pass_cut_short_by_nats_gives_back_what_it_placed_and_the_next_pass_assigns_all(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs placed in a pass but not assigned when NATS failed must not stay allocated: every later
    pass failed with "already allocated" and nothing was placed again (the node-loss test hung)."""
    jobs = [(await pool.dispatcher.submit(f"cut-{n}", spec()))[0] for n in range(3)]
    real_save = pool.dispatcher.store.save

    async def unavailable(record: job_pb2.Job) -> None:
        raise errors.UnavailableError("NATS lost a node")

    monkeypatch.setattr(pool.dispatcher.store, "save", unavailable)
    with pytest.raises(errors.UnavailableError):
        await pool.dispatcher._pass()
    assert all(pool.dispatcher.jobs[j.job_id].state == JS.JOB_STATE_QUEUED for j in jobs)
    monkeypatch.setattr(pool.dispatcher.store, "save", real_save)
    await pool.dispatcher._pass()
    assert {pool.dispatcher.jobs[j.job_id].state for j in jobs} == {JS.JOB_STATE_ASSIGNED}


@pytest.mark.parametrize("how", ["stream broke", "lease expired"])
async def test_a_requeue_whose_store_fails_is_done_by_the_next_pass(
    pool: Pool, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A dead agent's attempt was requeued once, from a background task (a broken stream) or from the
    one pass that saw the lease expire; a failed write there (the leader lease pausing under load)
    left the job on the dead agent until Stratum restarted."""
    job, _ = await pool.dispatcher.submit("orphan", spec())
    await pool.dispatcher._pass()
    started = agent_service_pb2.JobStarted(job_id=job.job_id, attempt=1)
    await pool.dispatcher.agent_message("agent-1", agent_service_pb2.ConnectRequest(started=started))
    real_save = pool.dispatcher.store.save

    async def unavailable(record: job_pb2.Job) -> None:
        raise errors.UnavailableError("this Stratum replica's leader lease lapsed")

    monkeypatch.setattr(pool.dispatcher.store, "save", unavailable)
    if how == "stream broke":
        monkeypatch.setattr(pool.dispatcher.config, "reconnect_grace", 0.0)
        pool.dispatcher.agent_disconnected("agent-1", pool.outbox, broken=True)  # type: ignore[arg-type]
        pool.dispatcher.registry.disconnect("agent-1")
        await asyncio.gather(*pool.dispatcher._background, return_exceptions=True)
    else:
        pool.dispatcher.registry.agents["agent-1"].lease_deadline = 0.0
    with pytest.raises(errors.UnavailableError):
        await pool.dispatcher._pass()
    assert pool.dispatcher.jobs[job.job_id].agent_id == "agent-1"
    monkeypatch.setattr(pool.dispatcher.store, "save", real_save)
    await pool.dispatcher._pass()
    stored = await pool.dispatcher.store.get(job.job_id)
    assert stored is not None and stored.state == JS.JOB_STATE_QUEUED and stored.agent_id == ""
    assert "agent-1" in stored.failure_reason
