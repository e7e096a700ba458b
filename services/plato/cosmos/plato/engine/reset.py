"""Retry and reset of a finished workflow: the transition a :class:`ResumeInput` makes.

Part of the state machine (:mod:`cosmos.plato.engine.machine`), kept in its own module; it works on
the machine's state through the machine's own helpers, so it is pure too. Semantics
(docs/plato.md, "Retry and reset"):

- **Retry** (``step_name`` empty) of a FAILED or CANCELLED workflow: every step instance that did
  not complete (failed, timed out, cancelled) runs again in place as its next attempt, with its retry
  budget renewed; the activations its failure closed are reopened. Completed instances and their
  outputs are kept.
- **Reset** to step ``S`` of a COMPLETED, FAILED or CANCELLED workflow: the rule that scheduled
  ``S`` is rolled back: every instance that rule scheduled, and every instance of a step downstream
  of it (a rule triggered by one of their completions or failures, transitively) scheduled from
  then on, is discarded; then the rule fires again. Other instances that did not complete rerun as
  in a retry.

Discarded instances leave a tombstone in their step record (``StepRecord.discarded``), written with
the transition's commit like any step write: their key keeps its last attempt number, so an instance
of the same id scheduled again starts at a higher attempt, and anything still reporting for the old
one (a late result, a timer) is stale by attempt and refused. Nothing of the history is rewritten:
a WORKFLOW_RETRIED or WORKFLOW_RESET event follows the terminal one, and the sequence goes on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cosmos.plato.language import model
from cosmos.plato.v1 import engine_pb2, events_pb2, workflow_pb2
from cosmos.protocol import values

if TYPE_CHECKING:
    from cosmos.plato.engine.machine import Machine

log = logging.getLogger(__name__)

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
AK = engine_pb2.ActivationKind
AS = engine_pb2.ActivationState
ET = events_pb2.WorkflowEventType

RETRYABLE = (WS.WORKFLOW_STATE_FAILED, WS.WORKFLOW_STATE_CANCELLED)
"""Workflow states RetryWorkflow resumes."""
RESETTABLE = (WS.WORKFLOW_STATE_COMPLETED, WS.WORKFLOW_STATE_FAILED, WS.WORKFLOW_STATE_CANCELLED)
"""Workflow states ResetWorkflow resumes: any finished workflow (a running one must be cancelled
first, so that no step of it is still at work while its past is rewound)."""
RERUN = (SS.STEP_STATE_FAILED, SS.STEP_STATE_TIMED_OUT, SS.STEP_STATE_CANCELLED)
"""Instances a retry runs again: those that did not complete."""
REMEMBERED = 32
"""request_ids of resumes a header remembers (their de-duplication past JetStream's window)."""
LISTED = 100
"""Step ids named in a resume event's payload at most (counts are always whole)."""


def refusal(state: int, step_name: str) -> str:
    """Why a workflow in ``state`` cannot be retried (``step_name`` empty) or reset ('' if it can)."""
    allowed = RESETTABLE if step_name else RETRYABLE
    if state in allowed:
        return ""
    what = "reset" if step_name else "retried"
    named = "/".join(WS.Name(s).removeprefix("WORKFLOW_STATE_") for s in allowed)
    return f"a {WS.Name(state).removeprefix('WORKFLOW_STATE_')} workflow cannot be {what} (only {named})"  # type: ignore[arg-type]


def rerun_candidates(steps: Any) -> list[workflow_pb2.StepExecution]:
    """The instances among ``steps`` a retry runs again."""
    return [s for s in steps if s.state in RERUN]


def resume(m: Machine, inp: engine_pb2.ResumeInput) -> None:
    """Apply one retry or reset to the machine's workflow (a no-op when already applied or refused)."""
    record, wf = m.record, m.wf
    if inp.request_id and inp.request_id in record.resume_request_ids:
        return  # applied already (a redelivery, or the same request sent again)
    why = refusal(wf.state, inp.step_name)
    if not why and inp.step_name and not m.table.by_name.get(inp.step_name):
        why = f"step {inp.step_name!r} never ran in this workflow"
    if not why and not inp.step_name and not rerun_candidates(m.table.steps()):
        why = "no step to rerun"
    if why:
        # The API checks the same before posting; the state moved on since (another resume won).
        log.warning(
            "resume refused",
            extra={"fields": {"workflow_id": wf.workflow_id, "request_id": inp.request_id, "reason": why}},
        )
        return
    if inp.request_id:
        record.resume_request_ids.append(inp.request_id)
        del record.resume_request_ids[:-REMEMBERED]
    wf.state = WS.WORKFLOW_STATE_RUNNING
    wf.failure_reason = ""
    wf.ClearField("close_time")
    wf.output.Clear()
    record.escalated_failure = ""
    changed = inp.HasField("input")
    if changed:
        wf.input.CopyFrom(inp.input)
        m._input = None
    m._ctx = None
    refire: tuple[model.Rule, model.Sequence, bool] | None = None
    discarded: list[str] = []
    if inp.step_name:
        refire, discarded = _roll_back(m, inp.step_name)
    again = rerun_candidates(m.table.steps())
    payload: dict[str, Any] = {
        "request_id": inp.request_id,
        "rerun": [s.step_id for s in again[:LISTED]],
        "rerun_count": len(again),
        "input_changed": changed,
    }
    if inp.step_name:
        payload.update(step_name=inp.step_name, discarded=discarded[:LISTED], discarded_count=len(discarded))
    kind = ET.WORKFLOW_EVENT_TYPE_WORKFLOW_RESET if inp.step_name else ET.WORKFLOW_EVENT_TYPE_WORKFLOW_RETRIED
    m._event(kind, payload=payload)
    reopened: dict[int, engine_pb2.Activation] = {}
    for step in again:
        _reopen_chain(m, step, reopened)
    for act in reopened.values():
        _recount(m, act)
    for step in again:
        _rerun(m, step)
    for act in reopened.values():
        _refill(m, act)
    if refire is not None:
        rule, actions, on_exhausted = refire
        m._fire(rule, actions, on_exhausted=on_exhausted)


# ---------------------------------------------------------------------------------------------- retry


def _reopen_chain(
    m: Machine, step: workflow_pb2.StepExecution, reopened: dict[int, engine_pb2.Activation]
) -> None:
    """Set the step's activation, and the ancestors its failure closed, running again."""
    act = m.table.record(step.step_id).activation
    if act.state == AS.ACTIVATION_STATE_FAILED:
        act.state = AS.ACTIVATION_STATE_RUNNING
    parent = m._act(act.parent_id)
    while parent is not None and parent.state == AS.ACTIVATION_STATE_FAILED:
        parent.state = AS.ACTIVATION_STATE_RUNNING
        reopened[parent.activation_id] = parent
        parent = m._act(parent.parent_id)


def _children(m: Machine, act: engine_pb2.Activation) -> list[workflow_pb2.StepExecution]:
    return [r.step for r in m.table.records.values() if r.activation.parent_id == act.activation_id]


def _recount(m: Machine, act: engine_pb2.Activation) -> None:
    """A failed activation stopped counting its children done (see ``Machine._activation_done``):
    count them again from its step children. A parallel branch that is itself a sequence or a group
    and finished while its parent was failed is not seen (docs/plato.md, "Retry and reset")."""
    done = sum(1 for s in _children(m, act) if s.state == SS.STEP_STATE_COMPLETED)
    if act.kind == AK.ACTIVATION_KIND_FANOUT:
        act.pending = act.item_count - done
    elif act.kind == AK.ACTIVATION_KIND_PARALLEL:
        action = m._action_of(act)
        if isinstance(action, model.Parallel):
            act.pending = len(action.branches) - done


def _refill(m: Machine, act: engine_pb2.Activation) -> None:
    """A reopened fan-out starts the items it held back while it was failed (maxConcurrency)."""
    if act.kind != AK.ACTIVATION_KIND_FANOUT or act.state != AS.ACTIVATION_STATE_RUNNING:
        return
    action = m._action_of(act)
    if not isinstance(action, model.Fanout):
        return
    limit = action.max_concurrency or act.item_count
    active = sum(1 for s in _children(m, act) if s.state in (SS.STEP_STATE_SCHEDULED, SS.STEP_STATE_RUNNING))
    rule = m.definition.rules[act.rule_index]
    while act.next_item < act.item_count and active < limit:
        m._start_fanout_item(act, action, rule)
        active += 1


def _rerun(m: Machine, step: workflow_pb2.StepExecution) -> None:
    """Run the instance again as its next attempt, its input rendered anew, its retries renewed."""
    record = m.table.record(step.step_id)
    m.table.touch(step.step_id)
    record.runtime.step_retries = 0
    record.runtime.rule_retries = 0
    del record.timers[:]  # timers of the old attempt fire into nothing
    step.attempt += 1
    step.child_workflow_id = ""
    step.output.Clear()
    step.ClearField("close_time")
    step.ClearField("progress")
    m._outputs.pop(step.step_id, None)
    step_def = m._step_def(step)
    m.render_input(step, step_def, values.struct_to_dict(record.activation.vars))
    m._dispatch(step)


# ---------------------------------------------------------------------------------------------- reset


def _roll_back(m: Machine, step_name: str) -> tuple[tuple[model.Rule, model.Sequence, bool], list[str]]:
    """Discard the firing of the rule that scheduled ``step_name`` and what is downstream of it;
    returns the rule to fire again and the discarded step ids."""
    first = m.table.by_name[step_name][0]
    origin = m.table.record(first.step_id).activation
    rule = m.definition.rules[origin.rule_index]
    actions = rule.on_exhausted if origin.on_exhausted else rule.do
    assert actions is not None  # a step is only ever scheduled by a rule's actions
    fired = [
        r
        for r in m.table.records.values()
        if r.activation.rule_index == origin.rule_index and r.activation.on_exhausted == origin.on_exhausted
    ]
    since = min(r.ordinal for r in fired)
    names = downstream(m.definition, step_names(actions))
    victims = [
        step_id
        for step_id, r in m.table.records.items()
        if r.ordinal >= since
        and (
            r.step.step_name in names
            or (
                r.activation.rule_index == origin.rule_index
                and r.activation.on_exhausted == origin.on_exhausted
            )
        )
    ]
    for step_id in victims:
        m.table.retire(step_id)
        m._outputs.pop(step_id, None)
    kept = [n for n in m.record.empty_fanouts if n not in names]
    del m.record.empty_fanouts[:]
    m.record.empty_fanouts.extend(kept)
    _prune_activations(m)
    m._ctx = None
    return (rule, actions, origin.on_exhausted), victims


def _prune_activations(m: Machine) -> None:
    """Drop the activations no remaining instance descends from (those of the discarded firings)."""
    live: set[int] = set()
    for record in m.table.records.values():
        parent = m._act(record.activation.parent_id)
        while parent is not None and parent.activation_id not in live:
            live.add(parent.activation_id)
            parent = m._act(parent.parent_id)
    for act in [a for a in m.record.activations if a.activation_id not in live]:
        m.record.activations.remove(act)
        m._acts.pop(act.activation_id, None)
        m.table.items.pop(act.activation_id, None)


def step_names(action: model.Action) -> set[str]:
    """Every step name an action tree runs."""
    if isinstance(action, model.RunStep):
        return {action.step}
    if isinstance(action, model.Sequence):
        return set().union(*(step_names(a) for a in action.items)) if action.items else set()
    if isinstance(action, model.Parallel):
        return set().union(*(step_names(a) for a in action.branches)) if action.branches else set()
    return {action.run}


def downstream(definition: model.Definition, names: set[str]) -> set[str]:
    """``names`` and every step a rule triggered by their completion or failure runs, transitively."""
    found = set(names)
    changed = True
    while changed:
        changed = False
        for rule in definition.rules:
            triggered = any(
                rule.when.triggered_by(model.Event(kind, step=name))
                for name in found
                for kind in (model.EventKind.STEP_COMPLETED, model.EventKind.STEP_FAILED)
            )
            if not triggered:
                continue
            for tree in (rule.do, rule.on_exhausted):
                new = step_names(tree) - found if tree is not None else set()
                if new:
                    found |= new
                    changed = True
    return found
