"""The CLI's pure parts: --since, id prefixes, paging to the end, step progress, error lines, the
command that needs a distribution not installed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest
from google.protobuf import timestamp_pb2

from cosmos import errors
from cosmos.cli import lookup, main, workflows
from cosmos.plato.v1 import workflow_pb2

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 31, 12, 0, tzinfo=dt.UTC)


MISSING = [
    ("up", ModuleNotFoundError("No module named 'cosmos.stack'", name="cosmos.stack"), "cosmos-media-stack"),
    # cosmos.plato is still a namespace there (the contracts' cosmos.plato.v1 is in it).
    ("plato", ImportError("cannot import name 'server' from 'cosmos.plato'", name="cosmos.plato"),
     "cosmos-media-plato"),
    ("agent", ModuleNotFoundError("No module named 'cosmos.stratum.agent'", name="cosmos.stratum.agent"),
     "cosmos-media-stratum"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "error", "distribution"), MISSING)
def test_a_command_whose_distribution_is_not_installed_names_it(
    command: str,
    error: ImportError,
    distribution: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def import_module(name: str) -> None:
        raise error

    monkeypatch.setattr("importlib.import_module", import_module)
    monkeypatch.setattr(main, "installed", lambda name: name != distribution)
    assert main.main([command]) == 2
    assert f"cosmos {command}: needs the {distribution} distribution" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [ModuleNotFoundError("No module named 'rich'", name="rich"),  # not a part of Cosmos
     ImportError("cannot import name 'x' from 'cosmos.stack.embedded'", name="cosmos.stack.embedded")],
)  # fmt: skip
def test_an_import_error_of_anything_else_is_not_hidden(
    error: ImportError, monkeypatch: pytest.MonkeyPatch
) -> None:
    def import_module(name: str) -> None:
        raise error

    monkeypatch.setattr("importlib.import_module", import_module)  # cosmos-media-stack is installed here
    with pytest.raises(ImportError):
        main.main(["up"])


def test_since_takes_durations_and_iso_times_and_names_a_bad_value() -> None:
    assert lookup.parse_since("15m", NOW) == NOW - dt.timedelta(minutes=15)
    assert lookup.parse_since("1.5h", NOW) == NOW - dt.timedelta(minutes=90)
    assert lookup.parse_since("2d", NOW) == NOW - dt.timedelta(days=2)
    assert lookup.parse_since("2026-01-30T08:00", NOW) == dt.datetime(2026, 1, 30, 8, tzinfo=dt.UTC)
    assert lookup.parse_since("", NOW) is None
    with pytest.raises(errors.ConfigError, match="--since 'soon'"):
        lookup.parse_since("soon", NOW)


def test_an_id_or_a_unique_prefix_names_one_and_an_ambiguous_one_lists_them() -> None:
    ids = ["enc-1a", "enc-1b", "enc-2c"]
    assert lookup.unique("enc-2", ids, "workflow") == "enc-2c"
    assert lookup.unique("enc-1a", ids, "workflow") == "enc-1a"
    with pytest.raises(errors.ConfigError, match="ambiguous: enc-1a, enc-1b"):
        lookup.unique("enc-1", ids, "workflow")
    with pytest.raises(errors.ConfigError, match="no workflow with id or id prefix 'x'"):
        lookup.unique("x", ids, "workflow")


def stamp(minutes_ago: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(NOW - dt.timedelta(minutes=minutes_ago))
    return t


async def test_lists_walk_every_page_filter_and_stop_at_since() -> None:
    # 7 workflows, newest first, two a page.
    rows = [
        workflow_pb2.Workflow(workflow_id=f"wf-{i}", tenant="a" if i % 2 else "b", create_time=stamp(i * 10))
        for i in range(7)
    ]
    asked: list[str] = []

    async def fetch(token: str) -> tuple[Sequence[workflow_pb2.Workflow], str]:
        asked.append(token)
        start = int(token or 0)
        return rows[start : start + 2], str(start + 2) if start + 2 < len(rows) else ""

    def ids(found: list[workflow_pb2.Workflow]) -> list[str]:
        return [w.workflow_id for w in found]

    every = await lookup.collect(fetch, lambda _: True, 0)
    assert ids(every) == [f"wf-{i}" for i in range(7)] and asked == ["", "2", "4", "6"]
    assert ids(await lookup.collect(fetch, lambda w: w.tenant == "a", 2)) == ["wf-1", "wf-3"]
    asked.clear()
    since = NOW - dt.timedelta(minutes=25)
    newer = await lookup.collect(fetch, lambda _: True, 0, lambda w: w.create_time, since)
    assert ids(newer) == ["wf-0", "wf-1", "wf-2"] and asked == ["", "2", "4"]  # page 4-5 all older: stop


def test_a_completed_step_reads_100_percent_whatever_it_last_reported() -> None:
    done = workflow_pb2.StepExecution(state=workflow_pb2.STEP_STATE_COMPLETED)
    done.progress.percent = 97.0
    running = workflow_pb2.StepExecution(state=workflow_pb2.STEP_STATE_RUNNING)
    running.progress.percent = 42.0
    failed = workflow_pb2.StepExecution(state=workflow_pb2.STEP_STATE_FAILED)
    failed.progress.percent = 42.0
    assert [workflows.step_progress(s) for s in (done, running, failed)] == ["100%", "42%", ""]


def test_no_worker_notice_says_which_step_for_how_long() -> None:
    wf = workflow_pb2.Workflow()
    step = wf.steps.add(step_id="mux-final", task_queue="mux-final", state=workflow_pb2.STEP_STATE_SCHEDULED)
    step.no_worker_since_time.FromDatetime(NOW - dt.timedelta(seconds=30))
    wf.steps.add(step_id="probe", state=workflow_pb2.STEP_STATE_COMPLETED)
    [notice] = workflows.no_worker_notices(wf, NOW)
    assert "no worker for step mux-final for 30 s" in notice and "'mux-final'" in notice
