"""A workflow's state in memory: its header record and a table of its step records.

The evaluator keeps one :class:`WorkflowState` per cached workflow across transitions, so a
transition costs what it changes, not what the workflow holds: the table keeps its indexes (by id,
by name, step activations, per-name counts of states) up to date as the machine touches steps, and
remembers which steps a transition changed (``dirty``) so only those are written
(:mod:`cosmos.plato.records`). Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from cosmos.plato.v1 import engine_pb2, workflow_pb2

SS = workflow_pb2.StepState


class StepTable:
    """Every step instance of one workflow, with the indexes the state machine asks about."""

    def __init__(self) -> None:
        self.records: dict[str, engine_pb2.StepRecord] = {}
        """Step records by step id, in scheduling (ordinal) order."""
        self.by_name: dict[str, list[workflow_pb2.StepExecution]] = {}
        self.activations: dict[int, engine_pb2.Activation] = {}
        """Step activations by id (each lives in its step's record)."""
        self.revisions: dict[str, int] = {}
        """KV revision of each step's stored record (absent: not stored yet)."""
        self.dirty: set[str] = set()
        """Steps changed since the last commit."""
        self.items: dict[int, list[dict[str, Any]]] = {}
        """Fan-out items by fan-out activation id."""
        self.retired: dict[str, engine_pb2.StepRecord] = {}
        """Tombstones of instances a reset discarded, by step id (not part of the workflow; they keep
        the key's last attempt so a later instance of the same id is fenced from the old one)."""
        self._counted: dict[str, int] = {}
        self._tally: dict[str, Counter[int]] = {}
        self._unsynced: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: engine_pb2.StepRecord) -> engine_pb2.StepRecord:
        """Take ``record`` in (the table keeps this very object); indexes follow."""
        step = record.step
        self.records[step.step_id] = record
        self.by_name.setdefault(step.step_name, []).append(step)
        if record.activation.activation_id:
            self.activations[record.activation.activation_id] = record.activation
        self._unsynced.add(step.step_id)
        return record

    def retire(self, step_id: str) -> engine_pb2.StepRecord:
        """Discard an instance (a reset): it leaves the table and a tombstone is written in its place
        with the next commit (see :attr:`retired`)."""
        record = self.records.pop(step_id)
        step = record.step
        same = [s for s in self.by_name.get(step.step_name, []) if s.step_id != step_id]
        if same:
            self.by_name[step.step_name] = same
        else:
            self.by_name.pop(step.step_name, None)
        if record.activation.activation_id:
            self.activations.pop(record.activation.activation_id, None)
        before = self._counted.pop(step_id, None)
        if before is not None:
            self._tally[step.step_name][before] -= 1
        self._unsynced.discard(step_id)
        tombstone = engine_pb2.StepRecord(
            step=workflow_pb2.StepExecution(
                step_id=step_id,
                step_name=step.step_name,
                attempt=step.attempt,
                state=SS.STEP_STATE_CANCELLED,
                error="discarded by a reset of the workflow",
            ),
            ordinal=record.ordinal,
            discarded=True,
        )
        self.retired[step_id] = tombstone
        self.dirty.add(step_id)
        return record

    def first_attempt(self, step_id: str) -> int:
        """The attempt a new instance ``step_id`` starts at: 1, or past a discarded one's last."""
        tombstone = self.retired.pop(step_id, None)
        return 1 if tombstone is None else tombstone.step.attempt + 1

    def stored(self, step_id: str) -> engine_pb2.StepRecord:
        """What the next commit writes for ``step_id``: its record, or its tombstone."""
        found = self.records.get(step_id)
        return found if found is not None else self.retired[step_id]

    def touch(self, step_id: str) -> None:
        """The step changed (or may have): write it with the next commit, recount its state."""
        self.dirty.add(step_id)
        self._unsynced.add(step_id)

    def get(self, step_id: str) -> workflow_pb2.StepExecution | None:
        record = self.records.get(step_id)
        return None if record is None else record.step

    def record(self, step_id: str) -> engine_pb2.StepRecord:
        return self.records[step_id]

    def steps(self) -> Iterator[workflow_pb2.StepExecution]:
        """Every instance, in scheduling order."""
        return (record.step for record in self.records.values())

    def count(self, name: str | None, states: Iterable[int]) -> int:
        """Instances of ``name`` (every step when None) whose state is one of ``states``."""
        self._sync()
        wanted = tuple(states)
        tallies = self._tally.values() if name is None else [self._tally.get(name, Counter())]
        return sum(tally[state] for tally in tallies for state in wanted)

    def _sync(self) -> None:
        # Only the steps touched since the last count are looked at: O(changed), not O(steps).
        for step_id in self._unsynced:
            step = self.records[step_id].step
            tally = self._tally.setdefault(step.step_name, Counter())
            before = self._counted.get(step_id)
            if before is not None:
                tally[before] -= 1
            tally[step.state] += 1
            self._counted[step_id] = step.state
        self._unsynced.clear()


class WorkflowState:
    """One workflow as the evaluator holds it: header, steps, and where the stored copy stands."""

    def __init__(self, record: engine_pb2.WorkflowRecord, revision: int = 0) -> None:
        self.record = record
        """The header (``workflow.steps`` stays empty: the steps are in ``table``)."""
        self.revision = revision
        """KV revision of the stored header (0: not stored yet)."""
        self.table = StepTable()
        self.published = True
        """Whether the last commit's effects (step writes, messages) are done."""
        self.effects: engine_pb2.Effects | None = None
        """The last commit's effects while they are not done."""
        self.blob_refs: dict[str, engine_pb2.BlobRef] = {}
        """Blobs already stored for values of this workflow, by the value's digest."""

    @property
    def workflow_id(self) -> str:
        return self.record.workflow.workflow_id

    def workflow(self) -> workflow_pb2.Workflow:
        """The public view: the header's workflow with every step, in scheduling order."""
        wf = workflow_pb2.Workflow()
        wf.CopyFrom(self.record.workflow)
        wf.steps.extend(self.table.steps())
        return wf
