"""``workflow.steps``: declared steps, their kind (handler, ``uses:``, ``job:``, ``workflow:``) and options.

Steps that rules run without declaring them are handler steps on a queue of their own name; those are
added by :func:`all_steps` once every rule has compiled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cosmos.plato.language import model
from cosmos.plato.language.compilation import DEFINITION_ID, MAX_ID, Compilation, kind_of
from cosmos.plato.language.expressions import ROOTS
from cosmos.plato.language.retry_and_timeouts import retry, timeouts
from cosmos.plato.language.step_params import builtin, job
from cosmos.plato.language.yaml_reader import Loc

__all__ = ["all_steps", "declared_steps"]

_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
_STEP_KEYS = ("queue", "input", "retry", "timeout", "uses", "with", "job", "workflow")
_STEP_KINDS = ("uses", "job", "workflow")
_CHILD_KEYS = ("id", "version")


def declared_steps(c: Compilation, value: object, loc: Loc) -> dict[str, model.StepDef | None]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        c.problem(loc, f"steps must be a mapping of step names to steps, found {kind_of(value)}")
        return {}
    steps: dict[str, model.StepDef | None] = {}
    for name, spec in value.items():
        if c.step_name(name, (*loc, name)) is not None:
            steps[name] = _step(c, name, spec, (*loc, name))
    return steps


def all_steps(c: Compilation, declared: Mapping[str, model.StepDef | None]) -> dict[str, model.StepDef]:
    """Declared steps in document order, then implicit handler steps in order of first use."""
    steps = {name: step for name, step in declared.items() if step is not None}
    for name in c.runs:
        steps.setdefault(name, model.StepDef(name=name, kind=model.StepKind.HANDLER, queue=name))
    return steps


def _step(c: Compilation, name: str, value: object, loc: Loc) -> model.StepDef | None:
    spec = c.mapping(value, loc, _STEP_KEYS, f"step {name!r}")
    if spec is None:
        return None
    kinds = [key for key in _STEP_KINDS if key in spec]
    if len(kinds) > 1:
        c.problem(loc, f"a step has at most one of uses:, job:, workflow: (found {', '.join(kinds)})")
        return None
    kind = {
        "uses": model.StepKind.BUILTIN,
        "job": model.StepKind.JOB,
        "workflow": model.StepKind.CHILD,
    }.get(kinds[0] if kinds else "", model.StepKind.HANDLER)
    if not _check_step_keys(c, spec, kind, loc):
        return None
    names = ROOTS | c.loop_vars.get(name, set())
    who = f"step {name!r}"
    fields: dict[str, Any] = {"name": name, "kind": kind, "line": c.line(loc)}
    ok = True
    if kind is model.StepKind.HANDLER:
        fields["queue"] = _queue(c, spec.get("queue", name), (*loc, "queue"))
        ok = fields["queue"] is not None
    elif kind is model.StepKind.BUILTIN:
        fields["builtin"], fields["params"] = builtin(c, spec, loc, names, who)
        ok = fields["params"] is not None
    elif kind is model.StepKind.JOB:
        fields["params"] = job(c, spec["job"], (*loc, "job"), names, who)
        ok = fields["params"] is not None
    else:
        fields["child"] = _child(c, spec["workflow"], (*loc, "workflow"))
        ok = fields["child"] is not None
    if "input" in spec:
        fields["input"] = c.template(spec["input"], (*loc, "input"), names, who)
        ok = ok and fields["input"] is not None
    if "retry" in spec:
        fields["retry"] = retry(c, spec["retry"], (*loc, "retry"))
        ok = ok and fields["retry"] is not None
    if "timeout" in spec:
        fields["timeouts"] = timeouts(c, spec["timeout"], (*loc, "timeout"))
        ok = ok and fields["timeouts"] is not None
    return model.StepDef(**fields) if ok else None


def _check_step_keys(c: Compilation, spec: dict[str, Any], kind: model.StepKind, loc: Loc) -> bool:
    """Keys that only make sense for some kinds of step."""
    problems = len(c.violations)
    if "with" in spec and kind is not model.StepKind.BUILTIN:
        c.problem((*loc, "with"), "with: holds the parameters of a uses: builtin")
    if "queue" in spec and kind is not model.StepKind.HANDLER:
        c.problem((*loc, "queue"), "queue: is for handler steps (not uses:, job: or workflow:)")
    if "input" in spec and kind in (model.StepKind.BUILTIN, model.StepKind.JOB):
        where = "with:" if kind is model.StepKind.BUILTIN else "the job: template"
        c.problem((*loc, "input"), f"input: is for handler and child-workflow steps; use {where}")
    return len(c.violations) == problems


def _queue(c: Compilation, value: object, loc: Loc) -> str | None:
    queue = c.string(value, loc, "queue")
    if queue is not None and (not _QUEUE.match(queue) or len(queue) > MAX_ID):
        c.problem(loc, f"invalid queue {queue!r}: use letters, digits, '-' and '_'")
        return None
    return queue


def _child(c: Compilation, value: object, loc: Loc) -> model.ChildWorkflow | None:
    child = c.mapping(value, loc, _CHILD_KEYS, "workflow (child workflow)")
    if child is None:
        return None
    if "id" not in child:
        c.problem((*loc, "id"), "missing: a child workflow needs id: (its definition id)")
        return None
    definition = c.string(child["id"], (*loc, "id"), "id")
    if definition is not None and (not DEFINITION_ID.match(definition) or len(definition) > MAX_ID):
        c.problem((*loc, "id"), f"invalid definition id {definition!r}: use [a-z0-9][a-z0-9._-]*")
        definition = None
    version = c.integer(child.get("version", 0), (*loc, "version"), "version", 0)
    if definition is None or version is None:
        return None
    return model.ChildWorkflow(definition_id=definition, version=version)
