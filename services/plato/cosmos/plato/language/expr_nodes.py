"""The compiled expressions of the workflow language; they satisfy :class:`~.model.Expr`.

:mod:`.expressions` compiles user text into these immutable objects. Evaluation never raises: a missing
path is null, and comparisons follow the value semantics of :mod:`.expr_values`.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cosmos.plato.language.expr_tokens import WORD
from cosmos.plato.language.expr_values import compare, step_into, truthy

__all__ = ["Compare", "Expression", "ListValue", "Literal", "Path", "Truthy"]


class Expression(abc.ABC):
    """A compiled expression; satisfies :class:`~cosmos.plato.language.model.Expr`."""

    @abc.abstractmethod
    def evaluate(self, ctx: Mapping[str, Any]) -> Any:
        """The value in ``ctx``; never raises."""

    @abc.abstractmethod
    def step_refs(self) -> frozenset[str]:
        """Steps whose outputs the expression reads."""

    @abc.abstractmethod
    def names(self) -> frozenset[str]:
        """Context names the expression reads (roots such as ``input`` and loop variables)."""


@dataclass(frozen=True)
class Literal(Expression):
    """A constant: number, string, boolean or null."""

    value: str | int | float | bool | None

    def evaluate(self, ctx: Mapping[str, Any]) -> Any:
        return self.value

    def step_refs(self) -> frozenset[str]:
        return frozenset()

    def names(self) -> frozenset[str]:
        return frozenset()

    def __str__(self) -> str:
        return json.dumps(self.value)


@dataclass(frozen=True)
class ListValue(Expression):
    """A list literal; items may be paths too (``[input.a, 'b']``)."""

    items: tuple[Expression, ...]

    def evaluate(self, ctx: Mapping[str, Any]) -> Any:
        return [item.evaluate(ctx) for item in self.items]

    def step_refs(self) -> frozenset[str]:
        return frozenset().union(*(item.step_refs() for item in self.items))

    def names(self) -> frozenset[str]:
        return frozenset().union(*(item.names() for item in self.items))

    def __str__(self) -> str:
        return "[" + ", ".join(str(item) for item in self.items) + "]"


@dataclass(frozen=True)
class Path(Expression):
    """A path into the context: ``input.profiles[0]``, ``steps.probe.output.uri``, ``profile.name``."""

    root: str
    segments: tuple[str | int, ...] = ()

    def evaluate(self, ctx: Mapping[str, Any]) -> Any:
        value: object = ctx.get(self.root) if isinstance(ctx, Mapping) else None
        for segment in self.segments:
            if value is None:
                return None
            value = step_into(value, segment)
        return value

    def step_refs(self) -> frozenset[str]:
        if self.root == "steps" and self.segments:
            return frozenset({str(self.segments[0])})
        return frozenset()

    def names(self) -> frozenset[str]:
        return frozenset({self.root})

    def __str__(self) -> str:
        parts = [self.root]
        for segment in self.segments:
            if isinstance(segment, int):
                parts.append(f"[{segment}]")
            else:
                parts.append(f".{segment}" if WORD.fullmatch(segment) else f"[{json.dumps(segment)}]")
        return "".join(parts)


@dataclass(frozen=True)
class Compare(Expression):
    """A guard comparison ``left OP right``; evaluates to a bool and never raises."""

    op: str
    left: Expression
    right: Expression

    def evaluate(self, ctx: Mapping[str, Any]) -> Any:
        try:
            return compare(self.op, self.left.evaluate(ctx), self.right.evaluate(ctx))
        except Exception:  # absurdly deep or exotic data: the guard is false, evaluation never raises
            return False

    def step_refs(self) -> frozenset[str]:
        return self.left.step_refs() | self.right.step_refs()

    def names(self) -> frozenset[str]:
        return self.left.names() | self.right.names()

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


@dataclass(frozen=True)
class Truthy(Expression):
    """A bare value used as a guard (``input.dryRun``): true when the value is truthy."""

    value: Expression

    def evaluate(self, ctx: Mapping[str, Any]) -> Any:
        return truthy(self.value.evaluate(ctx))

    def step_refs(self) -> frozenset[str]:
        return self.value.step_refs()

    def names(self) -> frozenset[str]:
        return self.value.names()

    def __str__(self) -> str:
        return str(self.value)
