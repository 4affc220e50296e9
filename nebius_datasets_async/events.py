"""The client's event stream, for observers: every decision and outcome on the request path.

Subscribe with ``DatasetsClient(observers=[fn])`` or ``client.events.subscribe(fn)``; ``fn`` is
called with each event (one of the classes below). ``nebius_datasets_async.otel`` is a
subscriber that turns them into OpenTelemetry spans and metrics; ``LoggingObserver`` is the
one behind the library's log lines. ``docs/observability.md`` describes every event, its fields
and where it is emitted.
"""

from ._bulk import ProgressReporter
from ._events import (
    Admitted,
    Answered,
    BudgetSpent,
    CallEnded,
    CallInfo,
    CallStarted,
    Event,
    Events,
    Failed,
    LoggingObserver,
    Observer,
    PaceChanged,
    Paused,
    Retrying,
    RunFinished,
    RunInfo,
    RunProgress,
    RunStarted,
    Sent,
    Throttled,
)

__all__ = [
    "Admitted",
    "Answered",
    "BudgetSpent",
    "CallEnded",
    "CallInfo",
    "CallStarted",
    "Event",
    "Events",
    "Failed",
    "LoggingObserver",
    "Observer",
    "PaceChanged",
    "Paused",
    "ProgressReporter",
    "Retrying",
    "RunFinished",
    "RunInfo",
    "RunProgress",
    "RunStarted",
    "Sent",
    "Throttled",
]
