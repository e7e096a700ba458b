"""Errors to ``google.rpc.Status`` and back: what a batch call's per-item results carry."""

from __future__ import annotations

import grpc
import pytest

from cosmos import errors
from cosmos.runtime import rpc_errors

pytestmark = pytest.mark.unit


def test_an_error_survives_the_round_trip_through_its_status() -> None:
    error = errors.InvalidArgumentError(
        "invalid encode: profiles[1]: unknown",
        reason=errors.Reason.ERROR_REASON_UNKNOWN_PROFILE,
        metadata={"encode_id": "enc-1"},
        violations=[errors.FieldViolation("profiles[1]", "unknown profile '4k'")],
    )
    status = rpc_errors.status_proto(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    back = rpc_errors.from_status(status)
    assert type(back) is errors.InvalidArgumentError
    assert (back.code, back.message, back.reason) == (error.code, error.message, error.reason)
    assert back.metadata == {"encode_id": "enc-1"}
    assert back.violations == error.violations


def test_each_code_comes_back_as_its_error_class() -> None:
    for cls in (
        errors.NotFoundError,
        errors.AlreadyExistsError,
        errors.UnavailableError,
        errors.AbortedError,
    ):
        back = rpc_errors.from_status(rpc_errors.status_proto(cls("x")))
        assert type(back) is cls and back.code == cls.code


def test_a_code_without_a_class_keeps_its_code() -> None:
    error = errors.RpcError("deadline")
    error.code = grpc.StatusCode.DEADLINE_EXCEEDED
    back = rpc_errors.from_status(rpc_errors.status_proto(error))
    assert back.code == grpc.StatusCode.DEADLINE_EXCEEDED and back.message == "deadline"
    assert back.reason == "ERROR_REASON_UNSPECIFIED"


def test_an_error_class_names_its_status_code_and_an_instance_may_carry_another() -> None:
    assert errors.NotFoundError.code == grpc.StatusCode.NOT_FOUND
    received = errors.RpcError("from a newer server")
    received.code = grpc.StatusCode.DATA_LOSS
    assert received.code == grpc.StatusCode.DATA_LOSS
    assert errors.RpcError("another").code == grpc.StatusCode.INTERNAL
