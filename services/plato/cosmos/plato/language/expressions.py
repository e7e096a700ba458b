"""Conditions and value expressions of the workflow language.

A small tokenizer and a recursive-descent parser turn the text of ``when:`` conditions, fan-out sources
(``for: each x in input.list``) and template placeholders (``${steps.probe.output.uri}``) into the
immutable expression objects of :mod:`.expr_nodes`. User text is only ever tokenized and matched against
the grammar; nothing is handed to Python's ``eval``, ``exec`` or ``ast.literal_eval``.

Grammar (``[]`` optional, ``*`` repeated)::

    condition  := term ("and" term)*
    term       := "(" condition ")" | event | guard
    event      := "workflow.started" | STEP ".completed" | STEP ".failed" | "all" STEP ".completed"
                | "any.failed" | "any" STEP ".failed" | "signal." NAME
    guard      := value [op value]          op := == != < <= > >= in "not in"
    value      := NUMBER | STRING | true | false | null | "[" [value ("," value)* [","]] "]" | path
    path       := NAME ("." NAME | "." INT | "[" INT "]" | "[" STRING "]")*
    loops      := "each" NAME "in" value ("," "each" NAME "in" value)*

Evaluation is *safe*: it never raises. A missing path is null; ordering comparisons between values of
different types (or with null) are false; ``==`` compares by value (``1 == 1.0``; booleans are not
numbers); ``in`` works on lists and strings and is false otherwise (so is ``not in``).

This module holds the entry points and re-exports the names the rest of the language uses; the work is
done by:

* :mod:`.expr_tokens` — reserved words, the step-name rule, :class:`SyntaxProblem` and the tokenizer;
* :mod:`.expr_parser` — the recursive-descent parser of the grammar above;
* :mod:`.expr_nodes` — the compiled expressions (:class:`Path`, :class:`Compare`, ...);
* :mod:`.expr_values` — the value semantics they evaluate with (:func:`values_equal`, :func:`truthy`).
"""

from __future__ import annotations

from collections.abc import Iterable

from cosmos.plato.language import model
from cosmos.plato.language.expr_nodes import Compare, Expression, ListValue, Literal, Path, Truthy
from cosmos.plato.language.expr_parser import Parser
from cosmos.plato.language.expr_tokens import (
    KEYWORDS,
    RESERVED_STEP_NAMES,
    ROOTS,
    SyntaxProblem,
    step_name_problem,
)
from cosmos.plato.language.expr_values import is_number, truthy, values_equal

__all__ = [
    "KEYWORDS",
    "RESERVED_STEP_NAMES",
    "ROOTS",
    "Compare",
    "Expression",
    "ListValue",
    "Literal",
    "Path",
    "SyntaxProblem",
    "Truthy",
    "is_number",
    "parse_condition",
    "parse_conjunction",
    "parse_expr",
    "parse_loops",
    "step_name_problem",
    "truthy",
    "values_equal",
]


def parse_conjunction(text: str) -> tuple[tuple[model.Predicate, ...], tuple[Expression, ...]]:
    """The event predicates and guards of one condition text, which may lack an event predicate."""
    parser = Parser(text, ROOTS)
    predicates: list[model.Predicate] = []
    guards: list[Expression] = []
    parser.conjunction(predicates, guards)
    parser.expect_end('"and" or the end of the condition')
    return tuple(predicates), tuple(guards)


def parse_condition(text: str) -> model.Condition:
    """Compile a ``when:`` condition; raises :class:`SyntaxProblem`."""
    predicates, guards = parse_conjunction(text)
    if not predicates:
        raise SyntaxProblem(
            'a condition needs at least one event predicate such as "workflow.started" or "x.completed"', 1
        )
    return model.Condition(predicates=predicates, guards=guards, text=text.strip())


def parse_expr(text: str) -> Expression:
    """Compile a value expression (a path or a literal), as used in ``${...}``; raises SyntaxProblem.

    Any name may start a path here (loop variables); callers check :meth:`Expression.names`.
    """
    parser = Parser(text, None)
    value = parser.value()
    parser.expect_end("the end of the expression")
    return value


def parse_loops(text: str, taken: Iterable[str] = ()) -> tuple[model.Loop, ...]:
    """Compile ``each VAR in SOURCE[, each VAR in SOURCE...]`` (cartesian, first outermost).

    Sources may only read the workflow context (``input``, ``steps``, ``workflow``, ``signals``);
    ``taken`` holds variables earlier clauses of the same fan-out declared.
    """
    return tuple(Parser(text, ROOTS).loops(frozenset(taken)))
