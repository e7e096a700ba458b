"""The limits every request is checked against (:mod:`cosmos.runtime.validation` applies them).

Charsets and lengths of ids, names and keys; sizes of strings, bytes, repeated fields, maps, Structs
and requests; number ranges; YAML. Per-field rules are keyed by the field's full proto name; a field
not listed gets the rule of its name (:func:`rule_for`). The same limits are documented in the proto
comments (``cosmos/common/v1/errors.proto``) and in docs/architecture.md, "Request limits".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf import descriptor

FD = descriptor.FieldDescriptor

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_=-]{0,127}\Z")
"""Ids that become one NATS subject token or KV key (workflow, job, encode ids): letters, digits,
``_ = -``, at most 128, never ``. * >`` or spaces."""
NAME_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
"""Ids used as KV keys only (agent, definition ids, tenants): letters, digits, ``. _ -``, at most 128."""
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,256}\Z")
"""Request ids and step ids (``wf-1/work[0]/2:cancel``): printable ASCII without spaces, at most 256;
they become ``Nats-Msg-Id`` headers, never subjects."""
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}\Z")
"""Environment variable names."""
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

MAX_NAME = 256
"""Names and other one-line strings (display names, signal names, labels): characters."""
MAX_TEXT = 4096
"""Free text (reasons, error messages): characters."""
MAX_STRING = 4096
"""Any other string field: characters."""
MAX_BYTES = 4096
"""Any bytes field (task tokens): bytes."""
MAX_ITEMS = 1000
"""Items of a repeated field or entries of a map unless the field says otherwise."""
MAX_STRUCT_DEPTH = 32
"""Nesting of a ``Struct``/``Value`` (objects and lists inside each other)."""
MAX_STRUCT_BYTES = 1024 * 1024 - 16 * 1024
"""Serialized size of one ``Struct`` (workflow input, step output, signal payload): what one value
may be in Plato with NATS's default ``max_payload`` (``cosmos.protocol.limits.DEFAULT_MAX_VALUE_BYTES``;
a server with a smaller ``max_payload`` is checked against that too, by Plato)."""
MAX_REQUEST_BYTES = 1024 * 1024
"""Serialized size of one request unless its method says otherwise."""
MAX_DURATION_SECONDS = 10 * 365 * 24 * 3600
"""Longest duration a request may carry (ten years)."""
MAX_TIMESTAMP_SECONDS = 253402300799
"""9999-12-31T23:59:59Z, the last instant ``google.protobuf.Timestamp`` allows."""


@dataclass(frozen=True)
class Rule:
    """What one field may hold (beyond the defaults above)."""

    pattern: re.Pattern[str] | None = None
    """Charset and length of a string (or of each item / map value)."""
    what: str = ""
    """The pattern in words, for the error."""
    max_len: int = MAX_STRING
    """Characters of a string, bytes of a bytes field, bytes of a Struct."""
    max_items: int = MAX_ITEMS
    """Items of a repeated field, entries of a map."""
    key: re.Pattern[str] | None = None
    """Charset of a map's keys (default: a name without control characters)."""
    multiline: bool = False
    """Tabs and newlines allowed (other control characters never are)."""
    low: float | None = None
    """Smallest number allowed."""
    high: float | None = None
    """Largest number allowed."""
    total: int = 0
    """Bytes of all items (or keys and values) of a repeated field or map together; 0: no limit."""


_ID_RULE = Rule(ID, "letters, digits, _ = - (at most 128; no . * > or spaces)", 128)
_NAME_ID_RULE = Rule(NAME_ID, "letters, digits, . _ - (at most 128)", 128)
_REQUEST_ID_RULE = Rule(REQUEST_ID, "printable ASCII without spaces (at most 256)", 256)
_NAME_RULE = Rule(max_len=MAX_NAME)
_TEXT_RULE = Rule(max_len=MAX_TEXT, multiline=True)
_PERCENT = Rule(low=0.0, high=100.0)
_NON_NEGATIVE = Rule(low=0.0)

RULES: dict[str, Rule] = {
    # Plato
    "cosmos.plato.v1.RegisterDefinitionRequest.source_yaml": Rule(max_len=256 * 1024, multiline=True),
    "cosmos.plato.v1.GetDefinitionRequest.definition_id": _NAME_ID_RULE,
    "cosmos.plato.v1.ListDefinitionsRequest.definition_id": _NAME_ID_RULE,
    "cosmos.plato.v1.StartWorkflowRequest.definition_id": _NAME_ID_RULE,
    "cosmos.plato.v1.ListWorkflowsRequest.definition_id": _NAME_ID_RULE,
    "cosmos.plato.v1.StartWorkflowsEntry.trace_context": Rule(max_len=MAX_NAME, max_items=8),
    "cosmos.plato.v1.CompleteStepRequest.step_id": _REQUEST_ID_RULE,
    "cosmos.plato.v1.FailStepRequest.step_id": _REQUEST_ID_RULE,
    "cosmos.plato.v1.HeartbeatStepRequest.step_id": _REQUEST_ID_RULE,
    "cosmos.plato.v1.FailStepRequest.error": _TEXT_RULE,
    "cosmos.plato.v1.SignalWorkflowRequest.signal_name": Rule(
        re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z"), "letters, digits, . _ - (at most 128)", 128
    ),
    "cosmos.plato.v1.ResetWorkflowRequest.step_name": Rule(
        re.compile(r"[a-z0-9][a-z0-9_-]{0,127}\Z"), "a step name: a-z, 0-9, _ - (at most 128)", 128
    ),
    # Stratum
    # A CSR is PEM: lines of base64; a P-256 one is under 1 KiB, an RSA-4096 one under 4 KiB.
    "cosmos.stratum.v1.JoinAgentRequest.csr_pem": Rule(max_len=16 * 1024, multiline=True),
    "cosmos.stratum.v1.RenewAgentCertificateRequest.csr_pem": Rule(max_len=16 * 1024, multiline=True),
    "cosmos.stratum.v1.JobSpec.argv": Rule(
        max_len=32 * 1024, max_items=4096, multiline=True, total=128 * 1024
    ),
    "cosmos.stratum.v1.JobSpec.env": Rule(
        key=ENV_NAME, max_len=32 * 1024, max_items=1000, multiline=True, total=128 * 1024
    ),
    "cosmos.stratum.v1.JobSpec.secrets": Rule(
        key=ENV_NAME, max_len=32 * 1024, max_items=100, multiline=True, total=64 * 1024
    ),
    "cosmos.stratum.v1.JobSpec.labels": Rule(max_len=MAX_NAME, max_items=64),
    "cosmos.stratum.v1.JobSpec.inputs": Rule(max_items=256),
    "cosmos.stratum.v1.JobSpec.outputs": Rule(max_items=256),
    "cosmos.stratum.v1.JobSpec.tenant": Rule(
        re.compile(r"(|" + NAME_ID.pattern + r")"), "a tenant name", 128
    ),
    "cosmos.stratum.v1.JobSpec.idempotency_key": _REQUEST_ID_RULE,
    "cosmos.stratum.v1.JobSpec.display_name": _NAME_RULE,
    "cosmos.stratum.v1.JobSpec.image": _NAME_RULE,
    "cosmos.stratum.v1.JobSpec.runtime": _NAME_RULE,
    "cosmos.stratum.v1.ListJobsRequest.tenant": Rule(
        re.compile(r"(|" + NAME_ID.pattern + r")"), "a tenant name", 128
    ),
    "cosmos.stratum.v1.ListJobsRequest.agent_id": _NAME_ID_RULE,
    "cosmos.stratum.v1.GetAgentRequest.agent_id": _NAME_ID_RULE,
    "cosmos.stratum.v1.CordonAgentRequest.agent_id": _NAME_ID_RULE,
    "cosmos.stratum.v1.UncordonAgentRequest.agent_id": _NAME_ID_RULE,
    "cosmos.stratum.v1.DrainAgentRequest.agent_id": _NAME_ID_RULE,
    "cosmos.stratum.v1.RevokeAgentRequest.agent_id": _NAME_ID_RULE,
    "cosmos.common.v1.GpuRequest.models": Rule(max_len=64, max_items=32),
    "cosmos.common.v1.GpuRequest.share": Rule(low=0.0, high=1.0),
    "cosmos.common.v1.RetryPolicy.multiplier": Rule(low=0.0, high=1000.0),
    "cosmos.common.v1.RetryPolicy.jitter": Rule(low=0.0, high=1.0),
    "cosmos.common.v1.Progress.percent": _PERCENT,
    "cosmos.common.v1.Progress.fps": _NON_NEGATIVE,
    "cosmos.common.v1.Progress.speed": _NON_NEGATIVE,
    "cosmos.common.v1.Progress.frames": _NON_NEGATIVE,
    "cosmos.common.v1.Progress.message": _NAME_RULE,
    "cosmos.common.v1.ResourceUsage.cpu_seconds": _NON_NEGATIVE,
    # Optimus
    "cosmos.optimus.v1.SubmitEncodeRequest.profiles": Rule(max_len=64, max_items=64),
    "cosmos.optimus.v1.SubmitEncodeRequest.ladder": Rule(max_len=64),
}
"""Field rules by full field name; a field not listed gets the rule of its name (:func:`rule_for`)."""

METHOD_MAX_BYTES: dict[str, int] = {
    "/cosmos.plato.v1.WorkflowService/StartWorkflows": 16 * 1024 * 1024,
}
"""Serialized request size per method where :data:`MAX_REQUEST_BYTES` does not fit."""


def rule_for(field: descriptor.FieldDescriptor) -> Rule:
    """The rule of ``field``: listed in :data:`RULES`, else by its name (``request_id``, ``*_id``,
    ``reason``, ``*_name``, ``page_token``), else the defaults."""
    found = RULES.get(field.full_name)
    if found is not None:
        return found
    name = field.name
    if name in ("request_id", "idempotency_key"):
        return _REQUEST_ID_RULE
    if name.endswith("_id") and field.type == FD.TYPE_STRING:
        return _ID_RULE
    if name in ("reason", "error", "description"):
        return _TEXT_RULE
    if name.endswith("name") or name == "page_token":
        return Rule(max_len=MAX_TEXT if name == "page_token" else MAX_NAME)
    return Rule()


MAX_YAML_BYTES = 256 * 1024
"""Size of a YAML document (a workflow definition)."""
MAX_YAML_DEPTH = 64
"""Nesting of mappings and sequences in a YAML document."""
MAX_YAML_NODES = 100_000
"""Nodes of a YAML document with every alias expanded (a "billion laughs" document is refused)."""
