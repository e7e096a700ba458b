"""``when:``: a rule's condition, one string or a list of strings that must all hold."""

from __future__ import annotations

from cosmos.plato.language import model
from cosmos.plato.language.compilation import Compilation
from cosmos.plato.language.expressions import Expression, SyntaxProblem, parse_conjunction
from cosmos.plato.language.yaml_reader import Loc

__all__ = ["condition"]


def condition(c: Compilation, value: object, loc: Loc) -> model.Condition | None:
    if value is None:
        c.problem(loc, 'missing: when: says when the rule fires (e.g. "workflow.started")')
        return None
    items = value if isinstance(value, list) else [value]
    if not items:
        c.problem(loc, "when: must not be an empty list")
        return None
    predicates: list[model.Predicate] = []
    guards: list[Expression] = []
    ok = True
    for i, item in enumerate(items):
        item_loc = (*loc, i) if isinstance(value, list) else loc
        text = c.string(item, item_loc, "a condition")
        if text is None:
            ok = False
            continue
        try:
            item_predicates, item_guards = parse_conjunction(text)
        except SyntaxProblem as error:
            c.problem(item_loc, str(error))
            ok = False
            continue
        predicates.extend(item_predicates)
        guards.extend(item_guards)
        c.refs.extend((p.step, item_loc) for p in item_predicates if p.step is not None)
        c.refs.extend((step, item_loc) for g in item_guards for step in sorted(g.step_refs()))
    if not ok:
        return None
    if not predicates:
        message = 'a condition needs at least one event predicate such as "workflow.started" or "x.completed"'
        c.problem(loc, message)
        return None
    text = " and ".join(str(item).strip() for item in items)
    return model.Condition(predicates=tuple(predicates), guards=tuple(guards), text=text)
