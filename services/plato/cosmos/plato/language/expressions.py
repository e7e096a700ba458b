"""Conditions and value expressions of the workflow language.

A small tokenizer and a recursive-descent parser turn the text of ``when:`` conditions, fan-out sources
(``for: each x in input.list``) and template placeholders (``${steps.probe.output.uri}``) into the
immutable expression objects below. User text is only ever tokenized and matched against the grammar;
nothing is handed to Python's ``eval``, ``exec`` or ``ast.literal_eval``.

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
"""

from __future__ import annotations

import abc
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from cosmos.errors import CosmosError
from cosmos.plato.language import model

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

ROOTS: Final = frozenset({"input", "steps", "workflow", "signals"})
"""Names every evaluation context has; loop variables may not shadow them."""
KEYWORDS: Final = frozenset({"and", "or", "not", "in", "all", "any", "each", "true", "false", "null"})
"""Words with a meaning of their own in conditions and fan-outs."""
RESERVED_STEP_NAMES: Final = ROOTS | KEYWORDS | {"signal"}
"""Names a step cannot have: ``input.completed`` would read as a path, ``all.completed`` as fan-in."""
STEP_OUTPUT_FIELDS: Final = ("output", "outputs")
"""What ``steps.<name>.`` offers in the evaluation context."""

_STEP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_NAME = 128
_MAX_NESTING = 32


class SyntaxProblem(CosmosError):
    """A condition or expression does not follow the grammar; ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        self.message = message
        self.column = column
        super().__init__(f"{message} at column {column}")


def step_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a step name, or None when it can."""
    if not _STEP_NAME.match(name):
        return f"invalid step name {name!r}: use lowercase letters, digits, '-' and '_' ([a-z0-9][a-z0-9_-]*)"
    if len(name) > _MAX_NAME:
        return f"step name {name[:20]!r}... is longer than {_MAX_NAME} characters"
    if name in RESERVED_STEP_NAMES:
        return f"{name!r} is reserved and cannot name a step"
    return None


# ---------------------------------------------------------------------------------------------------------
# Evaluation helpers: total functions over JSON-like values.


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


def _compare(op: str, left: object, right: object) -> bool:
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


def _step_into(value: object, segment: str | int) -> object:
    """One path step; anything that does not fit the shape of ``value`` is null."""
    if isinstance(value, Mapping):
        return value.get(segment if isinstance(segment, str) else str(segment))
    if isinstance(value, list | tuple):
        digits = segment.isascii() and segment.isdigit() if isinstance(segment, str) else False
        index = segment if isinstance(segment, int) else int(segment) if digits else None
        if index is not None and -len(value) <= index < len(value):
            return value[index]
    return None


# ---------------------------------------------------------------------------------------------------------
# Compiled expressions (they satisfy model.Expr).


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
            value = _step_into(value, segment)
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
                parts.append(f".{segment}" if _WORD.fullmatch(segment) else f"[{json.dumps(segment)}]")
        return "".join(parts)


@dataclass(frozen=True)
class Compare(Expression):
    """A guard comparison ``left OP right``; evaluates to a bool and never raises."""

    op: str
    left: Expression
    right: Expression

    def evaluate(self, ctx: Mapping[str, Any]) -> Any:
        try:
            return _compare(self.op, self.left.evaluate(ctx), self.right.evaluate(ctx))
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


# ---------------------------------------------------------------------------------------------------------
# Tokenizer.


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "number", "string", "op" or "end"
    text: str
    column: int  # 1-based
    value: Any = None


_SPACE = re.compile(r"\s+")
# A number may not run into a name: "2pass" and "1.completed" are words, "1.5" and "-3" are numbers.
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![A-Za-z0-9_.\-])")
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
_OPS = ("==", "!=", "<=", ">=", "<", ">", "(", ")", "[", "]", ",", ".")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
            continue
        token, pos = _next_token(text, pos)
        tokens.append(token)
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


def _next_token(text: str, pos: int) -> tuple[_Token, int]:
    char = text[pos]
    if char in "'\"":
        return _string_token(text, pos)
    number = _NUMBER.match(text, pos)
    if number:
        literal = number.group()
        value: int | float = float(literal) if any(c in literal for c in ".eE") else int(literal)
        return _Token("number", literal, pos + 1, value), number.end()
    word = _WORD.match(text, pos)
    if word:
        return _Token("word", word.group(), pos + 1), word.end()
    for op in _OPS:
        if text.startswith(op, pos):
            return _Token("op", op, pos + 1), pos + len(op)
    if char == "=":
        raise SyntaxProblem('unexpected "=": compare with "=="', pos + 1)
    if text.startswith(("&&", "||"), pos):
        raise SyntaxProblem(f'unexpected "{text[pos : pos + 2]}": join conditions with "and"', pos + 1)
    raise SyntaxProblem(f"unexpected character {char!r}", pos + 1)


def _string_token(text: str, start: int) -> tuple[_Token, int]:
    quote = text[start]
    chars: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == quote:
            return _Token("string", text[start : pos + 1], start + 1, "".join(chars)), pos + 1
        if char == "\\":
            escaped, pos = _escape(text, pos)
            chars.append(escaped)
            continue
        chars.append(char)
        pos += 1
    raise SyntaxProblem(f"unterminated string: expected a closing {quote}", start + 1)


def _escape(text: str, pos: int) -> tuple[str, int]:
    """The character a backslash escape at ``pos`` stands for, and the position after it."""
    code = text[pos + 1 : pos + 2]
    if code in _ESCAPES:
        return _ESCAPES[code], pos + 2
    if code == "u":
        digits = text[pos + 2 : pos + 6]
        if len(digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in digits):
            return chr(int(digits, 16)), pos + 6
    raise SyntaxProblem("unknown escape: use \\n \\t \\r \\0 \\\\ \\' \\\" or \\uXXXX", pos + 1)


# ---------------------------------------------------------------------------------------------------------
# Parser.


def _describe(token: _Token) -> str:
    return "the end" if token.kind == "end" else f'"{token.text}"'


class _Parser:
    """Recursive descent over the token list; ``roots`` limits path roots (None = any name)."""

    def __init__(self, text: str, roots: frozenset[str] | None) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.roots = roots
        self.depth = 0

    # -- token access ------------------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.peek()
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def at_op(self, op: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "op" and token.text == op

    def at_word(self, word: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "word" and token.text == word

    def fail(self, expected: str, token: _Token | None = None) -> NoReturn:
        token = token or self.peek()
        raise SyntaxProblem(f"expected {expected}, found {_describe(token)}", token.column)

    def expect_op(self, op: str, expected: str) -> _Token:
        if not self.at_op(op):
            self.fail(expected)
        return self.advance()

    def expect_word(self, word: str, expected: str) -> _Token:
        if not self.at_word(word):
            self.fail(expected)
        return self.advance()

    def expect_end(self, expected: str) -> None:
        if self.peek().kind != "end":
            self.fail(expected)

    def source_since(self, start: _Token) -> str:
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


# ---------------------------------------------------------------------------------------------------------
# Entry points.


def parse_conjunction(text: str) -> tuple[tuple[model.Predicate, ...], tuple[Expression, ...]]:
    """The event predicates and guards of one condition text, which may lack an event predicate."""
    parser = _Parser(text, ROOTS)
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
    parser = _Parser(text, None)
    value = parser.value()
    parser.expect_end("the end of the expression")
    return value


def parse_loops(text: str, taken: Iterable[str] = ()) -> tuple[model.Loop, ...]:
    """Compile ``each VAR in SOURCE[, each VAR in SOURCE...]`` (cartesian, first outermost).

    Sources may only read the workflow context (``input``, ``steps``, ``workflow``, ``signals``);
    ``taken`` holds variables earlier clauses of the same fan-out declared.
    """
    return tuple(_Parser(text, ROOTS).loops(frozenset(taken)))
