"""The recursive-descent parser of conditions, value expressions and fan-out loops.

:class:`Parser` matches the tokens of :func:`~.expr_tokens.tokenize` against the grammar documented in
:mod:`.expressions` (whose functions are the entry points) and builds :mod:`.expr_nodes` objects and
:mod:`.model` predicates and loops. Every mistake is a :class:`~.expr_tokens.SyntaxProblem` that names
what was expected and where.
"""

from __future__ import annotations

import difflib
import re
from typing import Final, NoReturn

from cosmos.plato.language import model
from cosmos.plato.language.expr_nodes import Compare, Expression, ListValue, Literal, Path, Truthy
from cosmos.plato.language.expr_tokens import (
    KEYWORDS,
    ROOTS,
    SyntaxProblem,
    Token,
    step_name_problem,
    tokenize,
)

__all__ = ["STEP_OUTPUT_FIELDS", "Parser"]

STEP_OUTPUT_FIELDS: Final = ("output", "outputs")
"""What ``steps.<name>.`` offers in the evaluation context."""

_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_NESTING = 32


def _describe(token: Token) -> str:
    return "the end" if token.kind == "end" else f'"{token.text}"'


class Parser:
    """Recursive descent over the token list; ``roots`` limits path roots (None = any name)."""

    def __init__(self, text: str, roots: frozenset[str] | None) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.roots = roots
        self.depth = 0

    # -- token access ------------------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.peek()
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def at_op(self, op: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "op" and token.text == op

    def at_word(self, word: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "word" and token.text == word

    def fail(self, expected: str, token: Token | None = None) -> NoReturn:
        token = token or self.peek()
        raise SyntaxProblem(f"expected {expected}, found {_describe(token)}", token.column)

    def expect_op(self, op: str, expected: str) -> Token:
        if not self.at_op(op):
            self.fail(expected)
        return self.advance()

    def expect_word(self, word: str, expected: str) -> Token:
        if not self.at_word(word):
            self.fail(expected)
        return self.advance()

    def expect_end(self, expected: str) -> None:
        if self.peek().kind != "end":
            self.fail(expected)

    def source_since(self, start: Token) -> str:
        """The text from ``start`` up to the last consumed token, as written."""
        last = self.tokens[self.pos - 1] if self.pos else start
        return self.text[start.column - 1 : last.column - 1 + len(last.text)]

    # -- conditions --------------------------------------------------------------------------------------

    def conjunction(self, predicates: list[model.Predicate], guards: list[Expression]) -> None:
        self.term(predicates, guards)
        while True:
            if self.at_word("and"):
                self.advance()
                self.term(predicates, guards)
            elif self.at_word("or"):
                raise SyntaxProblem(
                    '"or" is not supported: write one rule per alternative (several rules may run the same '
                    "actions)",
                    self.peek().column,
                )
            else:
                return

    def term(self, predicates: list[model.Predicate], guards: list[Expression]) -> None:
        token = self.peek()
        if self.at_op("("):
            self.nested(predicates, guards)
        elif self.at_word("not") and not self.at_word("in", 1):
            raise SyntaxProblem(
                '"not" is not supported: compare with "!=" or "not in", or write a separate rule',
                token.column,
            )
        elif token.kind == "end" or (token.kind == "word" and token.text in ("and", "or")):
            self.fail('a step event like "x.completed" or a comparison')
        elif self.event_ahead():
            predicates.append(self.event())
        else:
            guards.append(self.guard())

    def nested(self, predicates: list[model.Predicate], guards: list[Expression]) -> None:
        opening = self.advance()
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise SyntaxProblem("parentheses nested too deeply", opening.column)
        self.conjunction(predicates, guards)
        self.expect_op(")", f'"and" or ")" to close the "(" at column {opening.column}')
        self.depth -= 1

    def event_ahead(self) -> bool:
        token = self.peek()
        if token.kind != "word":
            return False
        word = token.text
        if word == "workflow":
            return self.at_op(".", 1) and self.at_word("started", 2)
        if word == "all":
            return self.peek(1).kind == "word"
        if word == "any":
            return self.at_op(".", 1) or self.peek(1).kind == "word"
        if word == "signal":
            return True
        # Any other name that is not a context root starts a step event ("probe-source.completed").
        return word not in ROOTS and word not in KEYWORDS

    def event(self) -> model.Predicate:
        word = self.peek().text
        if word == "workflow":
            self.pos += 3  # "workflow" "." "started", as event_ahead checked
            return model.Predicate(model.PredicateKind.WORKFLOW_STARTED)
        if word == "signal":
            self.advance()
            self.expect_op(".", 'a signal event like "signal.approved"')
            name = self.peek()
            if name.kind not in ("word", "number"):
                self.fail('a signal name after "signal."')
            self.advance()
            return model.Predicate(model.PredicateKind.SIGNAL, signal=name.text)
        if word == "all":
            self.advance()
            step = self.step_name()
            self.event_suffix(step, ("completed",))
            return model.Predicate(model.PredicateKind.ALL_COMPLETED, step=step)
        if word == "any":
            self.advance()
            if self.at_op("."):
                self.advance()
                self.expect_word("failed", '"failed" after "any." (any.failed)')
                return model.Predicate(model.PredicateKind.ANY_FAILED)
            step = self.step_name()
            self.event_suffix(step, ("failed",))
            return model.Predicate(model.PredicateKind.FAILED, step=step)
        if not self.at_op(".", 1):
            self.fail(
                'a step event like "x.completed", or a comparison over input, steps, workflow or signals'
            )
        step = self.step_name()
        close = difflib.get_close_matches(step, ROOTS, n=1)
        hint = f' (or did you mean "{close[0]}"?)' if close else ""
        suffix = self.event_suffix(step, ("completed", "failed"), hint)
        kind = model.PredicateKind.COMPLETED if suffix == "completed" else model.PredicateKind.FAILED
        return model.Predicate(kind, step=step)

    def step_name(self) -> str:
        token = self.peek()
        if token.kind not in ("word", "number"):
            self.fail("a step name")
        problem = step_name_problem(token.text)
        if problem:
            raise SyntaxProblem(problem, token.column)
        self.advance()
        return token.text

    def event_suffix(self, step: str, allowed: tuple[str, ...], hint: str = "") -> str:
        choices = " or ".join(f'"{step}.{suffix}"' for suffix in allowed)
        expected = f"a step event like {choices}{hint}"
        self.expect_op(".", expected)
        token = self.peek()
        if token.kind != "word" or token.text not in allowed:
            self.fail(expected)
        return self.advance().text

    def guard(self) -> Expression:
        left = self.value()
        op = self.comparison_op()
        if op is None:
            return Truthy(left)
        return Compare(op, left, self.value())

    def comparison_op(self) -> str | None:
        token = self.peek()
        if token.kind == "op" and token.text in ("==", "!=", "<", "<=", ">", ">="):
            self.advance()
            return token.text
        if self.at_word("in"):
            self.advance()
            return "in"
        if self.at_word("not") and self.at_word("in", 1):
            self.advance()
            self.advance()
            return "not in"
        return None

    # -- values ------------------------------------------------------------------------------------------

    def value(self) -> Expression:
        token = self.peek()
        if token.kind in ("number", "string"):
            self.advance()
            return Literal(token.value)
        if token.kind == "word" and token.text in ("true", "false", "null"):
            self.advance()
            return Literal({"true": True, "false": False, "null": None}[token.text])
        if self.at_op("["):
            return self.list_value()
        if token.kind == "word" and token.text not in KEYWORDS:
            return self.path()
        self.fail("a value (a path like input.x, a number, a quoted string, true, false, null or a list)")

    def list_value(self) -> Expression:
        opening = self.advance()
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise SyntaxProblem("lists nested too deeply", opening.column)
        items: list[Expression] = []
        while not self.at_op("]"):
            items.append(self.value())
            if not self.at_op(","):
                break
            self.advance()
        self.expect_op("]", f'"," or "]" to close the list opened at column {opening.column}')
        self.depth -= 1
        return ListValue(tuple(items))

    def path(self) -> Expression:
        root = self.advance()
        if self.roots is not None and root.text not in self.roots:
            known = ", ".join(sorted(self.roots))
            raise SyntaxProblem(
                f'expected a step event like "{root.text}.completed", or a value starting with {known}; '
                f"found {_describe(root)}",
                root.column,
            )
        segments: list[str | int] = []
        if root.text == "steps":
            segments.extend(self.step_segments())
        while self.at_op(".") or self.at_op("["):
            segments.append(self.segment())
        return Path(root.text, tuple(segments))

    def step_segments(self) -> list[str | int]:
        """``steps.<name>`` and, if present, ``.output`` / ``.outputs``: the shape the engine provides."""
        self.expect_op(".", 'a step name after "steps" (steps.x.output)')
        name = self.step_name()
        if not self.at_op("."):
            return [name]
        self.advance()
        token = self.peek()
        if token.kind != "word" or token.text not in STEP_OUTPUT_FIELDS:
            self.fail(f'"output" or "outputs" after "steps.{name}."')
        self.advance()
        return [name, token.text]

    def segment(self) -> str | int:
        if self.advance().text == ".":
            token = self.peek()
            if token.kind == "word" or (token.kind == "number" and isinstance(token.value, int)):
                self.advance()
                return token.text
            self.fail('a name after "."')
        token = self.peek()
        if token.kind == "string" or (token.kind == "number" and isinstance(token.value, int)):
            self.advance()
            self.expect_op("]", '"]"')
            key: str | int = token.value
            return key
        self.fail('an integer index or a quoted key inside "[...]"')

    # -- fan-out loops -----------------------------------------------------------------------------------

    def loops(self, taken: frozenset[str]) -> list[model.Loop]:
        loops: list[model.Loop] = []
        seen = set(taken)
        while True:
            start = self.expect_word("each", '"each VAR in SOURCE" (e.g. "each profile in input.profiles")')
            var = self.loop_variable(seen)
            self.expect_word("in", f'"in" after "each {var}"')
            source = self.value()
            loops.append(model.Loop(var=var, source=source, text=self.source_since(start)))
            seen.add(var)
            if not self.at_op(","):
                self.expect_end('"," and another "each VAR in SOURCE", or the end')
                return loops
            self.advance()

    def loop_variable(self, seen: set[str]) -> str:
        token = self.peek()
        if token.kind != "word" or not _VARIABLE_NAME.match(token.text) or token.text in KEYWORDS:
            self.fail("a loop variable name (letters, digits and _)")
        if token.text in ROOTS:
            raise SyntaxProblem(f"loop variable {token.text!r} would shadow the context root", token.column)
        if token.text in seen:
            raise SyntaxProblem(f"loop variable {token.text!r} is already used in this fan-out", token.column)
        self.advance()
        return token.text
