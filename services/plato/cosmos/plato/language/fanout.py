"""``fanout:``: one step run per combination of ``for:`` loop values, ``maxConcurrency`` at a time."""

from __future__ import annotations

from cosmos.plato.language import model
from cosmos.plato.language.compilation import Compilation
from cosmos.plato.language.expressions import SyntaxProblem, parse_loops
from cosmos.plato.language.yaml_reader import Loc

__all__ = ["fanout"]

_FANOUT_KEYS = ("for", "run", "maxConcurrency")


def fanout(c: Compilation, value: object, loc: Loc) -> model.Fanout | None:
    spec = c.mapping(value, loc, _FANOUT_KEYS, "fanout")
    if spec is None:
        return None
    for key in ("for", "run"):
        if key not in spec:
            c.problem((*loc, key), f"missing: fanout needs {key}:")
    loops = _loops(c, spec["for"], (*loc, "for")) if "for" in spec else None
    step = c.run_step(spec["run"], (*loc, "run")) if "run" in spec else None
    limit = None
    if spec.get("maxConcurrency") is not None:
        limit = c.integer(spec["maxConcurrency"], (*loc, "maxConcurrency"), "maxConcurrency", 1)
        if limit is None:
            return None
    if loops is None or step is None:
        return None
    # The step's templates may read these variables (steps.step checks its placeholders against them).
    c.loop_vars.setdefault(step.step, set()).update(loop.var for loop in loops)
    return model.Fanout(loops=loops, run=step.step, max_concurrency=limit)


def _loops(c: Compilation, value: object, loc: Loc) -> tuple[model.Loop, ...] | None:
    """``for:``: one ``each VAR in SOURCE`` string (comma-separated clauses allowed) or a list of them."""
    items = value if isinstance(value, list) and value else [value]
    loops: list[model.Loop] = []
    for i, item in enumerate(items):
        item_loc = (*loc, i) if isinstance(value, list) else loc
        text = c.string(item, item_loc, 'for: ("each VAR in SOURCE")')
        if text is None:
            return None
        try:
            clauses = parse_loops(text, taken=[loop.var for loop in loops])
        except SyntaxProblem as error:
            c.problem(item_loc, str(error))
            return None
        loops.extend(clauses)
        c.refs.extend((step, item_loc) for loop in clauses for step in sorted(loop.source.step_refs()))
    return tuple(loops)
