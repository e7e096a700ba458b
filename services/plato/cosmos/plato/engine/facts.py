"""What rule conditions ask of a workflow (:class:`cosmos.plato.language.model.Facts`), and the
context its expressions and templates read.

A layer of the state machine (see :mod:`cosmos.plato.engine.core`): no I/O, nothing written; the
answers come from the transition's state alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from cosmos.plato.engine.core import AK, AS, FAILED_STEP_STATES, SS, WS, Core
from cosmos.plato.language import model
from cosmos.plato.v1 import workflow_pb2
from cosmos.protocol import values


class _Steps(Mapping[str, Any]):
    """The ``steps`` of an expression context, computed per step name when asked for.

    A fan-out of K instances would otherwise cost O(K) for every context built (one per completion).
    """

    def __init__(self, machine: WorkflowFacts) -> None:
        self._machine = machine
        self._cache: dict[str, dict[str, Any]] = {}

    def _entry(self, name: str) -> dict[str, Any] | None:
        entry = self._cache.get(name)
        if entry is None:
            done = [
                s for s in self._machine.table.by_name.get(name, ()) if s.state == SS.STEP_STATE_COMPLETED
            ]
            if not done:
                return None
            # Instances are kept in creation order, which is their instance index order.
            last = max(done, key=lambda s: (s.close_time.seconds, s.close_time.nanos))
            outputs = [self._machine._output_of(s) for s in done]
            entry = self._cache[name] = {"output": self._machine._output_of(last), "outputs": outputs}
        return entry

    def __getitem__(self, name: str) -> dict[str, Any]:
        entry = self._entry(name)
        if entry is None:
            raise KeyError(name)
        return entry

    def __iter__(self) -> Iterator[str]:
        return (name for name in list(self._machine.table.by_name) if self._entry(name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class WorkflowFacts(Core):
    """The queries of ``model.Facts`` (rules ask them through ``when.holds``) and the context."""

    def _input_dict(self) -> dict[str, Any]:
        if self._input is None:
            self._input = values.struct_to_dict(self.wf.input)
        return self._input

    def _output_of(self, step: workflow_pb2.StepExecution) -> dict[str, Any]:
        output = self._outputs.get(step.step_id)
        if output is None:
            output = self._outputs[step.step_id] = values.struct_to_dict(step.output)
        return output

    def _context(self) -> dict[str, Any]:
        if self._ctx is None:
            self._ctx = {
                "input": self._input_dict(),
                "steps": _Steps(self),
                "workflow": {
                    "id": self.wf.workflow_id,
                    "definition": self.wf.definition_id,
                    "version": self.wf.definition_version,
                },
                "signals": {name: values.struct_to_dict(p) for name, p in self.record.signals.items()},
            }
        return self._ctx

    def _instances(self, name: str) -> list[workflow_pb2.StepExecution]:
        return self.table.by_name.get(name, [])

    def started(self) -> bool:
        return self.wf.state != WS.WORKFLOW_STATE_PENDING

    def completed(self, step: str) -> bool:
        return self.table.count(step, (SS.STEP_STATE_COMPLETED,)) > 0

    def all_completed(self, step: str) -> bool:
        instances = len(self._instances(step))
        if not instances and step not in self.record.empty_fanouts:
            return False
        if self.table.count(step, (SS.STEP_STATE_COMPLETED,)) != instances:
            return False
        # A fan-out still holding items back (maxConcurrency) is not finished.
        for act in self.record.activations:
            if act.kind == AK.ACTIVATION_KIND_FANOUT and act.state == AS.ACTIVATION_STATE_RUNNING:
                action = self._action_of(act)
                if isinstance(action, model.Fanout) and action.run == step and act.next_item < act.item_count:
                    return False
        return True

    def failed(self, step: str | None) -> bool:
        return self.table.count(step, FAILED_STEP_STATES) > 0

    def signalled(self, name: str) -> bool:
        return name in self.record.signals
