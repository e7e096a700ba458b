"""Conditions and expressions: grammar, errors with columns, and the safe evaluation semantics."""

from __future__ import annotations

from typing import Any

import pytest

from cosmos.plato.language import model
from cosmos.plato.language.expressions import (
    SyntaxProblem,
    parse_condition,
    parse_expr,
    parse_loops,
    values_equal,
)

pytestmark = pytest.mark.unit

Kind = model.PredicateKind


class FakeFacts:
    """Just enough of model.Facts: sets of completed/failed steps and received signals."""

    def __init__(
        self,
        completed: set[str] | None = None,
        all_completed: set[str] | None = None,
        failed: set[str] | None = None,
        signals: set[str] | None = None,
    ) -> None:
        self._completed = completed or set()
        self._all = all_completed or set()
        self._failed = failed or set()
        self._signals = signals or set()

    def started(self) -> bool:
        return True

    def completed(self, step: str) -> bool:
        return step in self._completed

    def all_completed(self, step: str) -> bool:
        return step in self._all

    def failed(self, step: str | None) -> bool:
        return bool(self._failed) if step is None else step in self._failed

    def signalled(self, name: str) -> bool:
        return name in self._signals


CTX: dict[str, Any] = {
    "input": {
        "n": 3,
        "f": 2.5,
        "name": "clip.mp4",
        "tags": ["hdr", "4k"],
        "dryRun": False,
        "profiles": [{"h": 720}],
    },
    "steps": {"probe": {"output": {"width": 1920, "codec": "h264"}, "outputs": [{"width": 1920}]}},
    "workflow": {"id": "wf-1"},
    "signals": {"approve": {"by": "ana"}},
}


@pytest.mark.parametrize(
    ("text", "kind", "step", "signal"),
    [
        ("workflow.started", Kind.WORKFLOW_STARTED, None, None),
        ("probe-source.completed", Kind.COMPLETED, "probe-source", None),
        ("probe-source.failed", Kind.FAILED, "probe-source", None),
        ("all encode-segment.completed", Kind.ALL_COMPLETED, "encode-segment", None),
        ("any.failed", Kind.ANY_FAILED, None, None),
        ("any encode-segment.failed", Kind.FAILED, "encode-segment", None),
        ("signal.approve", Kind.SIGNAL, None, "approve"),
        ("2pass.completed", Kind.COMPLETED, "2pass", None),
    ],
)
def test_event_predicates(text: str, kind: model.PredicateKind, step: str | None, signal: str | None) -> None:
    condition = parse_condition(text)
    assert condition.predicates == (model.Predicate(kind, step=step, signal=signal),)
    assert condition.guards == ()
    assert condition.text == text


def test_conjunction_with_parentheses_and_guards() -> None:
    condition = parse_condition("(probe.completed and input.n > 2) and signal.approve and input.name != 'x'")
    assert [p.kind for p in condition.predicates] == [Kind.COMPLETED, Kind.SIGNAL]
    assert len(condition.guards) == 2
    assert condition.holds(FakeFacts(completed={"probe"}, signals={"approve"}), CTX)
    assert not condition.holds(FakeFacts(completed={"probe"}), CTX)
    assert not condition.holds(
        FakeFacts(completed={"probe"}, signals={"approve"}), {**CTX, "input": {"n": 1}}
    )


def test_trigger_and_failure_classification() -> None:
    fan_in = parse_condition("all seg.completed")
    assert fan_in.triggered_by(model.Event(model.EventKind.STEP_COMPLETED, step="seg"))
    assert not fan_in.triggered_by(model.Event(model.EventKind.STEP_FAILED, step="seg"))
    assert fan_in.holds(FakeFacts(all_completed={"seg"}), CTX)
    assert not fan_in.holds(FakeFacts(completed={"seg"}), CTX)
    assert parse_condition("any.failed").is_failure_condition()
    assert parse_condition("any seg.failed").is_failure_condition()
    assert not parse_condition("seg.completed").is_failure_condition()


def test_bare_path_guard_means_truthy() -> None:
    condition = parse_condition("workflow.started and input.dryRun")
    assert not condition.holds(FakeFacts(), CTX)
    assert condition.holds(FakeFacts(), {**CTX, "input": {"dryRun": True}})
    assert not condition.holds(FakeFacts(), {})  # a missing path is null, null is falsy


@pytest.mark.parametrize(
    ("guard", "expected"),
    [
        ("input.n == 3", True),
        ("input.n == 3.0", True),  # numbers compare by value
        ("input.f > input.n", False),
        ("input.f < input.n", True),
        ('input.name == "clip.mp4"', True),
        ("input.name in 'my clip.mp4 file'", True),  # substring
        ("'hdr' in input.tags", True),
        ("'sdr' not in input.tags", True),
        ("input.tags == ['hdr', '4k']", True),
        ("input.dryRun == false", True),
        ("input.dryRun == 0", False),  # booleans are not numbers
        ("true == 1", False),
        ("input.missing == null", True),
        ("input.missing.deeper[3] == null", True),
        ("input.missing < 1", False),  # ordering with null is false
        ("input.missing > 1", False),
        ("input.name > 1", False),  # mismatched types
        ("input.name <= input.name", True),
        ("'b' > 'a'", True),
        ("1 in input.name", False),
        ("1 in input.n", False),  # `in` on a number: false
        ("1 not in input.n", False),  # ... and so is `not in`
        ("input.profiles[0].h >= 720", True),
        ("input.profiles[-1].h == 720", True),
        ("input.profiles[5].h == null", True),
        ("input.profiles.0.h == 720", True),
        ("input['name'] == 'clip.mp4'", True),
        ("steps.probe.output.width == 1920", True),
        ("steps.probe.outputs[0].width == 1920", True),
        ("workflow.id == 'wf-1'", True),
        ("signals.approve.by == 'ana'", True),
        ("input.n in [1, 2, 3.0]", True),
        ("input.f == 2.5e0", True),
        ("-1 < 0", True),
        ("'it\\'s' == \"it's\"", True),
        ("'a\\nb' != 'a b'", True),
    ],
)
def test_guard_semantics(guard: str, expected: bool) -> None:
    condition = parse_condition(f"workflow.started and {guard}")
    assert condition.guards[0].evaluate(CTX) is expected


def test_evaluation_never_raises_on_odd_contexts() -> None:
    guard = parse_condition("workflow.started and input.a.b[2] < steps.x.output").guards[0]
    for ctx in ({}, {"input": None}, {"input": [1, 2]}, {"input": {"a": "text"}}, {"input": {"a": {"b": 5}}}):
        assert guard.evaluate(ctx) is False


def test_values_equal_is_by_value_and_type_aware() -> None:
    assert values_equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not values_equal({"a": True}, {"a": 1})
    assert not values_equal(None, 0)
    assert not values_equal("1", 1)


def test_step_refs_name_the_steps_read() -> None:
    condition = parse_condition("a.completed and steps.b.output.x == steps.c.outputs[0]")
    assert condition.guards[0].step_refs() == {"b", "c"}
    assert parse_expr("steps.split.output.chunks").step_refs() == {"split"}
    assert parse_expr("input.profiles").step_refs() == frozenset()


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("a.completed or b.completed", '"or" is not supported', 13),
        ("not a.completed", '"not" is not supported', 1),
        ("a.started", 'expected a step event like "a.completed" or "a.failed"', 3),
        ("input.n > 1", "at least one event predicate", 1),
        ("all a.failed", 'expected a step event like "a.completed"', 7),
        ("any.completed", '"failed" after "any."', 5),
        ("a.completed and", 'expected a step event like "x.completed"', 16),
        ("a.completed input.n", '"and" or the end', 13),
        ("a.completed and input.n = 1", 'compare with "=="', 25),
        ("a.completed && b.completed", 'join conditions with "and"', 13),
        ("a.completed and input.n == 'x", "unterminated string", 28),
        ("(a.completed", 'to close the "(" at column 1', 13),
        ("a.completed and steps.b.foo == 1", '"output" or "outputs" after "steps.b."', 25),
        ("a.completed and inputs.n == 1", 'or did you mean "input"?', 24),
        ("Probe.completed", "invalid step name 'Probe'", 1),
        ("input.completed", "at least one event predicate", 1),
        ("a.completed and input.x[1.5] == 1", "integer index", 25),
        ("a.completed and 'a\\q' == 1", "unknown escape", 19),
    ],
)
def test_syntax_errors_name_what_was_expected_and_where(text: str, message: str, column: int) -> None:
    with pytest.raises(SyntaxProblem) as caught:
        parse_condition(text)
    assert message in caught.value.message
    assert caught.value.column == column
    assert str(caught.value).endswith(f"at column {column}")


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "a.completed and __import__('os').system('touch /tmp/pwned')",
        "a.completed and input.__class__.__mro__ == 1 or 1",
        "a.completed and exec('x')",
        "a.completed and (lambda: 1)()",
    ],
)
def test_code_is_a_syntax_error_not_executed(text: str) -> None:
    with pytest.raises(SyntaxProblem):
        parse_condition(text)


def test_dunder_names_are_only_dictionary_keys() -> None:
    # Paths look names up in mappings and lists only; Python attributes are unreachable.
    guard = parse_condition("a.completed and input.__class__ == null").guards[0]
    assert guard.evaluate({"input": {}}) is True


def test_deep_nesting_is_refused_cleanly() -> None:
    with pytest.raises(SyntaxProblem, match="nested too deeply"):
        parse_condition("(" * 100 + "a.completed" + ")" * 100)


def test_parse_expr_accepts_loop_variables_and_literals() -> None:
    assert parse_expr("profile.height").evaluate({"profile": {"height": 1080}}) == 1080
    assert parse_expr("profile.height").names() == {"profile"}
    assert parse_expr("[1, 'a', null, true]").evaluate({}) == [1, "a", None, True]
    with pytest.raises(SyntaxProblem, match="end of the expression"):
        parse_expr("input.a input.b")


def test_cartesian_loops_first_outermost() -> None:
    loops = parse_loops("each chunk in steps.split.output.chunks, each profile in input.profiles")
    assert [loop.var for loop in loops] == ["chunk", "profile"]
    assert loops[0].source.step_refs() == {"split"}
    assert loops[1].text == "each profile in input.profiles"
    literal = parse_loops("each n in [1, 2, 3]")
    assert literal[0].source.evaluate({}) == [1, 2, 3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("each input in input.profiles", "would shadow the context root"),
        ("each p in input.a, each p in input.b", "already used in this fan-out"),
        ("profile in input.profiles", '"each VAR in SOURCE"'),
        ("each p input.profiles", '"in" after "each p"'),
        ("each p in profile.list", "expected a step event"),  # sources read the workflow context only
        ("each and in input.a", "loop variable name"),
    ],
)
def test_bad_loops(text: str, message: str) -> None:
    with pytest.raises(SyntaxProblem, match=message):
        parse_loops(text)
