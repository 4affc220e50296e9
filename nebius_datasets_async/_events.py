"""One event stream: every decision and outcome on the request path, in one small vocabulary.

Subscribers are plain callables taking one event (``DatasetsClient(observers=[...])`` or
``client.events.subscribe(fn)``). They run synchronously, in the task (or thread) where the
event happened, and must return quickly; an exception from one is logged and swallowed, never
raised into the request. An observer may declare ``interests``, a tuple of event classes it
wants; then it is only called with those, and the request path builds no per-call event while
no subscriber wants one (the cost is then a few attribute checks).

The vocabulary (every class is frozen; times are seconds, ``time.monotonic()`` for instants):

- per call: ``CallStarted`` -> (``Admitted`` -> ``Sent`` -> ``Answered`` | ``Failed``,
  then ``Throttled`` / ``Retrying`` between attempts)* -> ``CallEnded``;
- from the gate (the flow control): ``PaceChanged``, ``Paused``, ``BudgetSpent``;
- per bulk run: ``RunStarted`` -> ``RunProgress``* -> ``RunFinished``.

``docs/observability.md`` describes every field and where each event is emitted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote

import attrs

from ._exceptions import InvalidArgumentError

__all__ = [
    "Admitted",
    "Answered",
    "BudgetSpent",
    "BulkProgress",
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
    "Retrying",
    "RunFinished",
    "RunInfo",
    "RunProgress",
    "RunStarted",
    "Sent",
    "Throttled",
]

logger = logging.getLogger("nebius_datasets_async")

_DATASETS = "/v1/datasets/"


# -- what the events are about ------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)
class RunInfo:
    """One bulk run; the same object in every event of the run and of its calls."""

    #: Workers of the run.
    concurrency: int
    #: When the run started (``time.monotonic()``).
    started: float


@attrs.frozen(kw_only=True, eq=False)
class CallInfo:
    """One call (a single request and its retries); the same object in all its events."""

    #: ``"PATCH"`` or ``"GET"``.
    method: str
    #: The percent-encoded path, ``/v1/datasets/{id}`` (the base URL is the client's).
    path: str
    #: When the call started (``time.monotonic()``).
    started: float
    #: The bulk run this call belongs to, if any.
    run: RunInfo | None = None

    @property
    def dataset_id(self) -> str:
        """The dataset id, decoded from the path."""
        return unquote(self.path.removeprefix(_DATASETS))


@attrs.frozen(kw_only=True)
class BulkProgress:
    """A snapshot of a run's counters, for a progress bar or a metrics exporter."""

    read: int
    succeeded: int
    failed: int
    skipped: int
    in_flight: int
    requests: int
    retries: int
    throttled: int
    elapsed: float
    #: The client's paced rate (requests per second), ``None`` while unpaced.
    rate_limit: float | None
    #: The client's working concurrency cap.
    concurrency_limit: int
    #: Whether the client's flow control is pausing every request right now.
    paused: bool
    finished: bool

    @property
    def done(self) -> int:
        """Updates with an outcome."""
        return self.succeeded + self.failed + self.skipped

    @property
    def throughput(self) -> float:
        """Outcomes per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


# -- the events ---------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class CallStarted:
    """A call began (before it waits for the gate)."""

    call: CallInfo


@attrs.frozen(slots=True)
class Admitted:
    """The gate let attempt ``attempt`` (1 for the first) go: ``waited_place`` seconds waiting
    for a place (the concurrency bound), ``waited_slot`` for a pacing slot or a pause.
    """

    call: CallInfo
    attempt: int
    waited_place: float
    waited_slot: float

    @property
    def waited(self) -> float:
        """Seconds this attempt waited in the gate, in all."""
        return self.waited_place + self.waited_slot


@attrs.frozen(slots=True)
class Sent:
    """Attempt ``attempt`` is being sent. ``headers`` starts empty; an observer may add
    headers to send with this attempt (a trace context, say). They never replace the
    client's own headers (``Authorization``, ``Content-Type``, ...).
    """

    call: CallInfo
    attempt: int
    headers: MutableMapping[str, str]


@attrs.frozen(slots=True)
class Answered:
    """Attempt ``attempt`` got an HTTP answer (any status) after ``latency`` seconds."""

    call: CallInfo
    attempt: int
    status: int
    latency: float
    request_id: str | None


@attrs.frozen(slots=True)
class Failed:
    """Attempt ``attempt`` got no usable answer: ``reason`` is ``"error"`` (a connection error
    or a 5xx), ``"timeout"`` or ``"overload"`` (a 503 from a busy server); ``status`` is the
    HTTP status when there was one. ``error`` is the library exception.
    """

    call: CallInfo
    attempt: int
    reason: str
    status: int | None
    latency: float
    error: Exception


@attrs.frozen(slots=True)
class Throttled:
    """Attempt ``attempt`` was throttled (a 429, or a 503 with ``Retry-After``)."""

    call: CallInfo
    attempt: int
    status: int
    retry_after: float | None


@attrs.frozen(slots=True)
class Retrying:
    """The call will try again in ``delay`` seconds, after ``attempt`` failed with ``error``."""

    call: CallInfo
    attempt: int
    delay: float
    error: Exception


@attrs.frozen(slots=True)
class CallEnded:
    """The call ended after ``attempts`` attempts: ``error`` is ``None`` on success, the
    exception it raises otherwise (``cancelled`` when the task was cancelled); ``waited`` is
    the time all its attempts spent in the gate, ``duration`` the whole call's.
    """

    call: CallInfo
    attempts: int
    duration: float
    waited: float
    status: int | None
    error: BaseException | None
    cancelled: bool = False


@attrs.frozen(slots=True)
class PaceChanged:
    """The gate's pace changed for real: a new phase, a cut, or a rise of a quarter or more
    since the last report (not every small probing step).

    ``phase``: ``"unpaced"``, ``"searching"``, ``"measured"``, ``"headers"`` or ``"shared"``
    (a fleet's pace read from Redis); ``rate`` and ``previous`` in requests per second (``None``
    while unpaced); ``reason``: ``"throttle"``, ``"retry-after"``, ``"overload"``, ``"probe"``,
    ``"search"``, ``"headers"`` or ``"shared"``; ``concurrency``: the working concurrency cap.
    What each phase means: ``docs/flow-control.md``.
    """

    phase: str
    rate: float | None
    previous: float | None
    reason: str
    concurrency: int


@attrs.frozen(slots=True)
class Paused:
    """The gate holds every request for ``duration`` seconds (until ``until``, a
    ``time.monotonic()`` value). ``reason``: ``"retry-after"`` (a 503 with ``Retry-After``, or
    a 429 with one longer than a second), ``"refused"`` (a run of throttles with no success:
    the server refuses everything) or ``"quota"`` (the quota headers say nothing is left).
    """

    until: float
    duration: float
    reason: str


@attrs.frozen(slots=True)
class BudgetSpent:
    """A retry asked the retry budget for ``cost`` tokens: ``granted`` or refused (then the
    failure is not retried); ``left`` is what remains. ``failure``: ``"error"``, ``"timeout"``
    or ``"overload"``.
    """

    cost: float
    left: float
    granted: bool
    failure: str


@attrs.frozen(slots=True)
class RunStarted:
    """A bulk run started."""

    run: RunInfo


@attrs.frozen(slots=True)
class RunProgress:
    """A bulk run's counters, at most every ``BulkOptions.progress_interval`` seconds."""

    run: RunInfo
    progress: BulkProgress


@attrs.frozen(slots=True)
class RunFinished:
    """A bulk run ended (``progress.finished``); ``error`` is what ended it early, if any."""

    run: RunInfo
    progress: BulkProgress
    error: BaseException | None = None


Event = (
    CallStarted
    | Admitted
    | Sent
    | Answered
    | Failed
    | Throttled
    | Retrying
    | CallEnded
    | PaceChanged
    | Paused
    | BudgetSpent
    | RunStarted
    | RunProgress
    | RunFinished
)

#: The events built for every call and attempt: only built when a subscriber wants one.
CALL_EVENTS: tuple[type[Any], ...] = (CallStarted, Admitted, Sent, Answered, CallEnded)
ALL_EVENTS: tuple[type[Any], ...] = (
    *CALL_EVENTS,
    Failed,
    Throttled,
    Retrying,
    PaceChanged,
    Paused,
    BudgetSpent,
    RunStarted,
    RunProgress,
    RunFinished,
)


@runtime_checkable
class Observer(Protocol):
    """A subscriber: called with each event. An optional ``interests`` attribute (a tuple of
    event classes) limits the events it is called with.
    """

    def __call__(self, event: Any, /) -> None: ...


def _interests(observer: Callable[[Any], None]) -> frozenset[type[Any]]:
    wanted = getattr(observer, "interests", None)
    if wanted is None:
        return frozenset(ALL_EVENTS)
    return frozenset(wanted)


class Events:
    """The subscribers of one client (or one bulk run): ``emit`` calls each that wants the
    event. ``calls`` says whether any wants the per-call events (``CALL_EVENTS``), ``active``
    whether there is any subscriber at all: the request path checks these before building an
    event. Thread-safe: subscribing from any thread replaces the tuple read by ``emit``.
    """

    __slots__ = ("_by_type", "_lock", "_observers", "active", "calls")

    def __init__(self, observers: Iterable[Callable[[Any], None]] = ()) -> None:
        self._lock = threading.Lock()
        self._observers: tuple[Callable[[Any], None], ...] = ()
        self._by_type: dict[type[Any], tuple[Callable[[Any], None], ...]] = {}
        self.active = False
        self.calls = False
        for observer in observers:
            self.subscribe(observer)

    def __repr__(self) -> str:
        return f"<Events subscribers={len(self._observers)}>"

    def __len__(self) -> int:
        return len(self._observers)

    @property
    def observers(self) -> tuple[Callable[[Any], None], ...]:
        """The subscribers, in the order they subscribed."""
        return self._observers

    def subscribe(self, observer: Callable[[Any], None]) -> None:
        """Call ``observer`` with every event it is interested in from now on."""
        if not callable(observer):
            raise InvalidArgumentError(f"an observer must be callable: {observer!r}")
        with self._lock:
            self._update((*self._observers, observer))

    def unsubscribe(self, observer: Callable[[Any], None]) -> None:
        """Stop calling ``observer`` (no error if it was not subscribed)."""
        with self._lock:
            self._update(tuple(o for o in self._observers if o != observer))

    def _update(self, observers: tuple[Callable[[Any], None], ...]) -> None:
        wanted = {o: _interests(o) for o in observers}
        self._by_type = {
            kind: tuple(o for o in observers if kind in wanted[o]) for kind in ALL_EVENTS
        }
        self._observers = observers
        self.active = bool(observers)
        self.calls = any(wanted[o] & set(CALL_EVENTS) for o in observers)

    def emit(self, event: Any) -> None:
        """Hand ``event`` to every subscriber that wants it; an observer's exception is logged
        and swallowed.
        """
        for observer in self._by_type.get(type(event), ()):
            try:
                observer(event)
            except Exception:
                logger.exception("observer %r failed on %s", observer, type(event).__name__)


class LoggingObserver:
    """The library's log lines, as a subscriber (every client has one): retries and pauses at
    INFO, pace changes at DEBUG, a refused retry budget at WARNING, on the
    ``nebius_datasets_async`` logger.
    """

    interests = (Retrying, Paused, PaceChanged, BudgetSpent, RunFinished)

    def __init__(self, log: logging.Logger = logger) -> None:
        self.log = log

    def __repr__(self) -> str:
        return "<LoggingObserver>"

    def __call__(self, event: Any) -> None:
        log = self.log
        if isinstance(event, Retrying):
            if log.isEnabledFor(logging.INFO):
                call = event.call
                log.info(
                    "retrying %s %s in %.2fs after attempt %d: %s",
                    call.method,
                    call.path,
                    event.delay,
                    event.attempt,
                    event.error,
                )
        elif isinstance(event, Paused):
            log.info("pausing every request for %.2fs (%s)", event.duration, event.reason)
        elif isinstance(event, PaceChanged):
            rate = "unpaced" if event.rate is None else f"{event.rate:.1f}/s"
            log.debug("pace %s (%s, %s)", rate, event.phase, event.reason)
        elif isinstance(event, BudgetSpent):
            if not event.granted:
                log.warning(
                    "retry budget spent (%.0f tokens left): a %s is not retried",
                    event.left,
                    event.failure,
                )
        elif isinstance(event, RunFinished):
            p = event.progress
            log.debug(
                "bulk run finished: %d applied, %d failed, %d skipped, %d requests in %.2fs",
                p.succeeded,
                p.failed,
                p.skipped,
                p.requests,
                p.elapsed,
            )
