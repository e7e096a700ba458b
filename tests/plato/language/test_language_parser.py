"""YAML definitions → model.Definition, and every validation problem reported with field and line."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from plato_harness import CARD_WORKFLOW

from cosmos import errors
from cosmos.plato.language import model
from cosmos.plato.language.parser import REASON, parse, parse_duration

pytestmark = pytest.mark.unit

# The card's example, exactly as the design brief quotes it.
CARD = CARD_WORKFLOW

FULL = """\
workflow:
  id: ladder.v1
  description: every feature once
  limits: {maxRuleFirings: 50, maxSteps: 200}
  output: {manifest: "${steps.publish.output.uri}", renditions: "${steps.encode.outputs}"}
  steps:
    probe:
      queue: probe-q
      input: {source: "${input.src}"}
      retry: {max: 2, backoff: fixed, initialInterval: 500ms, maxInterval: 1m30s, multiplier: 3, jitter: 0.2}
      timeout: {scheduleToStart: 60s, startToClose: 10m, heartbeat: 30}
    encode:
      job:
        argv: [ffmpeg, -i, "${input.src}", -crf, 23, -vf, "scale=-2:${profile.h}", "${chunk}"]
        env: {THREADS: 4}
        resources: {cpuMillis: 2000}
        timeout: 1h
    wait:
      uses: timer
      with: {duration: 5s}
    page:
      uses: notify
      with: {channel: oncall, message: "workflow ${workflow.id} failed"}
    child:
      workflow: {id: other-def, version: 2}
      input: {uri: "${steps.publish.output.uri}"}
  rules:
    - name: start
      when: workflow.started
      do: probe
    - when: [probe.completed, "steps.probe.output.width >= 1280"]
      do:
        - parallel:
            - wait
            - [a, b]
            - fanout:
                for: [each chunk in steps.probe.output.chunks, each profile in input.profiles]
                run: encode
                maxConcurrency: 4
    - when: all encode.completed and b.completed
      do: [publish, child]
    - when: signal.cancel-requested and input.allowCancel
      do: {parallel: [wait]}
    - when: any encode.failed
      do: [a]
    - name: give-up
      when: any.failed
      retry: {max: 3}
      onExhausted: page
"""


def violations(source: str) -> list[errors.FieldViolation]:
    with pytest.raises(errors.InvalidArgumentError) as caught:
        parse(source)
    assert caught.value.reason == errors.reason_name(REASON) == "ERROR_REASON_INVALID_DEFINITION"
    return list(caught.value.violations)


def only(source: str, field: str) -> errors.FieldViolation:
    """The one violation for ``field``; the test fails listing all of them otherwise."""
    found = violations(source)
    matching = [v for v in found if v.field == field]
    assert len(matching) == 1, found
    return matching[0]


def test_card_example_parses_unchanged() -> None:
    definition = parse(CARD)
    assert definition.id == "encode-workflow-v3"
    assert list(definition.steps) == [
        "probe-source",
        "encode-segment",
        "mux-final",
        "publish-manifest",
        "notify-oncall",
    ]
    assert all(
        s.kind is model.StepKind.HANDLER and s.queue == s.name and s.line == 0
        for s in definition.steps.values()
    )
    start, probed, fan_in, failed = definition.rules
    assert (start.index, start.name, start.line) == (0, "rules[0]", 4)
    assert start.do == model.Sequence((model.RunStep("probe-source"),))
    assert probed.when.predicates == (model.Predicate(model.PredicateKind.COMPLETED, step="probe-source"),)
    (fanout,) = probed.do.items if probed.do else ()
    assert isinstance(fanout, model.Fanout)
    assert fanout.run == "encode-segment" and fanout.max_concurrency is None
    assert [loop.var for loop in fanout.loops] == ["profile"]
    assert fanout.loops[0].source.evaluate({"input": {"profiles": ["720p", "1080p"]}}) == ["720p", "1080p"]
    assert fan_in.when.predicates == (
        model.Predicate(model.PredicateKind.ALL_COMPLETED, step="encode-segment"),
    )
    assert fan_in.do == model.Sequence((model.RunStep("mux-final"), model.RunStep("publish-manifest")))
    assert failed.when.is_failure_condition() and failed.do is None
    assert failed.retry == model.RetryPolicy(max_retries=3, backoff=model.Backoff(kind="exponential"))
    assert failed.on_exhausted == model.Sequence((model.RunStep("notify-oncall"),))
    assert definition.limits == model.Limits(max_rule_firings=1000, max_steps=10_000)
    assert definition.output is None


def test_every_feature_compiles() -> None:
    definition = parse(FULL)
    assert definition.limits == model.Limits(50, 200)
    assert definition.description == "every feature once"
    steps = definition.steps
    assert list(steps) == ["probe", "encode", "wait", "page", "child", "a", "b", "publish"]
    probe = steps["probe"]
    assert (probe.kind, probe.queue, probe.line) == (model.StepKind.HANDLER, "probe-q", 7)
    assert probe.retry == model.RetryPolicy(2, model.Backoff("fixed", 0.5, 90.0, 3.0, 0.2))
    assert probe.timeouts == model.Timeouts(60.0, 600.0, 30.0)
    assert probe.input is not None and probe.input.render({"input": {"src": "s3://x"}}) == {
        "source": "s3://x"
    }
    encode = steps["encode"]
    assert encode.kind is model.StepKind.JOB and encode.params is not None
    job = encode.params.render({"input": {"src": "in.mp4"}, "profile": {"h": 720}, "chunk": "c1.mp4"})
    assert job["argv"] == ["ffmpeg", "-i", "in.mp4", "-crf", "23", "-vf", "scale=-2:720", "c1.mp4"]
    assert job["env"] == {"THREADS": "4"}  # JobSpec holds strings; YAML numbers are converted
    assert job["timeout"] == "3600s"  # protobuf-JSON duration for the Stratum runner
    wait = steps["wait"]
    assert (wait.kind, wait.builtin) == (model.StepKind.BUILTIN, "timer")
    assert wait.params is not None and wait.params.render({}) == {"duration": 5.0}
    assert steps["page"].builtin == "notify"
    assert steps["child"].child == model.ChildWorkflow("other-def", 2)
    assert steps["a"] == model.StepDef(name="a", kind=model.StepKind.HANDLER, queue="a")

    start, split, fan_in, cancel, compensate, give_up = definition.rules
    assert start.name == "start" and give_up.name == "give-up" and split.name == "rules[1]"
    assert len(split.when.predicates) == 1 and len(split.when.guards) == 1
    assert split.when.text == "probe.completed and steps.probe.output.width >= 1280"
    (parallel,) = split.do.items if split.do else ()
    assert isinstance(parallel, model.Parallel)
    wait_branch, sequence, fanout = parallel.branches
    assert wait_branch == model.RunStep("wait")
    assert sequence == model.Sequence((model.RunStep("a"), model.RunStep("b")))
    assert isinstance(fanout, model.Fanout)
    assert [loop.var for loop in fanout.loops] == ["chunk", "profile"] and fanout.max_concurrency == 4
    assert [p.kind for p in fan_in.when.predicates] == [
        model.PredicateKind.ALL_COMPLETED,
        model.PredicateKind.COMPLETED,
    ]
    assert cancel.when.predicates[0] == model.Predicate(model.PredicateKind.SIGNAL, signal="cancel-requested")
    assert cancel.do == model.Sequence((model.Parallel((model.RunStep("wait"),)),))
    assert compensate.when.is_failure_condition() and compensate.do is not None
    assert give_up.retry == model.RetryPolicy(3) and give_up.on_exhausted == model.Sequence(
        (model.RunStep("page"),)
    )
    assert definition.output is not None and definition.output.step_refs() == {"publish", "encode"}


def test_cartesian_for_in_one_string() -> None:
    source = CARD.replace(
        "{for: each profile in input.profiles, run: encode-segment}",
        '{for: "each chunk in input.chunks, each profile in input.profiles", run: encode-segment}',
    )
    fanout = parse(source).rules[1].do.items[0]  # type: ignore[union-attr]
    assert isinstance(fanout, model.Fanout)
    assert [(loop.var, loop.text) for loop in fanout.loops] == [
        ("chunk", "each chunk in input.chunks"),
        ("profile", "each profile in input.profiles"),
    ]


def test_anchors_and_merge_keys_work() -> None:
    source = """\
workflow:
  id: merged
  steps:
    a: &common {retry: {max: 1}, timeout: {startToClose: 5m}}
    b: {<<: *common, queue: bq}
  rules:
    - {when: workflow.started, do: [a, b]}
"""
    steps = parse(source).steps
    assert steps["b"].queue == "bq" and steps["b"].retry == steps["a"].retry == model.RetryPolicy(1)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0.25, 0.25),
        ("500ms", 0.5),
        ("5s", 5.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5", "5x", "-1s", -1, "s", "", True, None, "1s 2s", float("inf")])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def _doc(body: str) -> str:
    """A valid definition with ``body`` (indented under ``workflow:``) appended to its keys."""
    return "workflow:\n  id: t\n" + textwrap.indent(textwrap.dedent(body), "  ")


START = "rules:\n  - when: workflow.started\n    do: [a]\n"


@pytest.mark.parametrize(
    ("source", "field", "line", "fragment"),
    [
        ("workflow:\n  rules:\n    - {when: workflow.started, do: a}\n", "workflow.id", 1, "missing"),
        (
            "workflow:\n  id: Bad_Id\n  rules:\n    - {when: workflow.started, do: a}\n",
            "workflow.id",
            2,
            "invalid id",
        ),
        (
            "workflow:\n  id: t\n  rules: [{when: workflow.started, do: a}]\nworkflw: {}\n",
            "workflw",
            4,
            "unknown key 'workflw'",
        ),
        (_doc(START + "limts: {}\n"), "workflow.limts", 6, "did you mean 'limits'?"),
        (_doc(START + "limits: {maxSteps: 0}\n"), "workflow.limits.maxSteps", 6, "at least 1"),
        (
            _doc(START + "steps:\n  a: {retyr: {max: 1}}\n"),
            "workflow.steps.a.retyr",
            7,
            "did you mean 'retry'?",
        ),
        (
            _doc(START + "steps:\n  a:\n    timeout: {heartbeat: 10 minutes}\n"),
            "workflow.steps.a.timeout.heartbeat",
            8,
            "invalid duration",
        ),
        (
            _doc(START + "steps:\n  a:\n    timeout: {heartbeat: 0s}\n"),
            "workflow.steps.a.timeout.heartbeat",
            8,
            "longer than 0",
        ),
        (_doc(START + "steps:\n  a: {retry: {max: -1}}\n"), "workflow.steps.a.retry.max", 7, "at least 0"),
        (
            _doc(START + "steps:\n  a: {retry: {backoff: linear, max: 1}}\n"),
            "workflow.steps.a.retry.backoff",
            7,
            "exponential, fixed",
        ),
        (
            _doc(START + "steps:\n  a: {retry: {max: 1, jitter: 1.5}}\n"),
            "workflow.steps.a.retry.jitter",
            7,
            "between 0 and 1",
        ),
        (
            _doc(START + "steps:\n  a: {retry: {max: 1, initialInterval: 1m, maxInterval: 5s}}\n"),
            "workflow.steps.a.retry.maxInterval",
            7,
            "shorter than initialInterval",
        ),
        (
            _doc(START + "steps:\n  a: {retry: {backoff: fixed}}\n"),
            "workflow.steps.a.retry.max",
            7,
            "missing",
        ),
        (_doc(START + "steps:\n  a: {uses: shell}\n"), "workflow.steps.a.uses", 7, "unknown builtin 'shell'"),
        (
            _doc(START + "steps:\n  a: {uses: log, job: {argv: [x]}}\n"),
            "workflow.steps.a",
            7,
            "at most one of uses:, job:, workflow:",
        ),
        (
            _doc(START + "steps:\n  a: {uses: timer}\n"),
            "workflow.steps.a.with.duration",
            7,
            "needs with: {duration",
        ),
        (
            _doc(START + "steps:\n  a: {uses: timer, with: {duration: soon}}\n"),
            "workflow.steps.a.with.duration",
            7,
            "invalid duration",
        ),
        (
            _doc(START + "steps:\n  a: {uses: log, with: {message: hi, colour: red}}\n"),
            "workflow.steps.a.with.colour",
            7,
            "unknown key 'colour'",
        ),
        (
            _doc(START + "steps:\n  a: {queue: q, with: {x: 1}}\n"),
            "workflow.steps.a.with",
            7,
            "uses: builtin",
        ),
        (
            _doc(START + "steps:\n  a: {job: {argv: [x]}, queue: q}\n"),
            "workflow.steps.a.queue",
            7,
            "handler steps",
        ),
        (_doc(START + "steps:\n  a: {job: {image: x}}\n"), "workflow.steps.a.job.argv", 7, "needs argv"),
        (
            _doc(START + "steps:\n  a: {job: {argv: [x], cpus: 2}}\n"),
            "workflow.steps.a.job.cpus",
            7,
            "unknown key 'cpus'",
        ),
        (
            _doc(START + "steps:\n  a: {workflow: {version: 1}}\n"),
            "workflow.steps.a.workflow.id",
            7,
            "needs id",
        ),
        (
            _doc(START + "steps:\n  a: {input: {x: '${nope.x}'}}\n"),
            "workflow.steps.a.input",
            7,
            "unknown name 'nope'",
        ),
        (_doc(START + "steps:\n  a: {input: {x: '${input.}'}}\n"), "workflow.steps.a.input.x", 7, "column 9"),
        (
            _doc(START + "steps:\n  a: {input: {x: '${steps.ghost.output}'}}\n"),
            "workflow.steps.a.input",
            7,
            "unknown step 'ghost'",
        ),
        (_doc(START + "steps:\n  a: {}\n  unused: {}\n"), "workflow.steps.unused", 8, "no rule runs it"),
        (_doc(START + "steps:\n  Bad: {}\n"), "workflow.steps.Bad", 7, "invalid step name"),
        (_doc(START + "output: '${steps.nope.output}'\n"), "workflow.output", 6, "unknown step 'nope'"),
        (_doc(START + "output: '${profile}'\n"), "workflow.output", 6, "unknown name 'profile'"),
        (
            _doc(START + "  - when: a.completed and\n    do: [b]\n"),
            "workflow.rules[1].when",
            6,
            "at column 16",
        ),
        (
            _doc(START + "  - when: a.completed or a.failed\n    do: [b]\n"),
            "workflow.rules[1].when",
            6,
            "one rule per alternative",
        ),
        (
            _doc(START + "  - when: [a.completed, 'input.x ==']\n    do: [b]\n"),
            "workflow.rules[1].when[1]",
            6,
            "at column 11",
        ),
        (
            _doc(START + "  - when: input.x == 1\n    do: [b]\n"),
            "workflow.rules[1].when",
            6,
            "event predicate",
        ),
        (
            _doc(START + "  - when: a.completed\n    retry: {max: 1}\n"),
            "workflow.rules[1].retry",
            7,
            "needs a failure condition",
        ),
        (
            _doc(START + "  - when: a.failed\n    do: [b]\n    retry: {max: 1}\n"),
            "workflow.rules[1]",
            6,
            "not both",
        ),
        (_doc(START + "  - when: a.completed\n    name: x\n"), "workflow.rules[1]", 6, "needs do:"),
        (
            _doc(START + "  - when: a.failed\n    do: [b]\n    onExhausted: [c]\n"),
            "workflow.rules[1].onExhausted",
            8,
            "belongs to a rule with retry:",
        ),
        (
            _doc(START + "  - when: a.completed\n    dp: [b]\n"),
            "workflow.rules[1].dp",
            7,
            "did you mean 'do'?",
        ),
        (_doc(START + "  - when: a.completed\n    do: []\n"), "workflow.rules[1].do", 7, "must not be empty"),
        (
            _doc(START + "  - when: a.completed\n    do: [{fanout: {for: each x in input.l}}]\n"),
            "workflow.rules[1].do[0].fanout.run",
            7,
            "needs run:",
        ),
        (
            _doc(
                START
                + "  - when: a.completed\n"
                + "    do: [{fanout: {for: each x in input.l, run: b, maxConcurrency: 0}}]\n"
            ),
            "workflow.rules[1].do[0].fanout.maxConcurrency",
            7,
            "at least 1",
        ),
        (
            _doc(START + "  - when: a.completed\n    do: [{fanout: {for: each steps in input.l, run: b}}]\n"),
            "workflow.rules[1].do[0].fanout.for",
            7,
            "shadow",
        ),
        (
            _doc(
                START
                + "  - when: a.completed\n"
                + "    do: [{fanout: {for: [each x in input.l, each x in input.m], run: b}}]\n"
            ),
            "workflow.rules[1].do[0].fanout.for[1]",
            7,
            "already used",
        ),
        (
            _doc(
                START
                + "  - when: a.completed\n    do: [{fanout: {for: each x in steps.gone.output.l, run: b}}]\n"
            ),
            "workflow.rules[1].do[0].fanout.for",
            7,
            "unknown step 'gone'",
        ),
        (
            _doc(START + "  - when: a.completed\n    do: [{parallel: [b], fanout: {}}]\n"),
            "workflow.rules[1].do[0]",
            7,
            "exactly one of fanout:, parallel:",
        ),
        (
            _doc(START + "  - when: a.completed\n    do: [{sequence: [b]}]\n"),
            "workflow.rules[1].do[0].sequence",
            7,
            "unknown key 'sequence'",
        ),
        (
            _doc(START + "  - when: ghost.completed\n    do: [b]\n"),
            "workflow.rules[1].when",
            6,
            "unknown step 'ghost'",
        ),
        (
            _doc(START + "  - when: a.completed and steps.ghost.output.x == 1\n    do: [b]\n"),
            "workflow.rules[1].when",
            6,
            "unknown step 'ghost'",
        ),
        (
            _doc(
                START
                + "  - {name: dup, when: a.completed, do: b}\n  - {name: dup, when: b.completed, do: c}\n"
            ),
            "workflow.rules[2].name",
            7,
            "already used by rules[1]",
        ),
        (
            _doc("rules:\n  - when: a.completed\n    do: [b]\n  - when: b.completed\n    do: [a]\n"),
            "workflow.rules",
            3,
            'no rule has "workflow.started"',
        ),
        (
            _doc(START + "  - when: b.completed\n    do: [c]\n  - when: c.completed\n    do: [b]\n"),
            "workflow.rules[1].when",
            6,
            "rule 'rules[1]' can never fire: step 'b' never runs",
        ),
        (
            _doc(
                "rules:\n  - when: any.failed\n    retry: {max: 1}\n    onExhausted: a\n"
                "  - when: signal.go\n    do: b\n"
            ),
            "workflow.rules",
            3,
            'no rule has "workflow.started"',
        ),
        ("workflow:\n  id: t\n  rules: [\n", "source_yaml", 4, "not valid YAML"),
        (
            "workflow:\n  id: t\n  id: u\n  rules: [{when: workflow.started, do: a}]\n",
            "workflow.id",
            3,
            "duplicate key 'id'",
        ),
        ("workflow: !!python/object/apply:os.system ['echo pwned']\n", "workflow", 1, "unsupported YAML tag"),
        ("- just\n- a list\n", "workflow", 1, "the document must be a mapping"),
        ("", "workflow", 1, "missing"),
    ],
)
def test_each_problem_names_field_and_line(source: str, field: str, line: int, fragment: str) -> None:
    violation = only(source, field)
    assert violation.description.startswith(f"line {line}: "), violation
    assert fragment in violation.description, violation


def test_reachability_iterates_to_a_fixpoint() -> None:
    # c is run only after b, which is run only after a: all reachable, in any rule order.
    source = _doc(
        "rules:\n"
        "  - {when: b.completed, do: c}\n"
        "  - {when: a.completed, do: b}\n"
        "  - {when: workflow.started, do: a}\n"
        "  - {when: any.failed, do: d}\n"
        "  - {when: all c.completed and d.completed, do: e}\n"
    )
    assert len(parse(source).rules) == 5


def test_all_problems_are_collected_and_ordered_by_line() -> None:
    source = _doc(
        "limits: {maxSteps: -5}\n"
        "steps:\n"
        "  a: {timeout: {heartbeat: forever}}\n"
        "rules:\n"
        "  - when: workflow.started\n"
        "    do: [a]\n"
        "  - when: a.completed or b.completed\n"
        "    do: [b]\n"
        "  - when: a.completed\n"
        "    retry: {max: 2}\n"
    )
    found = violations(source)
    assert [v.field for v in found] == [
        "workflow.limits.maxSteps",
        "workflow.steps.a.timeout.heartbeat",
        "workflow.rules[1].when",
        "workflow.rules[2].retry",
    ]
    lines = [int(v.description.split(":")[0].removeprefix("line ")) for v in found]
    assert lines == sorted(lines)


def test_error_message_and_metadata_summarize_the_problems() -> None:
    with pytest.raises(errors.InvalidArgumentError) as caught:
        parse(_doc(START + "  - when: ghost.completed\n    do: [b]\n"))
    assert caught.value.metadata == {"definition_id": "t"}
    assert "workflow.rules[1].when" in caught.value.message
    assert "unknown step 'ghost'" in caught.value.message


def test_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)
    ]
    violation = violations("\n".join(lines) + "\n")[0]
    assert "more than" in violation.description


def test_reserved_words_cannot_name_steps() -> None:
    violation = only(_doc("rules:\n  - when: workflow.started\n    do: [input]\n"), "workflow.rules[0].do[0]")
    assert "reserved" in violation.description


def test_absurd_numbers_are_problems_not_crashes() -> None:
    found = violations(_doc(START + "limits: {maxSteps: " + "9" * 5000 + "}\n"))
    assert any(v.field == "workflow.limits.maxSteps" and "unreadable value" in v.description for v in found)


def test_documented_examples_parse() -> None:
    # docs/workflow-language.md is the language reference; its complete examples must stay valid.
    text = (Path(__file__).resolve().parents[3] / "docs" / "workflow-language.md").read_text()
    examples = [
        block for block in re.findall(r"```yaml\n(.*?)```", text, re.S) if block.startswith("workflow:")
    ]
    assert len(examples) >= 3
    ids = [parse(block).id for block in examples if "{...}" not in block]
    assert ids == ["encode-workflow-v3", "abr-ladder-v1", "publish-with-approval"]
