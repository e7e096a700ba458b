"""YAML workflow definitions → validated :class:`~cosmos.plato.language.model.Definition`.

``parse(source_yaml)`` reads the document with PyYAML's safe loader (no arbitrary tags), keeps the line
of every node, compiles rules, steps and templates, and then checks the definition as a whole (unknown
step references, declared steps no rule runs, rules that can never fire). Every problem found becomes
one field violation (``workflow.rules[2].when`` / ``line 7: ...``) of a single
:class:`~cosmos.errors.InvalidArgumentError`, so an author fixes them all in one round.

The language itself is documented in ``docs/workflow-language.md``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from cosmos.errors import CosmosError, FieldViolation, InvalidArgumentError
from cosmos.plato.language import model
from cosmos.plato.language.expressions import (
    ROOTS,
    Expression,
    SyntaxProblem,
    is_number,
    parse_conjunction,
    parse_loops,
    step_name_problem,
)
from cosmos.plato.language.templates import TemplateProblem, TemplateValue, compile_template

__all__ = ["REASON", "parse", "parse_duration"]

REASON: Final = "ERROR_REASON_INVALID_DEFINITION"
"""``ErrorInfo.reason`` of every definition error."""

MAX_SOURCE_CHARS: Final = 1_000_000
MAX_NODES: Final = 100_000  # bounds alias expansion ("billion laughs") as well as plain size
MAX_DEPTH: Final = 64

_DEFINITION_ID = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
_MAX_ID = 128
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_DOCUMENT_KEYS = ("workflow",)
_WORKFLOW_KEYS = ("id", "description", "limits", "output", "steps", "rules")
_LIMIT_KEYS = ("maxRuleFirings", "maxSteps")
_STEP_KEYS = ("queue", "input", "retry", "timeout", "uses", "with", "job", "workflow")
_STEP_KINDS = ("uses", "job", "workflow")
_RETRY_KEYS = ("max", "backoff", "initialInterval", "maxInterval", "multiplier", "jitter")
_BACKOFFS = ("exponential", "fixed")
_TIMEOUT_KEYS = ("scheduleToStart", "startToClose", "heartbeat")
_CHILD_KEYS = ("id", "version")
_RULE_KEYS = ("name", "when", "do", "retry", "onExhausted")
_ACTION_KEYS = ("fanout", "parallel")
_FANOUT_KEYS = ("for", "run", "maxConcurrency")
# Top-level fields of cosmos.stratum.v1.JobSpec in protobuf-JSON spelling; the runner fills the rest.
_JOB_KEYS = (
    "argv",
    "image",
    "env",
    "inputs",
    "outputs",
    "resources",
    "timeout",
    "priority",
    "tenant",
    "labels",
    "infraRetry",
    "progressFormat",
    "mediaDuration",
    "runtime",
    "displayName",
)
_JOB_DURATIONS = ("timeout", "mediaDuration")
# Builtin → (required parameters, optional parameters).
_BUILTIN_PARAMS: Final = {
    "log": (("message",), ("level",)),
    "notify": (("channel", "message"), ()),
    "timer": (("duration",), ()),
}
_LOG_LEVELS = ("debug", "info", "warning", "error")

Loc = tuple[str | int, ...]
"""Where a value sits in the document: mapping keys and list indexes from the top."""


def parse_duration(value: object) -> float:
    """Seconds of a duration: a number of seconds, or ``500ms``, ``5s``, ``10m``, ``1h``, ``1d``, ``1m30s``.

    Raises ValueError naming the accepted forms. Public so the engine can read durations that only
    become known at run time (``timer`` with ``duration: ${input.wait}``).
    """
    hint = "use a number of seconds or a string like 500ms, 5s, 10m, 1h, 1d or 1m30s"
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().startswith("-"):
        raise ValueError(f"duration {value!r} must not be negative")
    elif isinstance(value, str):
        seconds = _duration_text(value.strip(), hint)
    else:
        raise ValueError(f"invalid duration {value!r}: {hint}")
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: {hint}")
    if seconds < 0:
        raise ValueError(f"duration {value!r} must not be negative")
    return seconds


def _duration_text(text: str, hint: str) -> float:
    total = 0.0
    pos = 0
    while pos < len(text):
        part = _DURATION_PART.match(text, pos)
        if part is None:
            break
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        pos = part.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {text!r}: {hint}")
    return total


def field_name(loc: Loc) -> str:
    """``("workflow", "rules", 2, "when")`` → ``workflow.rules[2].when``."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else part
    return name


def _kind_of(value: object) -> str:
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


def _is_dynamic(value: object) -> bool:
    """Whether a string holds a placeholder, so only the engine can check its value."""
    return isinstance(value, str) and "${" in value.replace("$${", "")


def _as_string(value: object) -> object:
    """YAML reads ``-crf, 23`` as a number; JobSpec's argv, env and labels hold strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_number(value):
        return str(value)
    return value


def _seconds_text(seconds: float) -> str:
    """Protobuf-JSON spelling of a duration (``"600s"``, ``"0.5s"``)."""
    return f"{int(seconds)}s" if seconds.is_integer() else f"{seconds!r}s"


# ---------------------------------------------------------------------------------------------------------
# YAML with lines.


class _Abort(CosmosError):
    """The document cannot be read further (too large, too deep)."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null"))


class _Reader:
    """Builds plain data from the composed node tree, recording the 1-based line of every location.

    Only standard YAML types are built (the safe loader's constructors); other tags are problems.
    Mapping keys are always their text (``on:`` stays ``"on"``, not YAML 1.1's ``True``).
    """

    def __init__(self, source: str) -> None:
        self.loader = yaml.SafeLoader(source)
        self.lines: dict[Loc, int] = {}
        self.problems: list[tuple[Loc, str]] = []
        self.nodes = 0

    def read(self) -> Any:
        try:
            node = self.loader.get_single_node()
            return None if node is None else self.build(node, (), 0)
        finally:
            self.loader.dispose()

    def build(self, node: yaml.Node, loc: Loc, depth: int) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Abort(loc, f"the document has more than {MAX_NODES} values (aliases count each time)")
        if depth > MAX_DEPTH:
            raise _Abort(loc, f"values are nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, loc, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                return self.unsupported(node, loc)
            return [self.build(item, (*loc, i), depth + 1) for i, item in enumerate(node.value)]
        return self.scalar(node, loc)

    def mapping(self, node: yaml.MappingNode, loc: Loc, depth: int) -> Any:
        if node.tag != "tag:yaml.org,2002:map":
            return self.unsupported(node, loc)
        self.loader.flatten_mapping(node)  # resolves "<<" merge keys the way the safe loader does
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    (loc, f"line {key_node.start_mark.line + 1}: keys must be plain strings")
                )
                continue
            key = str(key_node.value)
            child = (*loc, key)
            if key in result:
                self.problems.append((child, f"line {key_node.start_mark.line + 1}: duplicate key {key!r}"))
            self.lines[child] = key_node.start_mark.line + 1  # the key's line names the field best
            result[key] = self.build(value_node, child, depth + 1)
        return result

    def scalar(self, node: yaml.Node, loc: Loc) -> Any:
        if node.tag == "tag:yaml.org,2002:timestamp":
            return str(node.value)  # dates stay text; the language has no date type
        if node.tag not in _SCALAR_TAGS:
            return self.unsupported(node, loc)
        try:
            return self.loader.construct_object(node)
        except ValueError:  # e.g. an integer beyond Python's digit limit
            self.problems.append(
                (loc, f"line {node.start_mark.line + 1}: unreadable value {node.value[:20]!r}")
            )
            return None

    def unsupported(self, node: yaml.Node, loc: Loc) -> None:
        self.problems.append((loc, f"line {node.start_mark.line + 1}: unsupported YAML tag {node.tag}"))
        return None


# ---------------------------------------------------------------------------------------------------------
# Compiler.


@dataclass
class _RuleFacts:
    """What the reachability check knows of one rule, filled in while it compiles."""

    index: int
    name: str
    predicates: tuple[model.Predicate, ...] | None = None  # None: the condition did not compile
    runs: set[str] = field(default_factory=set)


class _Compiler:
    """Compiles the plain data of a document, collecting every problem with its location."""

    def __init__(self, lines: Mapping[Loc, int]) -> None:
        self.lines = lines
        self.violations: list[tuple[int, FieldViolation]] = []
        self.runs: dict[str, Loc] = {}  # step → where an action first runs it
        self.loop_vars: dict[str, set[str]] = {}  # step → loop variables of fan-outs running it
        self.refs: list[tuple[str, Loc]] = []  # steps named by conditions, sources and templates
        self.definition_id = ""
        self.rule_facts: list[_RuleFacts] = []  # what reachability needs, also of rules that did not compile

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
            self.problem(loc, f"{what} must be a mapping, found {_kind_of(value)}")
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
        self.problem(loc, f"{what} must be a string, found {_kind_of(value)}")
        return None

    def integer(self, value: object, loc: Loc, what: str, minimum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(loc, f"{what} must be an integer, found {_kind_of(value)}")
            return None
        if value < minimum:
            self.problem(loc, f"{what} must be at least {minimum}, found {value}")
            return None
        return value

    def number(self, value: object, loc: Loc, what: str, low: float, high: float = math.inf) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.problem(loc, f"{what} must be a number, found {_kind_of(value)}")
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
            self.problem(loc, f"expected a step name, found {_kind_of(value)}")
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

    # -- the document ------------------------------------------------------------------------------------

    def document(self, data: object) -> model.Definition | None:
        root = self.mapping(data, (), _DOCUMENT_KEYS, "the document")
        if root is None:
            return None
        if "workflow" not in root:
            self.problem(("workflow",), "missing: a definition is a mapping under 'workflow:'")
            return None
        loc: Loc = ("workflow",)
        workflow = self.mapping(root["workflow"], loc, _WORKFLOW_KEYS, "workflow")
        if workflow is None:
            return None
        definition_id = self.definition_id_of(workflow.get("id"), (*loc, "id"))
        description = workflow.get("description", "")
        if not isinstance(description, str):
            self.problem(
                (*loc, "description"), f"description must be a string, found {_kind_of(description)}"
            )
        limits = self.limits(workflow.get("limits"), (*loc, "limits"))
        rules = self.rules(workflow.get("rules"), (*loc, "rules"))
        declared = self.declared_steps(workflow.get("steps"), (*loc, "steps"))
        output = None
        if workflow.get("output") is not None:
            output = self.template(workflow["output"], (*loc, "output"), ROOTS, "the workflow output")
        self.check_references(declared)
        if rules is not None:
            self.check_reachability((*loc, "rules"))
        if self.violations or rules is None or definition_id is None or limits is None:
            return None
        return model.Definition(
            id=definition_id,
            steps=self.all_steps(declared),
            rules=tuple(rule for rule in rules if rule is not None),
            limits=limits,
            output=output,
            description=description,
        )

    def definition_id_of(self, value: object, loc: Loc) -> str | None:
        if value is None:
            self.problem(loc, "missing: workflow.id names the definition (e.g. encode-workflow-v3)")
            return None
        text = self.string(value, loc, "workflow.id")
        if text is None:
            return None
        if not _DEFINITION_ID.match(text) or len(text) > _MAX_ID:
            self.problem(loc, f"invalid id {text!r}: use [a-z0-9][a-z0-9._-]*, at most {_MAX_ID} characters")
            return None
        self.definition_id = text
        return text

    def limits(self, value: object, loc: Loc) -> model.Limits | None:
        limits = self.mapping(value, loc, _LIMIT_KEYS, "limits")
        if limits is None:
            return None
        defaults = model.Limits()
        firings_value = limits.get("maxRuleFirings", defaults.max_rule_firings)
        firings = self.integer(firings_value, (*loc, "maxRuleFirings"), "maxRuleFirings", 1)
        steps = self.integer(limits.get("maxSteps", defaults.max_steps), (*loc, "maxSteps"), "maxSteps", 1)
        if firings is None or steps is None:
            return None
        return model.Limits(max_rule_firings=firings, max_steps=steps)

    # -- rules -------------------------------------------------------------------------------------------

    def rules(self, value: object, loc: Loc) -> list[model.Rule | None] | None:
        if value is None:
            self.problem(loc, 'missing: a workflow needs rules (at least one "when: workflow.started")')
            return None
        if not isinstance(value, list) or not value:
            self.problem(loc, f"rules must be a non-empty list, found {_kind_of(value)}")
            return None
        rules = [self.rule(item, index, (*loc, index)) for index, item in enumerate(value)]
        self.check_rule_names(rules, loc)
        return rules

    def check_rule_names(self, rules: list[model.Rule | None], loc: Loc) -> None:
        first: dict[str, int] = {}
        for rule in rules:
            if rule is None:
                continue
            if rule.name in first:
                message = f"rule name {rule.name!r} is already used by rules[{first[rule.name]}]"
                self.problem((*loc, rule.index, "name"), message)
            first.setdefault(rule.name, rule.index)

    def rule(self, value: object, index: int, loc: Loc) -> model.Rule | None:
        facts = _RuleFacts(index, f"rules[{index}]")
        self.rule_facts.append(facts)
        rule = self.mapping(value, loc, _RULE_KEYS, "a rule")
        if rule is None:
            return None
        name = self.string(rule["name"], (*loc, "name"), "name") if "name" in rule else facts.name
        facts.name = name or facts.name
        when = self.condition(rule.get("when"), (*loc, "when"))
        facts.predicates = None if when is None else when.predicates
        do = self.sequence(rule["do"], (*loc, "do")) if "do" in rule else None
        retry = self.retry(rule["retry"], (*loc, "retry")) if "retry" in rule else None
        exhausted = (
            self.sequence(rule["onExhausted"], (*loc, "onExhausted")) if "onExhausted" in rule else None
        )
        shape_ok = self.check_rule_shape(rule, when, loc)
        parts_ok = all(
            part is not None
            for key, part in (("do", do), ("retry", retry), ("onExhausted", exhausted))
            if key in rule
        )
        if name is None or when is None or not shape_ok or not parts_ok:
            return None
        return model.Rule(index, name, when, do, retry, exhausted, self.line(loc))

    def check_rule_shape(self, rule: dict[str, Any], when: model.Condition | None, loc: Loc) -> bool:
        """``do`` xor ``retry``; ``retry``/``onExhausted`` only on failure conditions."""
        problems = len(self.violations)
        if "do" in rule and "retry" in rule:
            self.problem(loc, "a rule has either do: (actions) or retry: (for failures), not both")
        if "do" not in rule and "retry" not in rule:
            self.problem(loc, "a rule needs do: (actions to run) or, on a failure condition, retry:")
        if "onExhausted" in rule and "retry" not in rule:
            self.problem((*loc, "onExhausted"), "onExhausted: belongs to a rule with retry:")
        if when is not None and not when.is_failure_condition():
            for key in ("retry", "onExhausted"):
                if key in rule:
                    message = f'{key}: needs a failure condition in when: ("x.failed", "any.failed")'
                    self.problem((*loc, key), message)
        return len(self.violations) == problems

    def condition(self, value: object, loc: Loc) -> model.Condition | None:
        if value is None:
            self.problem(loc, 'missing: when: says when the rule fires (e.g. "workflow.started")')
            return None
        items = value if isinstance(value, list) else [value]
        if not items:
            self.problem(loc, "when: must not be an empty list")
            return None
        predicates: list[model.Predicate] = []
        guards: list[Expression] = []
        ok = True
        for i, item in enumerate(items):
            item_loc = (*loc, i) if isinstance(value, list) else loc
            text = self.string(item, item_loc, "a condition")
            if text is None:
                ok = False
                continue
            try:
                item_predicates, item_guards = parse_conjunction(text)
            except SyntaxProblem as error:
                self.problem(item_loc, str(error))
                ok = False
                continue
            predicates.extend(item_predicates)
            guards.extend(item_guards)
            self.refs.extend((p.step, item_loc) for p in item_predicates if p.step is not None)
            self.refs.extend((step, item_loc) for g in item_guards for step in sorted(g.step_refs()))
        if not ok:
            return None
        if not predicates:
            message = (
                'a condition needs at least one event predicate such as "workflow.started" or "x.completed"'
            )
            self.problem(loc, message)
            return None
        text = " and ".join(str(item).strip() for item in items)
        return model.Condition(predicates=tuple(predicates), guards=tuple(guards), text=text)

    # -- actions -----------------------------------------------------------------------------------------

    def sequence(self, value: object, loc: Loc) -> model.Sequence | None:
        """``do:`` / ``onExhausted:``: one action (a step name, fanout, parallel) or a list run in order."""
        if isinstance(value, str):
            step = self.run_step(value, loc)
            return None if step is None else model.Sequence((step,))
        if isinstance(value, list):
            return self.sequence_items(value, loc)
        if isinstance(value, dict):
            action = self.action(value, loc)
            return None if action is None else model.Sequence((action,))
        self.problem(loc, f"expected a step name or a list of actions, found {_kind_of(value)}")
        return None

    def sequence_items(self, value: list[Any], loc: Loc) -> model.Sequence | None:
        if not value:
            self.problem(loc, "a list of actions must not be empty")
            return None
        items = [self.action(item, (*loc, i)) for i, item in enumerate(value)]
        if any(item is None for item in items):
            return None
        return model.Sequence(tuple(item for item in items if item is not None))

    def action(self, value: object, loc: Loc) -> model.Action | None:
        if isinstance(value, str):
            return self.run_step(value, loc)
        if isinstance(value, list):
            return self.sequence_items(value, loc)
        action = self.mapping(value, loc, _ACTION_KEYS, "an action")
        if action is None:
            return None
        if len(action) != 1:
            self.problem(loc, "an action mapping holds exactly one of fanout:, parallel:")
            return None
        if "fanout" in action:
            return self.fanout(action["fanout"], (*loc, "fanout"))
        if "parallel" in action:
            return self.parallel(action["parallel"], (*loc, "parallel"))
        return None  # the unknown key was reported by mapping()

    def run_step(self, value: object, loc: Loc) -> model.RunStep | None:
        name = self.step_name(value, loc)
        if name is None:
            return None
        self.runs.setdefault(name, loc)
        if self.rule_facts:
            self.rule_facts[-1].runs.add(name)
        return model.RunStep(name)

    def parallel(self, value: object, loc: Loc) -> model.Parallel | None:
        if not isinstance(value, list) or not value:
            self.problem(loc, f"parallel: must be a non-empty list of branches, found {_kind_of(value)}")
            return None
        branches = [self.action(item, (*loc, i)) for i, item in enumerate(value)]
        if any(branch is None for branch in branches):
            return None
        return model.Parallel(tuple(branch for branch in branches if branch is not None))

    def fanout(self, value: object, loc: Loc) -> model.Fanout | None:
        fanout = self.mapping(value, loc, _FANOUT_KEYS, "fanout")
        if fanout is None:
            return None
        for key in ("for", "run"):
            if key not in fanout:
                self.problem((*loc, key), f"missing: fanout needs {key}:")
        loops = self.loops(fanout["for"], (*loc, "for")) if "for" in fanout else None
        step = self.run_step(fanout["run"], (*loc, "run")) if "run" in fanout else None
        limit = None
        if fanout.get("maxConcurrency") is not None:
            limit = self.integer(fanout["maxConcurrency"], (*loc, "maxConcurrency"), "maxConcurrency", 1)
            if limit is None:
                return None
        if loops is None or step is None:
            return None
        self.loop_vars.setdefault(step.step, set()).update(loop.var for loop in loops)
        return model.Fanout(loops=loops, run=step.step, max_concurrency=limit)

    def loops(self, value: object, loc: Loc) -> tuple[model.Loop, ...] | None:
        """``for:``: one ``each VAR in SOURCE`` string (comma-separated clauses allowed) or a list of them."""
        items = value if isinstance(value, list) and value else [value]
        loops: list[model.Loop] = []
        for i, item in enumerate(items):
            item_loc = (*loc, i) if isinstance(value, list) else loc
            text = self.string(item, item_loc, 'for: ("each VAR in SOURCE")')
            if text is None:
                return None
            try:
                clauses = parse_loops(text, taken=[loop.var for loop in loops])
            except SyntaxProblem as error:
                self.problem(item_loc, str(error))
                return None
            loops.extend(clauses)
            self.refs.extend((step, item_loc) for loop in clauses for step in sorted(loop.source.step_refs()))
        return tuple(loops)

    # -- steps -------------------------------------------------------------------------------------------

    def declared_steps(self, value: object, loc: Loc) -> dict[str, model.StepDef | None]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(loc, f"steps must be a mapping of step names to steps, found {_kind_of(value)}")
            return {}
        steps: dict[str, model.StepDef | None] = {}
        for name, spec in value.items():
            if self.step_name(name, (*loc, name)) is not None:
                steps[name] = self.step(name, spec, (*loc, name))
        return steps

    def step(self, name: str, value: object, loc: Loc) -> model.StepDef | None:
        spec = self.mapping(value, loc, _STEP_KEYS, f"step {name!r}")
        if spec is None:
            return None
        kinds = [key for key in _STEP_KINDS if key in spec]
        if len(kinds) > 1:
            self.problem(loc, f"a step has at most one of uses:, job:, workflow: (found {', '.join(kinds)})")
            return None
        kind = {
            "uses": model.StepKind.BUILTIN,
            "job": model.StepKind.JOB,
            "workflow": model.StepKind.CHILD,
        }.get(kinds[0] if kinds else "", model.StepKind.HANDLER)
        if not self.check_step_keys(spec, kind, loc):
            return None
        names = ROOTS | self.loop_vars.get(name, set())
        who = f"step {name!r}"
        fields: dict[str, Any] = {"name": name, "kind": kind, "line": self.line(loc)}
        ok = True
        if kind is model.StepKind.HANDLER:
            fields["queue"] = self.queue(spec.get("queue", name), (*loc, "queue"))
            ok = fields["queue"] is not None
        elif kind is model.StepKind.BUILTIN:
            fields["builtin"], fields["params"] = self.builtin(spec, loc, names, who)
            ok = fields["params"] is not None
        elif kind is model.StepKind.JOB:
            fields["params"] = self.job(spec["job"], (*loc, "job"), names, who)
            ok = fields["params"] is not None
        else:
            fields["child"] = self.child(spec["workflow"], (*loc, "workflow"))
            ok = fields["child"] is not None
        if "input" in spec:
            fields["input"] = self.template(spec["input"], (*loc, "input"), names, who)
            ok = ok and fields["input"] is not None
        if "retry" in spec:
            fields["retry"] = self.retry(spec["retry"], (*loc, "retry"))
            ok = ok and fields["retry"] is not None
        if "timeout" in spec:
            fields["timeouts"] = self.timeouts(spec["timeout"], (*loc, "timeout"))
            ok = ok and fields["timeouts"] is not None
        return model.StepDef(**fields) if ok else None

    def check_step_keys(self, spec: dict[str, Any], kind: model.StepKind, loc: Loc) -> bool:
        """Keys that only make sense for some kinds of step."""
        problems = len(self.violations)
        if "with" in spec and kind is not model.StepKind.BUILTIN:
            self.problem((*loc, "with"), "with: holds the parameters of a uses: builtin")
        if "queue" in spec and kind is not model.StepKind.HANDLER:
            self.problem((*loc, "queue"), "queue: is for handler steps (not uses:, job: or workflow:)")
        if "input" in spec and kind in (model.StepKind.BUILTIN, model.StepKind.JOB):
            where = "with:" if kind is model.StepKind.BUILTIN else "the job: template"
            self.problem((*loc, "input"), f"input: is for handler and child-workflow steps; use {where}")
        return len(self.violations) == problems

    def queue(self, value: object, loc: Loc) -> str | None:
        queue = self.string(value, loc, "queue")
        if queue is not None and (not _QUEUE.match(queue) or len(queue) > _MAX_ID):
            self.problem(loc, f"invalid queue {queue!r}: use letters, digits, '-' and '_'")
            return None
        return queue

    def builtin(
        self, spec: dict[str, Any], loc: Loc, names: Iterable[str], who: str
    ) -> tuple[str, TemplateValue | None]:
        builtin = spec["uses"]
        if not isinstance(builtin, str) or builtin not in _BUILTIN_PARAMS:
            self.problem(
                (*loc, "uses"), f"unknown builtin {builtin!r} (builtins: {', '.join(model.BUILTINS)})"
            )
            return "", None
        required, optional = _BUILTIN_PARAMS[builtin]
        with_loc = (*loc, "with")
        params = self.mapping(spec.get("with"), with_loc, required + optional, f"uses: {builtin} parameters")
        if params is None:
            return builtin, None
        problems = len(self.violations)
        for key in required:
            if key not in params:
                self.problem((*with_loc, key), f"missing: uses: {builtin} needs with: {{{key}: ...}}")
        params = dict(params)
        if builtin == "timer" and "duration" in params and not _is_dynamic(params["duration"]):
            # Normalized to seconds here; a templated duration is read by the engine (parse_duration).
            params["duration"] = self.duration(params["duration"], (*with_loc, "duration"), "duration")
        level = params.get("level")
        if builtin == "log" and level is not None and not _is_dynamic(level) and level not in _LOG_LEVELS:
            self.problem((*with_loc, "level"), f"level must be one of {', '.join(_LOG_LEVELS)}")
        if len(self.violations) != problems:
            return builtin, None
        return builtin, self.template(params, with_loc, names, who)

    def job(self, value: object, loc: Loc, names: Iterable[str], who: str) -> TemplateValue | None:
        job = self.mapping(value, loc, _JOB_KEYS, "job")
        if job is None:
            return None
        problems = len(self.violations)
        argv = job.get("argv")
        whole_placeholder = isinstance(argv, str) and argv.startswith("${") and argv.endswith("}")
        if not whole_placeholder and (not isinstance(argv, list) or not argv):
            self.problem(
                (*loc, "argv"), "job: needs argv: a non-empty list of arguments (never a shell string)"
            )
        job = dict(job)
        if isinstance(argv, list):
            job["argv"] = [_as_string(item) for item in argv]
        for key in ("env", "labels"):
            if isinstance(job.get(key), dict):
                job[key] = {name: _as_string(item) for name, item in job[key].items()}
        for key in _JOB_DURATIONS:
            if key in job and not _is_dynamic(job[key]):
                seconds = self.duration(job[key], (*loc, key), key, positive=True)
                job[key] = None if seconds is None else _seconds_text(seconds)
        if len(self.violations) != problems:
            return None
        return self.template(job, loc, names, who)

    def child(self, value: object, loc: Loc) -> model.ChildWorkflow | None:
        child = self.mapping(value, loc, _CHILD_KEYS, "workflow (child workflow)")
        if child is None:
            return None
        if "id" not in child:
            self.problem((*loc, "id"), "missing: a child workflow needs id: (its definition id)")
            return None
        definition = self.string(child["id"], (*loc, "id"), "id")
        if definition is not None and (not _DEFINITION_ID.match(definition) or len(definition) > _MAX_ID):
            self.problem((*loc, "id"), f"invalid definition id {definition!r}: use [a-z0-9][a-z0-9._-]*")
            definition = None
        version = self.integer(child.get("version", 0), (*loc, "version"), "version", 0)
        if definition is None or version is None:
            return None
        return model.ChildWorkflow(definition_id=definition, version=version)

    def retry(self, value: object, loc: Loc) -> model.RetryPolicy | None:
        retry = self.mapping(value, loc, _RETRY_KEYS, "retry")
        if retry is None:
            return None
        problems = len(self.violations)
        if "max" not in retry:
            self.problem((*loc, "max"), "missing: retry needs max: (retries after the first attempt)")
        max_retries = self.integer(retry["max"], (*loc, "max"), "max", 0) if "max" in retry else None
        defaults = model.Backoff()
        kind = retry.get("backoff", defaults.kind)
        if kind not in _BACKOFFS:
            self.problem((*loc, "backoff"), f"backoff must be one of {', '.join(_BACKOFFS)}, found {kind!r}")
        initial_value = retry.get("initialInterval", defaults.initial)
        initial = self.duration(initial_value, (*loc, "initialInterval"), "initialInterval")
        maximum = self.duration(
            retry.get("maxInterval", defaults.maximum), (*loc, "maxInterval"), "maxInterval"
        )
        multiplier = self.number(
            retry.get("multiplier", defaults.multiplier), (*loc, "multiplier"), "multiplier", 1
        )
        jitter = self.number(retry.get("jitter", defaults.jitter), (*loc, "jitter"), "jitter", 0, 1)
        if initial is not None and maximum is not None and maximum < initial:
            message = f"maxInterval ({maximum:g}s) is shorter than initialInterval ({initial:g}s)"
            self.problem((*loc, "maxInterval"), message)
        if len(self.violations) != problems:
            return None
        assert max_retries is not None and initial is not None and maximum is not None
        assert multiplier is not None and jitter is not None
        backoff = model.Backoff(str(kind), initial, maximum, multiplier, jitter)
        return model.RetryPolicy(max_retries=max_retries, backoff=backoff)

    def timeouts(self, value: object, loc: Loc) -> model.Timeouts | None:
        spec = self.mapping(value, loc, _TIMEOUT_KEYS, "timeout")
        if spec is None:
            return None
        problems = len(self.violations)
        seconds = {
            key: self.duration(spec[key], (*loc, key), key, positive=True)
            for key in _TIMEOUT_KEYS
            if key in spec
        }
        if len(self.violations) != problems:
            return None
        return model.Timeouts(
            schedule_to_start=seconds.get("scheduleToStart"),
            start_to_close=seconds.get("startToClose"),
            heartbeat=seconds.get("heartbeat"),
        )

    # -- whole-definition checks -------------------------------------------------------------------------

    def check_references(self, declared: Mapping[str, model.StepDef | None]) -> None:
        """Every step named anywhere must be run by some action; every declared step must be run."""
        known = sorted(self.runs)
        for step, loc in self.refs:
            if step not in self.runs:
                close = difflib.get_close_matches(step, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(loc, f"unknown step {step!r}: no rule runs it{hint}")
        for name in declared:
            if name not in self.runs:
                self.problem(("workflow", "steps", name), f"step {name!r} is declared but no rule runs it")

    def check_reachability(self, loc: Loc) -> None:
        """Rules that can never fire, found by a fixpoint from ``workflow.started``.

        A rule whose condition did not compile is assumed to fire (and the steps its actions name to
        run), so one broken rule does not drag false "never fires" reports after it.
        """
        facts = self.rule_facts
        if all(rule.predicates is not None for rule in facts) and not any(map(self.starts, facts)):
            self.problem(loc, 'no rule has "workflow.started" in its when:, so nothing would ever run')
            return
        runnable: set[str] = set()
        reachable: set[int] = set()
        changed = True
        while changed:
            changed = False
            for rule in facts:
                if rule.index not in reachable and self.can_fire(rule, runnable):
                    reachable.add(rule.index)
                    runnable |= rule.runs
                    changed = True
        for rule in facts:
            if rule.index not in reachable:
                self.report_unreachable(rule, runnable, (*loc, rule.index, "when"))

    @staticmethod
    def starts(rule: _RuleFacts) -> bool:
        predicates = rule.predicates or ()
        return any(p.kind is model.PredicateKind.WORKFLOW_STARTED for p in predicates)

    def can_fire(self, rule: _RuleFacts, runnable: set[str]) -> bool:
        if rule.predicates is None:
            return True
        return all(self.can_hold(p, runnable) for p in rule.predicates)

    @staticmethod
    def can_hold(predicate: model.Predicate, runnable: set[str]) -> bool:
        if predicate.kind in (model.PredicateKind.WORKFLOW_STARTED, model.PredicateKind.SIGNAL):
            return True  # the start always happens; signals come from outside at any time
        if predicate.kind is model.PredicateKind.ANY_FAILED:
            return bool(runnable)
        return predicate.step in runnable

    def report_unreachable(self, rule: _RuleFacts, runnable: set[str], loc: Loc) -> None:
        blocking = [p for p in rule.predicates or () if not self.can_hold(p, runnable)]
        if any(p.step is not None and p.step not in self.runs for p in blocking):
            return  # already reported as an unknown step
        if blocking[0].step is None:
            reason = "no step can run before it"
        else:
            reason = f"step {blocking[0].step!r} never runs (only rules that can never fire run it)"
        self.problem(loc, f"rule {rule.name!r} can never fire: {reason}")

    def all_steps(self, declared: Mapping[str, model.StepDef | None]) -> dict[str, model.StepDef]:
        """Declared steps in document order, then implicit handler steps in order of first use."""
        steps = {name: step for name, step in declared.items() if step is not None}
        for name in self.runs:
            steps.setdefault(name, model.StepDef(name=name, kind=model.StepKind.HANDLER, queue=name))
        return steps


# ---------------------------------------------------------------------------------------------------------
# Entry point.


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
    reader = _Reader(source_yaml)
    try:
        data = reader.read()
    except yaml.YAMLError as error:
        raise _invalid([_yaml_violation(error)]) from None
    except _Abort as abort:
        line = reader.lines.get(abort.loc, 1)
        raise _invalid(
            [FieldViolation(field_name(abort.loc) or "source_yaml", f"line {line}: {abort.message}")]
        ) from None
    compiler = _Compiler(reader.lines)
    for loc, message in reader.problems:
        compiler.violations.append(
            (compiler.line(loc), FieldViolation(field_name(loc) or "workflow", message))
        )
    definition = compiler.document(data)
    if compiler.violations or definition is None:
        ordered = [violation for _, violation in sorted(compiler.violations, key=lambda item: item[0])]
        raise _invalid(ordered, compiler.definition_id)
    return definition
