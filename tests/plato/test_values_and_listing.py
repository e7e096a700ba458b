"""Small semantics, on a real Plato: integer step outputs stay integers from handler to handler and
in the workflow's output; ListDefinitions honours its definition_id filter."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import security_harness
from plato_harness import PlatoClient

from cosmos.plato.v1 import workflow_pb2, workflow_service_pb2
from cosmos.protocol import values
from cosmos.runtime import rpc_errors
from cosmos.sdk import StepContext, Worker

NUMBERS = """\
workflow:
  id: numbers
  output:
    count: "${steps.produce.output.count}"
    ratio: "${steps.produce.output.ratio}"
    seen: "${steps.consume.output}"
  steps:
    produce: {}
    consume:
      input:
        count: "${steps.produce.output.count}"
        ratio: "${steps.produce.output.ratio}"
        nested: "${steps.produce.output.nested}"
        text: "n=${steps.produce.output.count}"
  rules:
    - when: workflow.started
      do: [produce, consume]
"""


def test_struct_numbers_keep_int_and_float_and_refuse_inexact_integers() -> None:
    data = {
        "n": 3,
        "neg": -7,
        "ratio": 2.5,
        "whole": 2.0,
        "edge": 2**53,
        "flag": True,
        "l": [1, 0.5, {"k": 4}],
    }
    back = values.struct_to_dict(values.dict_to_struct(data))
    assert back == data
    assert [type(back[k]) for k in ("n", "neg", "ratio", "edge", "flag")] == [int, int, float, int, bool]
    assert type(back["l"][0]) is int and type(back["l"][2]["k"]) is int and type(back["l"][1]) is float
    # A whole-valued float reads back as the equal int (a double cannot tell them apart).
    assert back["whole"] == 2 and type(back["whole"]) is int
    with pytest.raises(values.InexactNumber, match=r"output\.l\[1\]\.id: integer 9007199254740993"):
        values.dict_to_struct({"l": [0, {"id": 2**53 + 1}]})
    assert values.struct_to_dict(values.dict_to_struct({"big": 1e300}))["big"] == 1e300


async def test_integer_outputs_stay_integers_between_steps_and_in_the_workflow_output(
    plato: PlatoClient, run_worker: Callable[[Worker], None]
) -> None:
    await plato.register(NUMBERS)
    worker = Worker(plato.nats_url, tls=security_harness.worker_tls())
    received: dict[str, Any] = {}

    @worker.handler("produce")
    async def produce(step: StepContext) -> dict[str, Any]:
        return {"count": 3, "ratio": 0.5, "nested": {"frames": 144, "sizes": [1, 2]}}

    @worker.handler("consume")
    async def consume(step: StepContext) -> dict[str, Any]:
        received.update(step.input)
        return {"types": sorted({type(v).__name__ for v in step.input.values()})}

    run_worker(worker)
    wf = await plato.wait(await plato.start("numbers"))
    assert wf.state == workflow_pb2.WORKFLOW_STATE_COMPLETED, wf.failure_reason
    assert received == {"count": 3, "ratio": 0.5, "nested": {"frames": 144, "sizes": [1, 2]}, "text": "n=3"}
    assert type(received["count"]) is int and type(received["nested"]["frames"]) is int
    output = values.struct_to_dict(wf.output)
    assert output["count"] == 3 and type(output["count"]) is int and output["ratio"] == 0.5
    assert output["seen"] == {"types": ["dict", "float", "int", "str"]}


async def test_list_definitions_honours_definition_id(plato: PlatoClient) -> None:
    one = "workflow:\n  id: listed-a\n  rules:\n    - when: workflow.started\n      do: [work]\n"
    for i in range(3):  # three versions of listed-a
        await plato.register(one.replace("do: [work]", f"do: [work{i}]"))
    await plato.register(one.replace("listed-a", "listed-b"))

    async def listing(**kw: Any) -> tuple[list[tuple[str, int]], str]:
        reply = await plato.stub.ListDefinitions(workflow_service_pb2.ListDefinitionsRequest(**kw))
        return [(d.definition_id, d.version) for d in reply.definitions], reply.next_page_token

    assert await listing() == ([("listed-a", 3), ("listed-b", 1)], "")
    assert await listing(definition_id="listed-b") == ([("listed-b", 1)], "")
    first, token = await listing(definition_id="listed-a", page_size=2)
    assert first == [("listed-a", 3), ("listed-a", 2)] and token
    assert await listing(definition_id="listed-a", page_size=2, page_token=token) == ([("listed-a", 1)], "")
    assert await listing(definition_id="never-registered") == ([], "")
    # A token belongs to its filter.
    for kw in ({"definition_id": "listed-b", "page_token": token}, {"page_token": token}):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await listing(**kw)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info, _ = rpc_errors.details_of(caught.value)
        assert info is not None and info.reason == "ERROR_REASON_INVALID_PAGE_TOKEN"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await listing(definition_id=">" + uuid.uuid4().hex)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = rpc_errors.details_of(caught.value)
    assert [v.field for v in violations] == ["definition_id"]
