"""YAML workflow definitions → validated :class:`~cosmos.plato.language.model.Definition`.

``parse(source_yaml)`` reads the document with PyYAML's safe loader (no arbitrary tags), keeps the line
of every node, compiles rules, steps and templates, and then checks the definition as a whole (unknown
step references, declared steps no rule runs, rules that can never fire). Every problem found becomes
one field violation (``workflow.rules[2].when`` / ``line 7: ...``) of a single
:class:`~cosmos.errors.InvalidArgumentError`, so an author fixes them all in one round.

This module is the entry point; the work is done by:

* :mod:`.yaml_reader` — YAML text → plain data with the line of every value, bounded in size and depth;
* :mod:`.compilation` — the state of one compilation: problems, what actions run, typed readers;
* :mod:`.document` — the ``workflow:`` mapping, its id and limits; it calls the modules below;
* :mod:`.rules`, :mod:`.conditions` (``when:``), :mod:`.actions` (``do:``), :mod:`.fanout`;
* :mod:`.steps`, :mod:`.step_params` (``uses:`` / ``job:`` parameters), :mod:`.retry_and_timeouts`;
* :mod:`.definition_checks` — unknown steps, unused steps, rules that can never fire;
* :mod:`.durations` — ``500ms`` / ``1m30s`` → seconds (:func:`parse_duration`, re-exported here).

The language itself is documented in ``docs/workflow-language.md``.
"""

from __future__ import annotations

from typing import Final

import yaml

from cosmos.errors import FieldViolation, InvalidArgumentError, Reason
from cosmos.plato.language import model
from cosmos.plato.language.compilation import Compilation
from cosmos.plato.language.document import document
from cosmos.plato.language.durations import parse_duration
from cosmos.plato.language.yaml_reader import Abort, Reader, field_name

__all__ = ["REASON", "parse", "parse_duration"]

REASON: Final = Reason.ERROR_REASON_INVALID_DEFINITION
"""``ErrorInfo.reason`` of every definition error."""

MAX_SOURCE_CHARS: Final = 1_000_000


def _yaml_violation(error: yaml.YAMLError) -> FieldViolation:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(error, "problem", None) or str(error)
    column = f" (column {mark.column + 1})" if mark is not None else ""
    return FieldViolation("source_yaml", f"line {line}: not valid YAML: {problem}{column}")


def _invalid(violations: list[FieldViolation], definition_id: str = "") -> InvalidArgumentError:
    shown = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
    more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
    return InvalidArgumentError(
        f"invalid workflow definition: {shown}{more}",
        reason=REASON,
        metadata={"definition_id": definition_id} if definition_id else None,
        violations=violations,
    )


def parse(source_yaml: str) -> model.Definition:
    """Validate and compile a YAML workflow definition.

    Raises :class:`~cosmos.errors.InvalidArgumentError` (reason ``ERROR_REASON_INVALID_DEFINITION``)
    with one field violation per problem found, ordered by line.
    """
    if len(source_yaml) > MAX_SOURCE_CHARS:
        raise _invalid([FieldViolation("source_yaml", f"line 1: longer than {MAX_SOURCE_CHARS} characters")])
    reader = Reader(source_yaml)
    try:
        data = reader.read()
    except yaml.YAMLError as error:
        raise _invalid([_yaml_violation(error)]) from None
    except Abort as abort:
        line = reader.lines.get(abort.loc, 1)
        raise _invalid(
            [FieldViolation(field_name(abort.loc) or "source_yaml", f"line {line}: {abort.message}")]
        ) from None
    compilation = Compilation(reader.lines)
    for loc, message in reader.problems:
        compilation.violations.append(
            (compilation.line(loc), FieldViolation(field_name(loc) or "workflow", message))
        )
    definition = document(compilation, data)
    if compilation.violations or definition is None:
        ordered = [violation for _, violation in sorted(compilation.violations, key=lambda item: item[0])]
        raise _invalid(ordered, compilation.definition_id)
    return definition
