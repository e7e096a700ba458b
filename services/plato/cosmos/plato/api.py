"""Plato's gRPC API: WorkflowService (definitions, workflows, history, watch) and StepService.

Every mutation is a durable JetStream publish to the workflow's inbox, de-duplicated by a message id
derived from the request; the evaluator applies it. Reads come from the workflow state (header, step
records, blobs: :mod:`cosmos.plato.records`) and the events stream.

This module is the entry point (:class:`WorkflowApi`, :class:`StepApi`, what the server serves); the
RPCs are in one module per group:

* :mod:`.api_common` — request checks, the not-found error, and :class:`~.api_common.WorkflowRpcs`
  (the store, and a workflow read as its caller may see it), the base of each group below;
* :mod:`.api_definitions` — RegisterDefinition, GetDefinition, ListDefinitions;
* :mod:`.api_starts` — StartWorkflow, StartWorkflows;
* :mod:`.api_workflows` — GetWorkflow, ListWorkflows, CancelWorkflow, SignalWorkflow;
* :mod:`.api_resume` — RetryWorkflow, ResetWorkflow;
* :mod:`.api_history` — ListWorkflowEvents, WatchWorkflow;
* :mod:`.api_steps` — StepService (:class:`StepApi`): CompleteStep, FailStep, HeartbeatStep.
"""

from __future__ import annotations

from cosmos.plato.api_definitions import DefinitionRpcs
from cosmos.plato.api_history import HistoryRpcs
from cosmos.plato.api_resume import ResumeRpcs
from cosmos.plato.api_starts import StartRpcs
from cosmos.plato.api_steps import StepApi
from cosmos.plato.api_workflows import ReadAndControlRpcs

__all__ = ["StepApi", "WorkflowApi"]


class WorkflowApi(DefinitionRpcs, StartRpcs, ReadAndControlRpcs, ResumeRpcs, HistoryRpcs):
    """``cosmos.plato.v1.WorkflowService``: every group of its RPCs over one store (constructed as
    :class:`~cosmos.plato.api_common.WorkflowRpcs`)."""
