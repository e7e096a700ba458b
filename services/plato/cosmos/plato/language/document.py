"""The document's top level: ``workflow:`` with its id, description, limits, output, steps and rules.

:func:`document` compiles each part through its construct's module, then runs the whole-definition
checks (:mod:`.definition_checks`) and builds the :class:`~cosmos.plato.language.model.Definition`.
"""

from __future__ import annotations

from cosmos.plato.language import model
from cosmos.plato.language.compilation import DEFINITION_ID, MAX_ID, Compilation, kind_of
from cosmos.plato.language.definition_checks import check_reachability, check_references
from cosmos.plato.language.expressions import ROOTS
from cosmos.plato.language.rules import rules
from cosmos.plato.language.steps import all_steps, declared_steps
from cosmos.plato.language.yaml_reader import Loc

__all__ = ["document"]

_DOCUMENT_KEYS = ("workflow",)
_WORKFLOW_KEYS = ("id", "description", "limits", "output", "steps", "rules")
_LIMIT_KEYS = ("maxRuleFirings", "maxSteps")


def document(c: Compilation, data: object) -> model.Definition | None:
    root = c.mapping(data, (), _DOCUMENT_KEYS, "the document")
    if root is None:
        return None
    if "workflow" not in root:
        c.problem(("workflow",), "missing: a definition is a mapping under 'workflow:'")
        return None
    loc: Loc = ("workflow",)
    workflow = c.mapping(root["workflow"], loc, _WORKFLOW_KEYS, "workflow")
    if workflow is None:
        return None
    definition_id = _definition_id(c, workflow.get("id"), (*loc, "id"))
    description = workflow.get("description", "")
    if not isinstance(description, str):
        c.problem((*loc, "description"), f"description must be a string, found {kind_of(description)}")
    limits = _limits(c, workflow.get("limits"), (*loc, "limits"))
    # Rules before steps: a step's templates may read the loop variables of the fan-outs that run it.
    compiled_rules = rules(c, workflow.get("rules"), (*loc, "rules"))
    declared = declared_steps(c, workflow.get("steps"), (*loc, "steps"))
    output = None
    if workflow.get("output") is not None:
        output = c.template(workflow["output"], (*loc, "output"), ROOTS, "the workflow output")
    check_references(c, declared)
    if compiled_rules is not None:
        check_reachability(c, (*loc, "rules"))
    if c.violations or compiled_rules is None or definition_id is None or limits is None:
        return None
    return model.Definition(
        id=definition_id,
        steps=all_steps(c, declared),
        rules=tuple(rule for rule in compiled_rules if rule is not None),
        limits=limits,
        output=output,
        description=description,
    )


def _definition_id(c: Compilation, value: object, loc: Loc) -> str | None:
    if value is None:
        c.problem(loc, "missing: workflow.id names the definition (e.g. encode-workflow-v3)")
        return None
    text = c.string(value, loc, "workflow.id")
    if text is None:
        return None
    if not DEFINITION_ID.match(text) or len(text) > MAX_ID:
        c.problem(loc, f"invalid id {text!r}: use [a-z0-9][a-z0-9._-]*, at most {MAX_ID} characters")
        return None
    c.definition_id = text
    return text


def _limits(c: Compilation, value: object, loc: Loc) -> model.Limits | None:
    spec = c.mapping(value, loc, _LIMIT_KEYS, "limits")
    if spec is None:
        return None
    defaults = model.Limits()
    firings_value = spec.get("maxRuleFirings", defaults.max_rule_firings)
    firings = c.integer(firings_value, (*loc, "maxRuleFirings"), "maxRuleFirings", 1)
    steps = c.integer(spec.get("maxSteps", defaults.max_steps), (*loc, "maxSteps"), "maxSteps", 1)
    if firings is None or steps is None:
        return None
    return model.Limits(max_rule_firings=firings, max_steps=steps)
