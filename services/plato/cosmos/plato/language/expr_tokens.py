"""The words of the workflow language and the tokenizer of its conditions and expressions.

Reserved names (:data:`ROOTS`, :data:`KEYWORDS`, :data:`RESERVED_STEP_NAMES`), the rule for step names,
the :class:`SyntaxProblem` every stage of :mod:`.expressions` raises, and :func:`tokenize`, which splits
user text into the tokens :mod:`.expr_parser` matches against the grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from cosmos.errors import CosmosError

__all__ = [
    "KEYWORDS",
    "RESERVED_STEP_NAMES",
    "ROOTS",
    "WORD",
    "SyntaxProblem",
    "Token",
    "step_name_problem",
    "tokenize",
]

ROOTS: Final = frozenset({"input", "steps", "workflow", "signals"})
"""Names every evaluation context has; loop variables may not shadow them."""
KEYWORDS: Final = frozenset({"and", "or", "not", "in", "all", "any", "each", "true", "false", "null"})
"""Words with a meaning of their own in conditions and fan-outs."""
RESERVED_STEP_NAMES: Final = ROOTS | KEYWORDS | {"signal"}
"""Names a step cannot have: ``input.completed`` would read as a path, ``all.completed`` as fan-in."""

_STEP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_MAX_NAME = 128


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
# Tokenizer.


@dataclass(frozen=True)
class Token:
    """One token of a condition or expression; ``value`` is the number or the unescaped string."""

    kind: str  # "word", "number", "string", "op" or "end"
    text: str
    column: int  # 1-based
    value: Any = None


_SPACE = re.compile(r"\s+")
# A number may not run into a name: "2pass" and "1.completed" are words, "1.5" and "-3" are numbers.
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![A-Za-z0-9_.\-])")
WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
"""A name token; :class:`~.expr_nodes.Path` prints a key that is not one as ``["key"]``."""
_OPS = ("==", "!=", "<=", ">=", "<", ">", "(", ")", "[", "]", ",", ".")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, ending with an ``end`` token; raises :class:`SyntaxProblem`."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
            continue
        token, pos = _next_token(text, pos)
        tokens.append(token)
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def _next_token(text: str, pos: int) -> tuple[Token, int]:
    char = text[pos]
    if char in "'\"":
        return _string_token(text, pos)
    number = _NUMBER.match(text, pos)
    if number:
        literal = number.group()
        value: int | float = float(literal) if any(c in literal for c in ".eE") else int(literal)
        return Token("number", literal, pos + 1, value), number.end()
    word = WORD.match(text, pos)
    if word:
        return Token("word", word.group(), pos + 1), word.end()
    for op in _OPS:
        if text.startswith(op, pos):
            return Token("op", op, pos + 1), pos + len(op)
    if char == "=":
        raise SyntaxProblem('unexpected "=": compare with "=="', pos + 1)
    if text.startswith(("&&", "||"), pos):
        raise SyntaxProblem(f'unexpected "{text[pos : pos + 2]}": join conditions with "and"', pos + 1)
    raise SyntaxProblem(f"unexpected character {char!r}", pos + 1)


def _string_token(text: str, start: int) -> tuple[Token, int]:
    quote = text[start]
    chars: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == quote:
            return Token("string", text[start : pos + 1], start + 1, "".join(chars)), pos + 1
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
