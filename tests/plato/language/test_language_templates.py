"""Templates: placeholders keep types when alone, interpolate otherwise, and never mutate anything."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cosmos.plato.language.templates import Constant, TemplateProblem, compile_template

pytestmark = pytest.mark.unit

CTX: dict[str, Any] = {
    "input": {"src": "s3://in/clip.mp4", "profiles": [{"h": 720}, {"h": 1080}], "crf": 23, "opts": {"a": 1}},
    "steps": {"probe": {"output": {"duration": 12.5, "audio": None}, "outputs": [{"duration": 12.5}]}},
    "workflow": {"id": "wf-7"},
    "signals": {},
    "profile": {"h": 720, "name": "720p"},
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${input.profiles}", [{"h": 720}, {"h": 1080}]),
        ("${input.crf}", 23),
        ("${steps.probe.output.duration}", 12.5),
        ("${steps.probe.output.audio}", None),
        ("${input.opts}", {"a": 1}),
        ("${input.missing}", None),
        ("${ profile.h }", 720),
        ("${'literal'}", "literal"),
        ("${[1, input.crf]}", [1, 23]),
    ],
)
def test_a_lone_placeholder_keeps_the_type(value: str, expected: object) -> None:
    assert compile_template(value).render(CTX) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("workflow ${workflow.id} failed", "workflow wf-7 failed"),
        ("crf=${input.crf}", "crf=23"),
        ("${profile.name}-${profile.h}", "720p-720"),
        ("audio=[${steps.probe.output.audio}]", "audio=[]"),  # null interpolates as ""
        ("opts=${input.opts}", 'opts={"a": 1}'),  # mappings and lists as JSON
        ("flag=${true}", "flag=true"),
        ("cost $${input.crf} literal", "cost ${input.crf} literal"),
        ("$${input.crf}", "${input.crf}"),
        ("${'}'} brace", "} brace"),  # a brace inside a quoted string does not end the placeholder
        ("no placeholders", "no placeholders"),
        ("", ""),
    ],
)
def test_interpolation(value: str, expected: str) -> None:
    assert compile_template(value).render(CTX) == expected


def test_nested_values_render_fresh_and_leave_source_and_context_alone() -> None:
    source = {
        "source": "${input.src}",
        "profiles": "${input.profiles}",
        "args": ["-crf", "${input.crf}", {"h": "${profile.h}"}],
        "fixed": [1, 2.5, True, None],
    }
    pristine = copy.deepcopy(source)
    ctx_before = copy.deepcopy(CTX)
    template = compile_template(source)
    first = template.render(CTX)
    assert first == {
        "source": "s3://in/clip.mp4",
        "profiles": [{"h": 720}, {"h": 1080}],
        "args": ["-crf", 23, {"h": 720}],
        "fixed": [1, 2.5, True, None],
    }
    first["profiles"].append("mutated")  # a rendered value never aliases the context
    first["args"].clear()
    assert template.render(CTX)["args"] == ["-crf", 23, {"h": 720}]
    assert ctx_before == CTX
    assert source == pristine
    with pytest.raises(AttributeError):
        template.entries = ()  # type: ignore[attr-defined]


def test_step_refs_and_names() -> None:
    template = compile_template(
        {"a": "${steps.probe.output.x}", "b": ["${profile.h} ${steps.split.outputs}"]}
    )
    assert template.step_refs() == {"probe", "split"}
    assert template.names() == {"steps", "profile"}


def test_constant_strings_compile_to_constants() -> None:
    assert compile_template("plain") == Constant("plain")
    assert compile_template(3) == Constant(3)


def test_every_bad_placeholder_is_reported_with_its_location() -> None:
    with pytest.raises(TemplateProblem) as caught:
        compile_template({"a": "x ${input.}", "b": ["ok", "${__import__('os')}"], "c": "${unterminated"})
    problems = dict(caught.value.problems)
    assert set(problems) == {("a",), ("b", 1), ("c",)}
    assert "column 11" in problems[("a",)]
    assert "unterminated" in problems[("c",)]


def test_non_json_values_are_refused() -> None:
    with pytest.raises(TemplateProblem, match="unsupported value"):
        compile_template({"a": {1, 2}})
