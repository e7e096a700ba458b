"""The compiled form of a workflow definition: what the engine executes.

The parser (:mod:`cosmos.plato.language.parser`) builds these from YAML; nothing here knows YAML.
Durations are seconds (float). Step instance semantics are in ``docs/workflow-language.md``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class Expr(Protocol):
    """A compiled, side-effect-free expression (never Python ``eval``)."""

    def evaluate(self, ctx: Mapping[str, Any]) -> Any:
        """The value in ``ctx`` (``input``, ``steps``, ``workflow``, ``signals`` and loop variables)."""
        ...

    def step_refs(self) -> frozenset[str]:
        """Names of steps whose outputs the expression reads (``steps.<name>...``)."""
        ...


class Template(Protocol):
    """A JSON-like value whose strings may hold ``${expr}`` placeholders."""

    def render(self, ctx: Mapping[str, Any]) -> Any:
        """The value with every placeholder replaced; a string that is exactly one ``${expr}`` keeps the
        expression's type (list, number, ...), other strings interpolate."""
        ...

    def step_refs(self) -> frozenset[str]:
        """Steps whose outputs the template reads."""
        ...


class Facts(Protocol):
    """What the engine knows about a workflow, as event predicates need it (level semantics)."""

    def started(self) -> bool:
        """The workflow has started."""
        ...

    def completed(self, step: str) -> bool:
        """At least one instance of ``step`` has completed."""
        ...

    def all_completed(self, step: str) -> bool:
        """``step`` has at least one instance, every instance completed, and no fan-out item of it waits."""
        ...

    def failed(self, step: str | None) -> bool:
        """An instance of ``step`` (any step when None) has failed terminally."""
        ...

    def signalled(self, name: str) -> bool:
        """Signal ``name`` has been received."""
        ...


class EventKind(enum.Enum):
    """What happened, as rules see it."""

    WORKFLOW_STARTED = "workflow.started"
    STEP_COMPLETED = "step.completed"
    STEP_FAILED = "step.failed"
    SIGNAL = "signal"


@dataclass(frozen=True)
class Event:
    """One occurrence the engine evaluates rules against."""

    kind: EventKind
    """What happened."""
    step: str | None = None
    """Step name for step events."""
    signal: str | None = None
    """Signal name for signal events."""


class PredicateKind(enum.Enum):
    """The event predicates a condition can use."""

    WORKFLOW_STARTED = "workflow.started"  # workflow.started
    COMPLETED = "completed"  # <step>.completed
    ALL_COMPLETED = "all_completed"  # all <step>.completed
    FAILED = "failed"  # <step>.failed  /  any <step>.failed
    ANY_FAILED = "any_failed"  # any.failed
    SIGNAL = "signal"  # signal.<name>


@dataclass(frozen=True)
class Predicate:
    """An event predicate: triggers a rule when its event happens, and is true at level afterwards."""

    kind: PredicateKind
    """Which predicate."""
    step: str | None = None
    """Step name, for step predicates."""
    signal: str | None = None
    """Signal name, for ``signal.<name>``."""

    def triggered_by(self, event: Event) -> bool:
        """Whether ``event`` is an occurrence of this predicate."""
        if self.kind is PredicateKind.WORKFLOW_STARTED:
            return event.kind is EventKind.WORKFLOW_STARTED
        if self.kind in (PredicateKind.COMPLETED, PredicateKind.ALL_COMPLETED):
            return event.kind is EventKind.STEP_COMPLETED and event.step == self.step
        if self.kind is PredicateKind.FAILED:
            return event.kind is EventKind.STEP_FAILED and event.step == self.step
        if self.kind is PredicateKind.ANY_FAILED:
            return event.kind is EventKind.STEP_FAILED
        return event.kind is EventKind.SIGNAL and event.signal == self.signal

    def holds(self, facts: Facts) -> bool:
        """Level truth of the predicate now."""
        if self.kind is PredicateKind.WORKFLOW_STARTED:
            return facts.started()
        if self.kind is PredicateKind.COMPLETED:
            return facts.completed(self.step or "")
        if self.kind is PredicateKind.ALL_COMPLETED:
            return facts.all_completed(self.step or "")
        if self.kind is PredicateKind.FAILED:
            return facts.failed(self.step)
        if self.kind is PredicateKind.ANY_FAILED:
            return facts.failed(None)
        return facts.signalled(self.signal or "")


@dataclass(frozen=True)
class Condition:
    """A rule's ``when``: a conjunction of event predicates and guard expressions.

    A rule is *triggered* by an event matching one of its predicates; it then fires if every predicate
    holds at level and every guard evaluates truthy.
    """

    predicates: tuple[Predicate, ...]
    """Event predicates (at least one)."""
    guards: tuple[Expr, ...] = ()
    """Comparisons over input and step outputs."""
    text: str = ""
    """The condition as written, for messages."""

    def triggered_by(self, event: Event) -> bool:
        """Whether ``event`` can fire the rule."""
        return any(p.triggered_by(event) for p in self.predicates)

    def holds(self, facts: Facts, ctx: Mapping[str, Any]) -> bool:
        """Whether the whole condition is true now."""
        return all(p.holds(facts) for p in self.predicates) and all(
            bool(g.evaluate(ctx)) for g in self.guards
        )

    def is_failure_condition(self) -> bool:
        """Whether the condition reacts to step failures (may carry ``retry`` / ``onExhausted``)."""
        return any(p.kind in (PredicateKind.FAILED, PredicateKind.ANY_FAILED) for p in self.predicates)


@dataclass(frozen=True)
class Backoff:
    """Delay between attempts."""

    kind: str = "exponential"
    """``fixed`` or ``exponential``."""
    initial: float = 1.0
    """First delay, seconds."""
    maximum: float = 60.0
    """Largest delay, seconds."""
    multiplier: float = 2.0
    """Growth per retry for ``exponential``."""
    jitter: float = 0.0
    """Random spread as a fraction of the delay, 0 to 1 (0.2 = ±20%)."""

    def delay(self, retry: int, rand: float = 0.5) -> float:
        """Delay before retry number ``retry`` (1-based); ``rand`` in [0, 1) spreads it by the jitter."""
        base = self.initial if self.kind == "fixed" else self.initial * self.multiplier ** (retry - 1)
        base = min(base, self.maximum)
        return max(0.0, base * (1 + self.jitter * (2 * rand - 1)))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed step instance is tried again."""

    max_retries: int
    """Retries after the first attempt (``max: 3`` = up to 4 attempts)."""
    backoff: Backoff = field(default_factory=Backoff)
    """Delays between attempts."""


@dataclass(frozen=True)
class Timeouts:
    """Step timeouts in seconds; None = no limit."""

    schedule_to_start: float | None = None
    """From scheduling until a handler reports start (first heartbeat or completion)."""
    start_to_close: float | None = None
    """From scheduling (or start, once reported) until completion of one attempt."""
    heartbeat: float | None = None
    """Longest silence between heartbeats of a running attempt."""


class StepKind(enum.Enum):
    """Who runs a step."""

    HANDLER = "handler"  # an SDK handler consuming the step's task queue
    BUILTIN = "builtin"  # log / notify / timer, inside Plato
    JOB = "job"  # a Stratum job template, run by the built-in Stratum runner
    CHILD = "child"  # a child workflow


BUILTINS = ("log", "notify", "timer")


@dataclass(frozen=True)
class ChildWorkflow:
    """A child workflow a step starts and waits for."""

    definition_id: str
    """Definition of the child."""
    version: int = 0
    """Definition version, 0 = latest at start."""


@dataclass(frozen=True)
class StepDef:
    """How one named step runs."""

    name: str
    """Step name as used in rules."""
    kind: StepKind = StepKind.HANDLER
    """Who runs it."""
    queue: str = ""
    """Task queue of HANDLER steps (defaults to the step name)."""
    builtin: str = ""
    """Builtin name for BUILTIN steps (``log``, ``notify``, ``timer``)."""
    params: Template | None = None
    """Builtin parameters (``with:``) or the Stratum job template (``job:``)."""
    child: ChildWorkflow | None = None
    """Child workflow for CHILD steps."""
    input: Template | None = None
    """Templated step input; None = ``{"input": <workflow input>, **loop variables}``."""
    retry: RetryPolicy | None = None
    """Step-level retry, applied before any rule sees the failure."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """Step timeouts."""
    line: int = 0
    """Line of the declaration in the source (0 = implicit)."""


@dataclass(frozen=True)
class RunStep:
    """Action: run one instance of a step."""

    step: str
    """Step name."""


@dataclass(frozen=True)
class Loop:
    """One ``each VAR in SOURCE`` of a fan-out."""

    var: str
    """Loop variable name, visible to templates as ``${VAR}``."""
    source: Expr
    """Expression yielding the list (``input.profiles``, ``steps.split.output.chunks``)."""
    text: str = ""
    """As written, for messages."""


@dataclass(frozen=True)
class Fanout:
    """Action: one instance of ``run`` per item (cartesian product over several loops)."""

    loops: tuple[Loop, ...]
    """Loop variables; several = cartesian product, first loop outermost."""
    run: str
    """Step to run per item."""
    max_concurrency: int | None = None
    """At most this many instances scheduled or running at once; None = all at once."""


@dataclass(frozen=True)
class Parallel:
    """Action: start every branch at once; completes when all branches completed."""

    branches: tuple[Action, ...]
    """Branches (each a step, fan-out, sequence or nested parallel)."""


@dataclass(frozen=True)
class Sequence:
    """Action: each item starts when the previous one completed."""

    items: tuple[Action, ...]
    """Items in order."""


Action = RunStep | Fanout | Parallel | Sequence


@dataclass(frozen=True)
class Rule:
    """``when`` → ``do`` (or, for failure conditions, ``retry`` → ``onExhausted``)."""

    index: int
    """Position in ``rules`` (0-based)."""
    name: str
    """``name:`` if given, else ``rules[<index>]``; used in messages and events."""
    when: Condition
    """When it fires."""
    do: Sequence | None = None
    """Actions when it fires."""
    retry: RetryPolicy | None = None
    """For failure conditions: retry the failed step instance instead of ``do``."""
    on_exhausted: Sequence | None = None
    """For retry rules: actions once retries are exhausted (the workflow then fails)."""
    line: int = 0
    """Line of the rule in the source."""


@dataclass(frozen=True)
class Limits:
    """Runaway guard: exceeding either fails the workflow with a reason naming the rule."""

    max_rule_firings: int = 1000
    """Rule firings per workflow."""
    max_steps: int = 10_000
    """Step instances per workflow."""


@dataclass(frozen=True)
class Definition:
    """A validated, compiled workflow definition."""

    id: str
    """Definition id (``workflow.id``)."""
    steps: Mapping[str, StepDef]
    """Every step any action runs, declared or implicit (implicit = HANDLER on its own queue)."""
    rules: tuple[Rule, ...]
    """Rules in definition order."""
    limits: Limits = field(default_factory=Limits)
    """Runaway guard."""
    output: Template | None = None
    """Workflow output template; None = outputs of the steps that completed last."""
    description: str = ""
    """Free text."""
