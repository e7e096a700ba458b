"""What ``ListWorkflows`` keeps: its request's filters as one predicate over workflow headers, and the
query string its page tokens are bound to (a token from one set of filters is refused for another)."""

from __future__ import annotations

from collections.abc import Callable

from cosmos import errors
from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2


def query(request: workflow_service_pb2.ListWorkflowsRequest) -> str:
    """The filters, as :func:`cosmos.runtime.paging.parse` binds a page token to them."""
    return (
        f"def={request.definition_id};state={request.state};tenant={request.tenant};"
        f"after={_nanos(request, 'created_after_time')};before={_nanos(request, 'created_before_time')};"
        f"prefix={request.workflow_id_prefix}"
    )


def matcher(
    request: workflow_service_pb2.ListWorkflowsRequest,
) -> Callable[[workflow_pb2.Workflow], bool]:
    """Whether a workflow passes every filter of ``request`` (who may see it is the caller's check).

    Raises INVALID_ARGUMENT when the time window is empty (``created_after_time`` not before
    ``created_before_time``): a typo there would otherwise read as "no workflows".
    """
    after, before = _nanos(request, "created_after_time"), _nanos(request, "created_before_time")
    if after and before and after >= before:
        raise errors.invalid("created_after_time", "must be before created_before_time")

    def keep(wf: workflow_pb2.Workflow) -> bool:
        created = wf.create_time.ToNanoseconds()
        return (
            (not request.definition_id or wf.definition_id == request.definition_id)
            and (not request.state or wf.state == request.state)
            and (not request.tenant or wf.tenant == request.tenant)
            and (not after or created >= after)
            and (not before or created < before)
            and wf.workflow_id.startswith(request.workflow_id_prefix)
        )

    return keep


def _nanos(request: workflow_service_pb2.ListWorkflowsRequest, field: str) -> int:
    """The time field in nanoseconds since the epoch; 0 when unset."""
    if not request.HasField(field):  # type: ignore[arg-type]
        return 0
    stamp = getattr(request, field)
    return int(stamp.ToNanoseconds())
