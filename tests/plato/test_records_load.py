"""Loading a workflow's split state never acts on a partial listing of its step records.

The chaos test once saw an encode finish with nothing published: after a restart, Plato loaded the
workflow from a listing that lacked the (long completed) ``audio`` step, so ``all assemble.completed
and audio.completed`` did not hold when the last assemble completed, and the workflow, with nothing
left running, finished COMPLETED. The header counts the step keys it has written; a load that lists
fewer lists again, then refuses (UNAVAILABLE: the input is redelivered, nothing is applied).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import engine_harness as unit
import nats
import pytest

from cosmos import errors
from cosmos.plato import records
from cosmos.plato.store import PlatoStore, Storage, StoreConfig


def test_the_header_counts_each_step_key_once_also_across_a_reset() -> None:
    run = unit.Run()
    unit.complete(run)
    assert run.state.record.step_keys == len(run.ids()) == 6
    # A reset discards work[1], work[2], merge, publish (tombstones keep their keys); running them
    # again writes over those keys: no new key.
    run.resume("r1", "work", input={"parts": ["x", "y", "z"]})
    for step_id in ("work[0]", "work[1]", "work[2]", "merge", "publish"):
        run.report(step_id)
    assert set(run.ids()) == {"probe", "work[0]", "work[1]", "work[2]", "merge", "publish"}
    assert run.state.record.step_keys == 6


@pytest.fixture
async def store(insecure_nats_url: str) -> AsyncIterator[PlatoStore]:
    nc = await nats.connect(insecure_nats_url)
    store = PlatoStore(nc, nc.jetstream(), StoreConfig(storage=Storage.MEMORY))
    await store.ensure()
    yield store
    await nc.close()


async def commit(store: PlatoStore, run: unit.Run) -> None:
    """Commit the run's last transition and apply its effects, as an evaluator does."""
    await records.commit(store, run.state, 1 << 20)
    await records.apply_effects(store, run.state)


async def test_a_load_lists_again_while_steps_are_missing_and_refuses_a_partial_state(
    store: PlatoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = unit.Run()
    await commit(store, run)
    for step_id in ("probe", "work[0]", "work[1]"):  # one commit each: probe is in no pending effect
        run.report(step_id)
        await commit(store, run)
    real = store.step_records
    short = {"left": 1}

    async def missing_probe(workflow_id: str):  # type: ignore[no-untyped-def]
        found = await real(workflow_id)
        if short["left"]:
            short["left"] -= 1
            found.pop("probe")
        return found

    monkeypatch.setattr(store, "step_records", missing_probe)
    loaded = await records.load(store, "wf-1")
    assert loaded is not None and short["left"] == 0
    assert sorted(s.step_id for s in loaded.table.steps()) == ["probe", "work[0]", "work[1]", "work[2]"]

    short["left"] = 100
    with pytest.raises(errors.UnavailableError, match="listed 3 of its 4 step records"):
        await records.load(store, "wf-1")


async def test_a_load_that_read_an_older_header_than_its_steps_never_writes_an_older_record_back(
    store: PlatoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two Platos once left a fan-out item SCHEDULED for good: one loaded the header of generation 2
    and then the step records, already at generation 3 (another process had committed and applied
    it in between). Its ``apply_effects`` wrote generation 2's record of the item with the newer
    record's revision as the expected one, so the compare-and-set passed and the completion was
    lost. Only the pending records newer than the stored ones may be written again."""
    run = unit.Run()
    await commit(store, run)
    run.report("probe")  # schedules work[0] and work[1]
    await commit(store, run)
    stale = await store.get_record("wf-1")
    assert stale is not None and stale[0].generation == 2
    run.report("work[0]")  # generation 3: work[0] completed, work[2] scheduled
    await commit(store, run)
    key = records.step_key("wf-1", "work[0]")
    done = await store.get_step(key)
    assert done is not None and done.generation == 3

    async def stale_header(workflow_id: str):  # type: ignore[no-untyped-def]
        return stale

    monkeypatch.setattr(store, "get_record", stale_header)
    loaded = await records.load(store, "wf-1")
    assert loaded is not None
    assert loaded.table.stored("work[0]").generation == 3
    await records.apply_effects(store, loaded)
    after = await store.get_step(key)
    assert after is not None and after.generation == 3
    assert after.step.state == done.step.state
