"""ListWorkflows' filters as one predicate, and the query its page tokens are bound to."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2

from cosmos import errors
from cosmos.plato import listing
from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2

pytestmark = pytest.mark.unit

WS = workflow_pb2.WorkflowState


def _at(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def _wf(
    workflow_id: str,
    *,
    tenant: str = "acme",
    created: int = 100,
    state: workflow_pb2.WorkflowState.ValueType = WS.WORKFLOW_STATE_RUNNING,
    definition: str = "encode",
) -> workflow_pb2.Workflow:
    wf = workflow_pb2.Workflow(workflow_id=workflow_id, tenant=tenant, definition_id=definition, state=state)
    wf.create_time.CopyFrom(_at(created))
    return wf


def test_no_filters_keep_everything() -> None:
    keep = listing.matcher(workflow_service_pb2.ListWorkflowsRequest())
    assert keep(_wf("wf-1")) and keep(_wf("wf-2", tenant="globex", created=0))


def test_each_filter_narrows() -> None:
    request = workflow_service_pb2.ListWorkflowsRequest(
        tenant="acme",
        definition_id="encode",
        state=WS.WORKFLOW_STATE_RUNNING,
        created_after_time=_at(100),
        created_before_time=_at(200),
        workflow_id_prefix="wf-a",
    )
    keep = listing.matcher(request)
    assert keep(_wf("wf-abc"))
    assert keep(_wf("wf-abc", created=199))
    assert not keep(_wf("wf-abc", tenant="globex"))
    assert not keep(_wf("wf-abc", created=99))  # before the window
    assert not keep(_wf("wf-abc", created=200))  # the upper bound is exclusive
    assert not keep(_wf("wf-bcd"))
    assert not keep(_wf("wf-abc", state=WS.WORKFLOW_STATE_COMPLETED))
    assert not keep(_wf("wf-abc", definition="probe"))


def test_an_empty_time_window_is_refused_naming_the_field() -> None:
    request = workflow_service_pb2.ListWorkflowsRequest(
        created_after_time=_at(200), created_before_time=_at(200)
    )
    with pytest.raises(errors.InvalidArgumentError) as refused:
        listing.matcher(request)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in refused.value.violations] == ["created_after_time"]


def test_page_tokens_are_bound_to_every_filter() -> None:
    base = workflow_service_pb2.ListWorkflowsRequest(definition_id="encode")
    R = workflow_service_pb2.ListWorkflowsRequest
    variants = [
        R(definition_id="encode", tenant="acme"),
        R(definition_id="encode", state=WS.WORKFLOW_STATE_FAILED),
        R(definition_id="encode", created_after_time=_at(1)),
        R(definition_id="encode", created_before_time=_at(1)),
        R(definition_id="encode", workflow_id_prefix="wf-"),
    ]
    queries = {listing.query(base), *(listing.query(v) for v in variants)}
    assert len(queries) == 6
