"""How a workflow of the encode ladder reads as an Encode (pure, in process)."""

from __future__ import annotations

import pytest

from cosmos.optimus import view
from cosmos.optimus.v1 import encode_pb2
from cosmos.plato.v1 import workflow_pb2

pytestmark = pytest.mark.unit

WS = workflow_pb2.WorkflowState
SS = workflow_pb2.StepState
ES = encode_pb2.EncodeState


def completed_workflow(*, published: bool) -> workflow_pb2.Workflow:
    wf = workflow_pb2.Workflow(workflow_id="enc-1", state=WS.WORKFLOW_STATE_COMPLETED)
    wf.input.update({"output": "file:///out/title", "profiles": [{"name": "360p"}]})
    wf.steps.add(step_id="probe", step_name="probe", state=SS.STEP_STATE_COMPLETED)
    if published:
        step = wf.steps.add(step_id="publish", step_name="publish", state=SS.STEP_STATE_COMPLETED)
        step.output.update(
            {
                "hls_master_uri": "file:///out/title/master.m3u8",
                "dash_mpd_uri": "file:///out/title/manifest.mpd",
            }
        )
    return wf


def test_a_completed_encode_with_its_package_published_succeeded() -> None:
    encode = view.encode_view(completed_workflow(published=True))
    assert encode.state == ES.ENCODE_STATE_SUCCEEDED
    assert encode.manifests.hls_master_uri == "file:///out/title/master.m3u8"


def test_a_completed_workflow_that_never_published_is_a_failed_encode_not_a_success() -> None:
    encode = view.encode_view(completed_workflow(published=False))
    assert encode.state == ES.ENCODE_STATE_FAILED
    assert encode.failed_step == "publish" and "without publishing" in encode.error_message


def test_a_view_without_steps_cannot_tell_and_keeps_the_workflow_state() -> None:
    wf = workflow_pb2.Workflow(workflow_id="enc-1", state=WS.WORKFLOW_STATE_COMPLETED)
    assert view.encode_view(wf).state == ES.ENCODE_STATE_SUCCEEDED


def test_a_renditions_playlist_uri_is_its_published_uri_never_a_scratch_path() -> None:
    wf = completed_workflow(published=True)
    wf.steps[-1].output.update({"uri": "file:///out/title"})
    package = wf.steps.add(step_id="package", step_name="package", state=SS.STEP_STATE_COMPLETED)
    package.output.update(
        {"renditions": [{"profile": "360p", "playlist": "/scratch/work/enc-1/package/media_v0.m3u8"}]}
    )
    encode = view.encode_view(wf)
    assert [r.playlist_uri for r in encode.renditions] == ["file:///out/title/media_v0.m3u8"]
    # Packaged but not yet published: no URI rather than a path nobody can open.
    del wf.steps[1]
    wf.state = WS.WORKFLOW_STATE_RUNNING
    assert [r.playlist_uri for r in view.encode_view(wf).renditions] == [""]
