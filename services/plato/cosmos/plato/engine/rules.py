"""Rules and their actions: which rules an event fires, and the activations that run their actions
(a step, a sequence, a parallel group, a fan-out) until each is done or failed.

A layer of the state machine (see :mod:`cosmos.plato.engine.core`): no I/O. Starting a step is the
one thing it leaves to a layer above (:meth:`Rules._schedule_step`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from cosmos.plato.engine.core import AK, AS, ET, WorkflowFailed
from cosmos.plato.engine.facts import WorkflowFacts
from cosmos.plato.language import model
from cosmos.plato.v1 import engine_pb2
from cosmos.protocol import values


class Rules(WorkflowFacts):
    """Fires rules and drives the activations of their actions."""

    def _evaluate(self, event: model.Event) -> None:
        for rule in self.definition.rules:
            if rule.do is None or not rule.when.triggered_by(event):
                continue
            if rule.when.holds(self, self._context() if rule.when.guards else {}):
                self._fire(rule, rule.do, on_exhausted=False)

    def _fire(self, rule: model.Rule, actions: model.Sequence, *, on_exhausted: bool) -> None:
        self.wf.rule_firings += 1
        if self.wf.rule_firings > self.definition.limits.max_rule_firings:
            raise WorkflowFailed(
                f"runaway guard: rule {rule.name!r} would exceed maxRuleFirings="
                f"{self.definition.limits.max_rule_firings}"
            )
        self._event(ET.WORKFLOW_EVENT_TYPE_RULE_FIRED, rule=rule.name)
        self._start_action(actions, parent=0, rule=rule, on_exhausted=on_exhausted, path=[], vars={})

    # ----------------------------------------------------------------- actions

    def _new_activation(
        self,
        kind: int,
        parent: int,
        rule: model.Rule,
        on_exhausted: bool,
        path: list[int],
        vars: Mapping[str, Any],
    ) -> engine_pb2.Activation:
        self.record.next_activation += 1
        fields: dict[str, Any] = {
            "activation_id": self.record.next_activation,
            "parent_id": parent,
            "kind": kind,
            "state": AS.ACTIVATION_STATE_RUNNING,
            "rule_index": rule.index,
            "on_exhausted": on_exhausted,
            "path": path,
        }
        if kind == AK.ACTIVATION_KIND_STEP:
            # Kept with its step's record once the step is scheduled.
            act = self._detached[self.record.next_activation] = engine_pb2.Activation(**fields)
        else:
            act = self.record.activations.add(**fields)
            self._acts[act.activation_id] = act
        if vars:
            act.vars.update(dict(vars))
        return act

    def _start_action(
        self,
        action: model.Action,
        *,
        parent: int,
        rule: model.Rule,
        on_exhausted: bool,
        path: list[int],
        vars: Mapping[str, Any],
    ) -> None:
        if isinstance(action, model.RunStep):
            act = self._new_activation(AK.ACTIVATION_KIND_STEP, parent, rule, on_exhausted, path, vars)
            self._schedule_step(action.step, act, rule, vars, fanout=False)
        elif isinstance(action, model.Sequence):
            act = self._new_activation(AK.ACTIVATION_KIND_SEQUENCE, parent, rule, on_exhausted, path, vars)
            self._advance_sequence(act, action)
        elif isinstance(action, model.Parallel):
            act = self._new_activation(AK.ACTIVATION_KIND_PARALLEL, parent, rule, on_exhausted, path, vars)
            act.pending = len(action.branches)
            if not action.branches:
                self._activation_done(act)
            for i, branch in enumerate(action.branches):
                self._start_action(
                    branch,
                    parent=act.activation_id,
                    rule=rule,
                    on_exhausted=on_exhausted,
                    path=[*path, i],
                    vars=vars,
                )
        else:
            act = self._new_activation(AK.ACTIVATION_KIND_FANOUT, parent, rule, on_exhausted, path, vars)
            items = self._fanout_items(action, vars)
            self.table.items[act.activation_id] = items
            act.item_count = len(items)
            act.pending = len(items)
            if not items:
                # An empty fan-out is done at once, as in a sequence, and its fan-in fires too:
                # `all <run>.completed` holds for it (after this input, like a builtin completion).
                if action.run not in self.record.empty_fanouts:
                    self.record.empty_fanouts.append(action.run)
                self._activation_done(act)
                event = model.Event(model.EventKind.STEP_COMPLETED, step=action.run)
                self._deferred.append(lambda: self._evaluate(event))
                return
            limit = action.max_concurrency or len(items)
            for _ in range(min(limit, len(items))):
                self._start_fanout_item(act, action, rule)

    def _fanout_items(self, fanout: model.Fanout, vars: Mapping[str, Any]) -> list[dict[str, Any]]:
        ctx = {**self._context(), **vars}
        lists = []
        for loop in fanout.loops:
            value = loop.source.evaluate(ctx)
            if not isinstance(value, list):
                raise WorkflowFailed(
                    f"fanout of {fanout.run!r}: {loop.text or loop.var} is {type(value).__name__}, not a list"
                )
            lists.append(value)
        names = [loop.var for loop in fanout.loops]
        return [{**vars, **dict(zip(names, combo, strict=True))} for combo in itertools.product(*lists)]

    def _start_fanout_item(self, act: engine_pb2.Activation, fanout: model.Fanout, rule: model.Rule) -> None:
        item = dict(self.table.items[act.activation_id][act.next_item])
        act.next_item += 1
        child = self._new_activation(
            AK.ACTIVATION_KIND_STEP, act.activation_id, rule, act.on_exhausted, list(act.path), item
        )
        self._schedule_step(fanout.run, child, rule, item, fanout=True)

    def _advance_sequence(self, act: engine_pb2.Activation, seq: model.Sequence) -> None:
        if act.cursor >= len(seq.items):
            self._activation_done(act)
            return
        rule = self.definition.rules[act.rule_index]
        self._start_action(
            seq.items[act.cursor],
            parent=act.activation_id,
            rule=rule,
            on_exhausted=act.on_exhausted,
            path=[*act.path, act.cursor],
            vars=values.struct_to_dict(act.vars),
        )

    def _activation_done(self, act: engine_pb2.Activation) -> None:
        act.state = AS.ACTIVATION_STATE_DONE
        parent = self._act(act.parent_id)
        if parent is None or parent.state != AS.ACTIVATION_STATE_RUNNING:
            return
        action = self._action_of(parent)
        if parent.kind == AK.ACTIVATION_KIND_SEQUENCE:
            assert isinstance(action, model.Sequence)
            parent.cursor += 1
            self._advance_sequence(parent, action)
        elif parent.kind == AK.ACTIVATION_KIND_PARALLEL:
            parent.pending -= 1
            if parent.pending == 0:
                self._activation_done(parent)
        elif parent.kind == AK.ACTIVATION_KIND_FANOUT:
            assert isinstance(action, model.Fanout)
            parent.pending -= 1
            if parent.next_item < parent.item_count:
                self._start_fanout_item(parent, action, self.definition.rules[parent.rule_index])
            if parent.pending == 0:
                self._activation_done(parent)

    def _activation_failed(self, act_id: int) -> None:
        act = self._act(act_id)
        while act is not None and act.state == AS.ACTIVATION_STATE_RUNNING:
            act.state = AS.ACTIVATION_STATE_FAILED
            act = self._act(act.parent_id)

    def _schedule_step(
        self,
        name: str,
        act: engine_pb2.Activation,
        rule: model.Rule,
        vars: Mapping[str, Any],
        *,
        fanout: bool,
    ) -> None:
        """Schedule an instance of step ``name`` for activation ``act``.

        Defined by :class:`cosmos.plato.engine.step_dispatch.StepDispatch`: the one call from a lower
        layer to a higher one (an action starts a step; a step's end fires rules, down here).
        """
        raise NotImplementedError
