"""The heart of Stratum: jobs from submission to result, across agents that come and go.

One dispatcher per Stratum process owns every live job in memory and persists each state change
(job record in KV, event in the job's stream) before telling anyone. Placement is delegated to the
scheduler (:mod:`cosmos.stratum.placement`). Attempts fence everything an agent reports: a message
about an attempt that is not the job's current one is refused and the agent told to kill it.

:class:`Dispatcher` is put together from its parts, each a class over the shared state:

- :mod:`.core`: ``DispatcherCore``, the settings (``DispatcherConfig``), the live jobs and agent
  outboxes, storing and announcing a state change, the messages to agents; the job states
  (``TERMINAL``, ``ON_AGENT``) and limits (``MAX_JOB_BYTES``, ``DEFAULT_INFRA_ATTEMPTS``).
- :mod:`.submission`: submit (validate, deduplicate, seal secrets), get, cancel.
- :mod:`.recovery`: the live jobs rebuilt after a (re)start or a leader change; an agent's attempts
  requeued when it is lost, does not reconnect in time or is revoked.
- :mod:`.reports`: an agent's hello reconciled, its reports (started, progress, logs, result).
- :mod:`.placing`: the placement pass (queue, placement, assignment, unplaceable jobs failed).
"""

from __future__ import annotations

from cosmos.stratum.dispatcher.core import ON_AGENT, TERMINAL, DispatcherConfig
from cosmos.stratum.dispatcher.placing import PlacementPass
from cosmos.stratum.dispatcher.reports import AgentReports
from cosmos.stratum.dispatcher.submission import Submission

__all__ = ["ON_AGENT", "TERMINAL", "Dispatcher", "DispatcherConfig"]


class Dispatcher(Submission, AgentReports, PlacementPass):
    """Jobs, queue and agent connections of one Stratum process."""
