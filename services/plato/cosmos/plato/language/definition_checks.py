"""Checks of the definition as a whole, once every rule and step has compiled.

Unknown step references, declared steps that no rule runs, and rules that can never fire (a fixpoint
from ``workflow.started``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from cosmos.plato.language import model
from cosmos.plato.language.compilation import Compilation, RuleFacts
from cosmos.plato.language.yaml_reader import Loc

__all__ = ["check_reachability", "check_references"]


def check_references(c: Compilation, declared: Mapping[str, model.StepDef | None]) -> None:
    """Every step named anywhere must be run by some action; every declared step must be run."""
    known = sorted(c.runs)
    for step, loc in c.refs:
        if step not in c.runs:
            close = difflib.get_close_matches(step, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            c.problem(loc, f"unknown step {step!r}: no rule runs it{hint}")
    for name in declared:
        if name not in c.runs:
            c.problem(("workflow", "steps", name), f"step {name!r} is declared but no rule runs it")


def check_reachability(c: Compilation, loc: Loc) -> None:
    """Rules that can never fire, found by a fixpoint from ``workflow.started``.

    A rule whose condition did not compile is assumed to fire (and the steps its actions name to
    run), so one broken rule does not drag false "never fires" reports after it.
    """
    facts = c.rule_facts
    if all(rule.predicates is not None for rule in facts) and not any(map(_starts, facts)):
        c.problem(loc, 'no rule has "workflow.started" in its when:, so nothing would ever run')
        return
    runnable: set[str] = set()
    reachable: set[int] = set()
    changed = True
    while changed:
        changed = False
        for rule in facts:
            if rule.index not in reachable and _can_fire(rule, runnable):
                reachable.add(rule.index)
                runnable |= rule.runs
                changed = True
    for rule in facts:
        if rule.index not in reachable:
            _report_unreachable(c, rule, runnable, (*loc, rule.index, "when"))


def _starts(rule: RuleFacts) -> bool:
    predicates = rule.predicates or ()
    return any(p.kind is model.PredicateKind.WORKFLOW_STARTED for p in predicates)


def _can_fire(rule: RuleFacts, runnable: set[str]) -> bool:
    if rule.predicates is None:
        return True
    return all(_can_hold(p, runnable) for p in rule.predicates)


def _can_hold(predicate: model.Predicate, runnable: set[str]) -> bool:
    if predicate.kind in (model.PredicateKind.WORKFLOW_STARTED, model.PredicateKind.SIGNAL):
        return True  # the start always happens; signals come from outside at any time
    if predicate.kind is model.PredicateKind.ANY_FAILED:
        return bool(runnable)
    return predicate.step in runnable


def _report_unreachable(c: Compilation, rule: RuleFacts, runnable: set[str], loc: Loc) -> None:
    blocking = [p for p in rule.predicates or () if not _can_hold(p, runnable)]
    if any(p.step is not None and p.step not in c.runs for p in blocking):
        return  # already reported as an unknown step
    if blocking[0].step is None:
        reason = "no step can run before it"
    else:
        reason = f"step {blocking[0].step!r} never runs (only rules that can never fire run it)"
    c.problem(loc, f"rule {rule.name!r} can never fire: {reason}")
