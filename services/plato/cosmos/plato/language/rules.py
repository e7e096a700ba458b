"""``workflow.rules``: a rule's name, ``when:``, and ``do:`` or, on failure, ``retry:``/``onExhausted:``."""

from __future__ import annotations

from typing import Any

from cosmos.plato.language import model
from cosmos.plato.language.actions import sequence
from cosmos.plato.language.compilation import Compilation, RuleFacts, kind_of
from cosmos.plato.language.conditions import condition
from cosmos.plato.language.retry_and_timeouts import retry
from cosmos.plato.language.yaml_reader import Loc

__all__ = ["rules"]

_RULE_KEYS = ("name", "when", "do", "retry", "onExhausted")


def rules(c: Compilation, value: object, loc: Loc) -> list[model.Rule | None] | None:
    if value is None:
        c.problem(loc, 'missing: a workflow needs rules (at least one "when: workflow.started")')
        return None
    if not isinstance(value, list) or not value:
        c.problem(loc, f"rules must be a non-empty list, found {kind_of(value)}")
        return None
    compiled = [_rule(c, item, index, (*loc, index)) for index, item in enumerate(value)]
    _check_rule_names(c, compiled, loc)
    return compiled


def _check_rule_names(c: Compilation, rules: list[model.Rule | None], loc: Loc) -> None:
    first: dict[str, int] = {}
    for rule in rules:
        if rule is None:
            continue
        if rule.name in first:
            message = f"rule name {rule.name!r} is already used by rules[{first[rule.name]}]"
            c.problem((*loc, rule.index, "name"), message)
        first.setdefault(rule.name, rule.index)


def _rule(c: Compilation, value: object, index: int, loc: Loc) -> model.Rule | None:
    facts = RuleFacts(index, f"rules[{index}]")
    c.rule_facts.append(facts)
    rule = c.mapping(value, loc, _RULE_KEYS, "a rule")
    if rule is None:
        return None
    name = c.string(rule["name"], (*loc, "name"), "name") if "name" in rule else facts.name
    facts.name = name or facts.name
    when = condition(c, rule.get("when"), (*loc, "when"))
    facts.predicates = None if when is None else when.predicates
    do = sequence(c, rule["do"], (*loc, "do")) if "do" in rule else None
    policy = retry(c, rule["retry"], (*loc, "retry")) if "retry" in rule else None
    exhausted = sequence(c, rule["onExhausted"], (*loc, "onExhausted")) if "onExhausted" in rule else None
    shape_ok = _check_rule_shape(c, rule, when, loc)
    parts_ok = all(
        part is not None
        for key, part in (("do", do), ("retry", policy), ("onExhausted", exhausted))
        if key in rule
    )
    if name is None or when is None or not shape_ok or not parts_ok:
        return None
    return model.Rule(index, name, when, do, policy, exhausted, c.line(loc))


def _check_rule_shape(c: Compilation, rule: dict[str, Any], when: model.Condition | None, loc: Loc) -> bool:
    """``do`` xor ``retry``; ``retry``/``onExhausted`` only on failure conditions."""
    problems = len(c.violations)
    if "do" in rule and "retry" in rule:
        c.problem(loc, "a rule has either do: (actions) or retry: (for failures), not both")
    if "do" not in rule and "retry" not in rule:
        c.problem(loc, "a rule needs do: (actions to run) or, on a failure condition, retry:")
    if "onExhausted" in rule and "retry" not in rule:
        c.problem((*loc, "onExhausted"), "onExhausted: belongs to a rule with retry:")
    if when is not None and not when.is_failure_condition():
        for key in ("retry", "onExhausted"):
            if key in rule:
                message = f'{key}: needs a failure condition in when: ("x.failed", "any.failed")'
                c.problem((*loc, key), message)
    return len(c.violations) == problems
