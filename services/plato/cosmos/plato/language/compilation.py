"""The state of one compilation and the typed readers every construct uses.

:class:`Compilation` collects every problem with its line (so an author fixes them all in one round)
and what the whole-definition checks need: which steps actions run, which steps conditions, loop
sources and templates read, and each rule's facts for the reachability check. The per-construct
modules (:mod:`.rules`, :mod:`.conditions`, :mod:`.actions`, :mod:`.fanout`, :mod:`.steps`, ...) are
functions over one :class:`Compilation`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cosmos.errors import FieldViolation
from cosmos.plato.language import model
from cosmos.plato.language.durations import parse_duration
from cosmos.plato.language.expressions import is_number, step_name_problem
from cosmos.plato.language.templates import TemplateProblem, TemplateValue, compile_template
from cosmos.plato.language.yaml_reader import Loc, field_name

__all__ = ["DEFINITION_ID", "MAX_ID", "Compilation", "RuleFacts", "kind_of"]

DEFINITION_ID = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
"""A definition id: the workflow's own (``workflow.id``) and a child workflow's (``workflow: {id: ...}``)."""
MAX_ID = 128


def kind_of(value: object) -> str:
    """A value's kind in the author's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if is_number(value):
        return "a number"
    return "a string"


@dataclass
class RuleFacts:
    """What the reachability check knows of one rule, filled in while it compiles."""

    index: int
    name: str
    predicates: tuple[model.Predicate, ...] | None = None  # None: the condition did not compile
    runs: set[str] = field(default_factory=set)


class Compilation:
    """Compiles the plain data of a document, collecting every problem with its location."""

    def __init__(self, lines: Mapping[Loc, int]) -> None:
        self.lines = lines
        self.violations: list[tuple[int, FieldViolation]] = []
        self.runs: dict[str, Loc] = {}  # step → where an action first runs it
        self.loop_vars: dict[str, set[str]] = {}  # step → loop variables of fan-outs running it
        self.refs: list[tuple[str, Loc]] = []  # steps named by conditions, sources and templates
        self.definition_id = ""
        self.rule_facts: list[RuleFacts] = []  # what reachability needs, also of rules that did not compile

    # -- reporting ---------------------------------------------------------------------------------------

    def line(self, loc: Loc) -> int:
        """Line of ``loc``, or of its nearest enclosing value that has one (a missing key)."""
        for size in range(len(loc), -1, -1):
            if loc[:size] in self.lines:
                return self.lines[loc[:size]]
        return 1

    def problem(self, loc: Loc, message: str) -> None:
        line = self.line(loc)
        self.violations.append(
            (line, FieldViolation(field_name(loc) or "workflow", f"line {line}: {message}"))
        )

    # -- typed readers -----------------------------------------------------------------------------------

    def mapping(self, value: object, loc: Loc, allowed: Iterable[str], what: str) -> dict[str, Any] | None:
        """``value`` as a mapping whose keys are all in ``allowed`` (unknown keys are reported)."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.problem(loc, f"{what} must be a mapping, found {kind_of(value)}")
            return None
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                self.problem((*loc, key), self.unknown_key(key, allowed, what))
        return value

    @staticmethod
    def unknown_key(key: str, allowed: tuple[str, ...], what: str) -> str:
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key {key!r} in {what} (allowed: {', '.join(allowed)}){hint}"

    def string(self, value: object, loc: Loc, what: str) -> str | None:
        if isinstance(value, str):
            return value
        self.problem(loc, f"{what} must be a string, found {kind_of(value)}")
        return None

    def integer(self, value: object, loc: Loc, what: str, minimum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(loc, f"{what} must be an integer, found {kind_of(value)}")
            return None
        if value < minimum:
            self.problem(loc, f"{what} must be at least {minimum}, found {value}")
            return None
        return value

    def number(self, value: object, loc: Loc, what: str, low: float, high: float = math.inf) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.problem(loc, f"{what} must be a number, found {kind_of(value)}")
            return None
        number = float(value)
        if not low <= number <= high:
            limits = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
            self.problem(loc, f"{what} must be {limits}, found {number:g}")
            return None
        return number

    def duration(self, value: object, loc: Loc, what: str, *, positive: bool = False) -> float | None:
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            self.problem(loc, f"{what}: {error}")
            return None
        if positive and seconds <= 0:
            self.problem(loc, f"{what} must be longer than 0")
            return None
        return seconds

    def step_name(self, value: object, loc: Loc) -> str | None:
        if not isinstance(value, str):
            self.problem(loc, f"expected a step name, found {kind_of(value)}")
            return None
        problem = step_name_problem(value)
        if problem:
            self.problem(loc, problem)
            return None
        return value

    def template(self, value: object, loc: Loc, names: Iterable[str], who: str) -> TemplateValue | None:
        """Compile a template whose placeholders may read ``names``; record the steps it reads."""
        try:
            template = compile_template(value)
        except TemplateProblem as error:
            for where, message in error.problems:
                self.problem((*loc, *where), message)
            return None
        unknown = sorted(template.names() - set(names))
        if unknown:
            listed = ", ".join(sorted(names))
            self.problem(loc, f"unknown name {unknown[0]!r} in a placeholder; {who} can read {listed}")
        self.refs.extend((step, loc) for step in sorted(template.step_refs()))
        return None if unknown else template

    # -- what actions run --------------------------------------------------------------------------------

    def run_step(self, value: object, loc: Loc) -> model.RunStep | None:
        """A step an action runs (``do: encode``, ``run: encode``), remembered for the definition checks."""
        name = self.step_name(value, loc)
        if name is None:
            return None
        self.runs.setdefault(name, loc)
        if self.rule_facts:
            self.rule_facts[-1].runs.add(name)
        return model.RunStep(name)
