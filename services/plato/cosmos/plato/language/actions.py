"""``do:`` and ``onExhausted:``: actions (a step name, ``fanout:``, ``parallel:``) and lists run in order."""

from __future__ import annotations

from typing import Any

from cosmos.plato.language import model
from cosmos.plato.language.compilation import Compilation, kind_of
from cosmos.plato.language.fanout import fanout
from cosmos.plato.language.yaml_reader import Loc

__all__ = ["sequence"]

_ACTION_KEYS = ("fanout", "parallel")


def sequence(c: Compilation, value: object, loc: Loc) -> model.Sequence | None:
    """``do:`` / ``onExhausted:``: one action (a step name, fanout, parallel) or a list run in order."""
    if isinstance(value, str):
        step = c.run_step(value, loc)
        return None if step is None else model.Sequence((step,))
    if isinstance(value, list):
        return _sequence_items(c, value, loc)
    if isinstance(value, dict):
        action = _action(c, value, loc)
        return None if action is None else model.Sequence((action,))
    c.problem(loc, f"expected a step name or a list of actions, found {kind_of(value)}")
    return None


def _sequence_items(c: Compilation, value: list[Any], loc: Loc) -> model.Sequence | None:
    if not value:
        c.problem(loc, "a list of actions must not be empty")
        return None
    items = [_action(c, item, (*loc, i)) for i, item in enumerate(value)]
    if any(item is None for item in items):
        return None
    return model.Sequence(tuple(item for item in items if item is not None))


def _action(c: Compilation, value: object, loc: Loc) -> model.Action | None:
    if isinstance(value, str):
        return c.run_step(value, loc)
    if isinstance(value, list):
        return _sequence_items(c, value, loc)
    action = c.mapping(value, loc, _ACTION_KEYS, "an action")
    if action is None:
        return None
    if len(action) != 1:
        c.problem(loc, "an action mapping holds exactly one of fanout:, parallel:")
        return None
    if "fanout" in action:
        return fanout(c, action["fanout"], (*loc, "fanout"))
    if "parallel" in action:
        return _parallel(c, action["parallel"], (*loc, "parallel"))
    return None  # the unknown key was reported by mapping()


def _parallel(c: Compilation, value: object, loc: Loc) -> model.Parallel | None:
    if not isinstance(value, list) or not value:
        c.problem(loc, f"parallel: must be a non-empty list of branches, found {kind_of(value)}")
        return None
    branches = [_action(c, item, (*loc, i)) for i, item in enumerate(value)]
    if any(branch is None for branch in branches):
        return None
    return model.Parallel(tuple(branch for branch in branches if branch is not None))
