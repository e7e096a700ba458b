"""The value semantics of the workflow language: total functions over JSON-like values.

:mod:`.expr_nodes` evaluates with these; none of them raises on odd data. ``==`` compares by value
(``1 == 1.0``; booleans are not numbers); ordering comparisons between values of different types (or
with null) are false; ``in`` works on lists and strings and is false otherwise (so is ``not in``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["compare", "is_number", "step_into", "truthy", "values_equal"]


def is_number(value: object) -> bool:
    # bool is an int subclass in Python; in the language it is not a number.
    return isinstance(value, int | float) and not isinstance(value, bool)


def truthy(value: object) -> bool:
    """Truth of a value: null, false, 0, "", [] and {} are false, everything else true."""
    try:
        return bool(value)
    except Exception:  # an exotic object whose __bool__ fails is not truthy; evaluation never raises
        return False


def values_equal(left: object, right: object) -> bool:
    """``==`` of the language: by value, numbers across int/float, booleans only equal booleans."""
    if is_number(left) and is_number(right):
        return left == right
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, str) or isinstance(right, str):
        return isinstance(left, str) and isinstance(right, str) and left == right
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(values_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(values_equal(left[k], right[k]) for k in left)
    return False


def _ordered(op: str, left: object, right: object) -> bool:
    comparable = (is_number(left) and is_number(right)) or (isinstance(left, str) and isinstance(right, str))
    if not comparable:
        return False
    a: Any = left
    b: Any = right
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _contains(container: object, item: object) -> bool | None:
    """Membership, or None when ``container`` is neither a list nor a string (then both in/not in fail)."""
    if isinstance(container, list | tuple):
        return any(values_equal(item, element) for element in container)
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    return None


def compare(op: str, left: object, right: object) -> bool:
    """``left OP right`` for one of ``== != < <= > >= in`` and ``not in``."""
    if op == "==":
        return values_equal(left, right)
    if op == "!=":
        return not values_equal(left, right)
    if op in ("in", "not in"):
        found = _contains(right, left)
        if found is None:
            return False
        return found if op == "in" else not found
    return _ordered(op, left, right)


def step_into(value: object, segment: str | int) -> object:
    """One path step; anything that does not fit the shape of ``value`` is null."""
    if isinstance(value, Mapping):
        return value.get(segment if isinstance(segment, str) else str(segment))
    if isinstance(value, list | tuple):
        digits = segment.isascii() and segment.isdigit() if isinstance(segment, str) else False
        index = segment if isinstance(segment, int) else int(segment) if digits else None
        if index is not None and -len(value) <= index < len(value):
            return value[index]
    return None
