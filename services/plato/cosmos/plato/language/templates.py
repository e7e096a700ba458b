"""Templated values: JSON-like data whose strings may hold ``${expr}`` placeholders.

``compile_template`` turns a YAML value (mapping, list, scalar) into an immutable tree of template nodes
once, at definition time; ``render(ctx)`` builds a fresh value per use and never mutates the template
or the context. Rules for strings:

* a string that is exactly one placeholder (``"${input.profiles}"``) renders to the expression's value
  with its type kept (list, number, mapping, null);
* otherwise every placeholder is interpolated as text: strings as they are, null as ``""``, everything
  else as JSON (``true``, ``1.5``, ``{"a":1}``);
* ``$${`` stands for a literal ``${``.

Placeholders hold a path or a literal of :mod:`.expressions` (``${steps.probe.output.uri}``,
``${profile.height}``, ``${'text'}``).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cosmos.errors import CosmosError
from cosmos.plato.language.expressions import Expression, SyntaxProblem, parse_expr

__all__ = [
    "Constant",
    "Interpolation",
    "ListTemplate",
    "MappingTemplate",
    "Placeholder",
    "TemplateProblem",
    "TemplateValue",
    "compile_template",
]

Location = tuple[str | int, ...]
"""Where inside the templated value: mapping keys and list indexes from its top."""


class TemplateProblem(CosmosError):
    """A value cannot be compiled; ``problems`` holds every ``(location, message)`` found."""

    def __init__(self, problems: list[tuple[Location, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(message for _, message in self.problems))


def _copy(value: Any) -> Any:
    """A fresh copy of JSON-like data, so a rendered value never aliases the context."""
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(item) for item in value]
    return value


def _as_text(value: Any) -> str:
    """How a placeholder value reads inside a longer string."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):  # cyclic or exotic data: rendering never raises
        return str(value)


class TemplateValue(abc.ABC):
    """A compiled template node; satisfies :class:`~cosmos.plato.language.model.Template`."""

    @abc.abstractmethod
    def render(self, ctx: Mapping[str, Any]) -> Any:
        """A fresh value with every placeholder replaced."""

    @abc.abstractmethod
    def step_refs(self) -> frozenset[str]:
        """Steps whose outputs the template reads."""

    @abc.abstractmethod
    def names(self) -> frozenset[str]:
        """Context names the placeholders read (``input``, ``steps``, loop variables, ...)."""


@dataclass(frozen=True)
class Constant(TemplateValue):
    """A scalar without placeholders."""

    value: str | int | float | bool | None

    def render(self, ctx: Mapping[str, Any]) -> Any:
        return self.value

    def step_refs(self) -> frozenset[str]:
        return frozenset()

    def names(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class Placeholder(TemplateValue):
    """A string that is exactly one ``${expr}``: renders to the value itself, type kept."""

    expr: Expression

    def render(self, ctx: Mapping[str, Any]) -> Any:
        return _copy(self.expr.evaluate(ctx))

    def step_refs(self) -> frozenset[str]:
        return self.expr.step_refs()

    def names(self) -> frozenset[str]:
        return self.expr.names()


@dataclass(frozen=True)
class Interpolation(TemplateValue):
    """A string mixing text and placeholders: renders to a string."""

    parts: tuple[str | Expression, ...]

    def render(self, ctx: Mapping[str, Any]) -> Any:
        return "".join(part if isinstance(part, str) else _as_text(part.evaluate(ctx)) for part in self.parts)

    def step_refs(self) -> frozenset[str]:
        return frozenset().union(*(p.step_refs() for p in self.parts if isinstance(p, Expression)))

    def names(self) -> frozenset[str]:
        return frozenset().union(*(p.names() for p in self.parts if isinstance(p, Expression)))


@dataclass(frozen=True)
class ListTemplate(TemplateValue):
    """A list of templates."""

    items: tuple[TemplateValue, ...]

    def render(self, ctx: Mapping[str, Any]) -> Any:
        return [item.render(ctx) for item in self.items]

    def step_refs(self) -> frozenset[str]:
        return frozenset().union(*(item.step_refs() for item in self.items))

    def names(self) -> frozenset[str]:
        return frozenset().union(*(item.names() for item in self.items))


@dataclass(frozen=True)
class MappingTemplate(TemplateValue):
    """A mapping with literal keys and templated values, in source order."""

    entries: tuple[tuple[str, TemplateValue], ...]

    def render(self, ctx: Mapping[str, Any]) -> Any:
        return {key: value.render(ctx) for key, value in self.entries}

    def step_refs(self) -> frozenset[str]:
        return frozenset().union(*(value.step_refs() for _, value in self.entries))

    def names(self) -> frozenset[str]:
        return frozenset().union(*(value.names() for _, value in self.entries))


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` ending a placeholder whose expression starts at ``start`` (quotes respected)."""
    quote = ""
    pos = start
    while pos < len(text):
        char = text[pos]
        if quote:
            if char == "\\":
                pos += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "}":
            return pos
        pos += 1
    return -1


class _Compiler:
    """Compiles one value, collecting every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[tuple[Location, str]] = []

    def value(self, value: Any, where: Location) -> TemplateValue:
        if value is None or isinstance(value, bool | int | float):
            return Constant(value)
        if isinstance(value, str):
            return self.string(value, where)
        if isinstance(value, list | tuple):
            return ListTemplate(tuple(self.value(item, (*where, i)) for i, item in enumerate(value)))
        if isinstance(value, Mapping):
            return self.mapping(value, where)
        self.problems.append((where, f"unsupported value of type {type(value).__name__}"))
        return Constant(None)

    def mapping(self, value: Mapping[Any, Any], where: Location) -> TemplateValue:
        entries: list[tuple[str, TemplateValue]] = []
        for key, item in value.items():
            if not isinstance(key, str):
                self.problems.append(((*where, str(key)), f"mapping keys must be strings, found {key!r}"))
                continue
            entries.append((key, self.value(item, (*where, key))))
        return MappingTemplate(tuple(entries))

    def string(self, text: str, where: Location) -> TemplateValue:
        parts = self.split(text, where)
        if len(parts) == 1 and isinstance(parts[0], Expression):
            return Placeholder(parts[0])
        if all(isinstance(part, str) for part in parts):
            return Constant("".join(str(part) for part in parts))
        return Interpolation(tuple(parts))

    def split(self, text: str, where: Location) -> list[str | Expression]:
        """Literal text and placeholder expressions of ``text``, in order."""
        parts: list[str | Expression] = []
        literal: list[str] = []
        pos = 0
        while pos < len(text):
            if text.startswith("$${", pos):
                literal.append("${")
                pos += 3
            elif text.startswith("${", pos):
                end = _closing_brace(text, pos + 2)
                if end < 0:
                    self.problems.append((where, f'unterminated "${{": expected "}}" (column {pos + 1})'))
                    return [text]
                expr = self.placeholder(text[pos + 2 : end], pos + 2, where)
                if literal:
                    parts.append("".join(literal))
                    literal = []
                if expr is not None:
                    parts.append(expr)
                pos = end + 1
            else:
                literal.append(text[pos])
                pos += 1
        if literal or not parts:
            parts.append("".join(literal))
        return parts

    def placeholder(self, inner: str, offset: int, where: Location) -> Expression | None:
        try:
            return parse_expr(inner)
        except SyntaxProblem as problem:
            # Columns count from the start of the whole string, as the author sees it.
            self.problems.append(
                (where, f"in placeholder: {problem.message} at column {offset + problem.column}")
            )
            return None


def compile_template(value: Any) -> TemplateValue:
    """Compile a JSON-like value; raises :class:`TemplateProblem` listing every bad placeholder."""
    compiler = _Compiler()
    template = compiler.value(value, ())
    if compiler.problems:
        raise TemplateProblem(compiler.problems)
    return template
