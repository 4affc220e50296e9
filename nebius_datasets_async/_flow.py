"""The gate every request passes: the flow-control law plus the parts that wait.

One ``FlowControl`` serves a whole client (or several clients that share one), across every
task, event loop and thread. It composes small parts:

- the law (``_law.Law``): how fast, how many at once, when everyone waits; a pure state
  machine on the gate's clock. ``docs/flow-control.md`` describes it, this gate and the retry
  loop once; docstrings here say only what a caller needs;
- one FIFO queue of waiting callers, each woken in its own event loop from whichever thread
  frees its turn; the caller at its head waits for a place (the concurrency cap), for the end
  of a hold, for the quota, and for its pacing slot; nothing is booked ahead, so a caller that
  leaves (deadline, cancellation) holds nothing and a change of pace applies at once;
- the retry budget (``_law.RetryBudget``).
"""

from __future__ import annotations

import asyncio
import enum
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs

from ._events import BudgetSpent, Events, PaceChanged, Paused
from ._exceptions import APITimeoutError, DatasetsError, RateLimitError
from ._law import BUSY_CUT, INITIAL_CAP, MIN_RATE, PROBE, Law, Phase, Refusal, RetryBudget
from ._protocol import RateLimits
from ._validate import check

__all__ = ["Failure", "Flow", "FlowControl", "FlowState", "Ticket", "retry_cost"]


class Failure(enum.Enum):
    """Why an admitted request got no usable answer."""

    #: A connection error or a 5xx: the server may be down.
    ERROR = "error"
    #: No answer within the timeout.
    TIMEOUT = "timeout"
    #: A 503 without ``Retry-After``: the server is busy (or down, if nothing succeeds).
    OVERLOAD = "overload"


def retry_cost(failure: Failure) -> float:
    """Tokens a retry after this failure takes from the retry budget: 10 after a timeout
    (the costliest to wait for), 5 otherwise.
    """
    return 10.0 if failure is Failure.TIMEOUT else 5.0


_RECENT_SUCCESS = 2.0  # seconds: an overload is not an outage if a success came this recently
_REPORT_RISE = 1.25  # a rise of the pace this large (since the last report) is a PaceChanged
# the law's phases and holds as the events name them (docs/observability.md)
_PHASE_NAMES = {
    Phase.OPEN: "unpaced",
    Phase.MEASURING: "measured",
    Phase.SEARCHING: "searching",
    Phase.HOLDING: "measured",
    Phase.HEADERS: "headers",
}
_HOLD_NAMES = {
    "blocked": "refused",
    "first contact": "refused",
    "window": "refused",
    "retry-after": "retry-after",
}


@attrs.frozen(slots=True)
class Ticket:
    """An admitted request. Report how it ended exactly once: ``on_answer``, ``on_throttle``,
    ``on_failure`` or ``cancel``.

    ``epoch`` counts the flow's decisions before it was admitted; ``admitted_at`` is the
    flow's clock when it left; ``waited_place``: seconds it waited for a place (its turn in
    the queue and the concurrency bound); ``waited_slot``: for a pacing slot, the quota or
    the end of a hold.
    """

    epoch: int
    admitted_at: float
    waited_place: float = attrs.field(default=0.0, kw_only=True)
    waited_slot: float = attrs.field(default=0.0, kw_only=True)


@attrs.frozen(kw_only=True)
class FlowState:
    """A snapshot of a flow control, for progress displays and metrics."""

    #: Requests admitted and not yet reported.
    in_flight: int
    #: Callers waiting for a place, a hold's end, the quota or a pacing slot.
    waiting: int
    #: The working concurrency cap (at most ``max_concurrency``).
    concurrency: int
    max_concurrency: int
    #: The pace in force in requests per second, or ``None`` while unpaced.
    rate: float | None
    #: Seconds until a hold ends (0 when not held).
    paused_for: float
    #: Tokens left in the retry budget (``inf`` when unlimited).
    budget: float
    requests: int
    throttles: int
    overloads: int
    failures: int
    #: Times the pace or the cap was cut.
    cuts: int
    #: Where the pace comes from: ``"none"``, ``"measured"``, ``"headers"`` (``"shared"``
    #: for a fleet's flow).
    pacing: str
    #: The law's phase: ``"open"``, ``"measuring"``, ``"searching"``, ``"holding"`` or
    #: ``"headers"`` (``docs/flow-control.md``).
    phase: str = "open"


@runtime_checkable
class Flow(Protocol):
    """What a client needs from a flow control (``FlowControl`` here; a shared one across
    processes implements the same). ``admit`` is the only coroutine; the rest return at once.
    """

    @property
    def max_concurrency(self) -> int: ...

    async def admit(
        self, deadline: float | None = None, *, max_wait: float | None = None
    ) -> Ticket:
        """Wait until a request may be sent. ``deadline`` is a ``time.monotonic()`` value
        after which waiting raises ``APITimeoutError``; a hold for everyone that would last
        longer than ``max_wait`` seconds (or past the deadline) raises ``RateLimitError``
        at once, with ``retry_after`` saying when to try again.
        """
        ...

    def bind(self, identity: str) -> None:
        """Called once by each client that uses this flow, with a fingerprint of its base URL
        and API key (never the key): a flow shared beyond the process keys its state by it.
        """

    def on_answer(self, ticket: Ticket, limits: RateLimits) -> None:
        """The request got an answer that is not a throttle or a server failure."""

    def on_throttle(
        self, ticket: Ticket, retry_after: float | None, limits: RateLimits, *, pause: bool
    ) -> None:
        """The request was throttled (429; ``pause`` for a 503 with ``Retry-After``)."""

    def on_failure(self, ticket: Ticket, failure: Failure) -> None:
        """The request failed with no usable answer."""

    def cancel(self, ticket: Ticket) -> None:
        """The request was admitted but never sent: its place and slot are free at once."""

    def retry_allowed(self, failure: Failure) -> bool:
        """Whether a request that failed this way may be tried again (pays the budget)."""
        ...

    def busy(self) -> bool:
        """Whether the server looks busy rather than down: a request succeeded lately."""
        ...

    def state(self) -> FlowState:
        """The counters and limits right now."""
        ...


class _Waiter:
    """A caller waiting in the queue, in its own event loop."""

    __slots__ = (
        "armed", "deadline", "error", "kick", "loop", "max_wait", "paced", "placed_at",
        "queued_at", "ticket",
    )  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queued_at: float,
        deadline: float | None,
        max_wait: float | None,
        paced: bool,
    ) -> None:
        self.loop = loop
        self.paced = paced
        self.queued_at = queued_at
        self.deadline = deadline
        self.max_wait = max_wait
        self.kick: asyncio.Future[None] | None = None
        self.armed = math.inf  # the time this waiter's own timer wakes it
        self.ticket: Ticket | None = None
        self.error: DatasetsError | None = None
        self.placed_at: float | None = None  # when it had a place and waited only for time


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class FlowControl:
    """The in-process flow control: the law (``docs/flow-control.md``) and the queue that
    waits by it.

    Shared state: one instance may serve any number of clients, tasks, event loops and
    threads; every method is thread-safe. Arguments (keyword-only):

    - ``max_concurrency``: requests admitted at once, at most (also the connection pool size of
      a client that uses it).
    - ``initial_concurrency``: the cap at the start, doubling each round trip (slow start).
    - ``retry_budget``: tokens in the retry budget (``None``: unlimited); a retry costs 5
      (10 after a timeout), an answered request gives 1 back.
    - ``decrease``: the factor the concurrency cap is cut by when a busy server says so.
    - ``probe``: how fast a binding pace first creeps up, as a share of itself per second.
    - ``min_rate``: the slowest pace, in requests per second.
    - ``clock``: a monotonic clock in seconds (``time.monotonic``, the clock of asyncio's
      loops; deadlines use the same). A simulation passes its event loop's ``time``.
    """

    def __init__(
        self,
        *,
        max_concurrency: int = 64,
        initial_concurrency: int = INITIAL_CAP,
        retry_budget: float | None = 500.0,
        decrease: float = BUSY_CUT,
        probe: float = PROBE,
        min_rate: float = MIN_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check(
            isinstance(max_concurrency, int)
            and not isinstance(max_concurrency, bool)
            and max_concurrency >= 1,
            f"max_concurrency must be an int >= 1: {max_concurrency!r}",
        )
        check(
            isinstance(initial_concurrency, int) and initial_concurrency >= 1,
            f"initial_concurrency must be an int >= 1: {initial_concurrency!r}",
        )
        check(
            retry_budget is None or (isinstance(retry_budget, int | float) and retry_budget >= 0),
            f"retry_budget must be a number >= 0 or None: {retry_budget!r}",
        )
        check(
            isinstance(decrease, int | float) and 0 < decrease < 1,
            f"decrease must be between 0 and 1: {decrease!r}",
        )
        check(isinstance(probe, int | float) and probe >= 0, f"probe must be >= 0: {probe!r}")
        check(
            isinstance(min_rate, int | float) and min_rate > 0,
            f"min_rate must be > 0: {min_rate!r}",
        )
        self._max = max_concurrency
        self._clock = clock
        self._lock = threading.Lock()
        self._law = Law(
            max_concurrency=max_concurrency,
            initial_concurrency=initial_concurrency,
            min_rate=float(min_rate),
            probe=float(probe),
            decrease=float(decrease),
            now=clock(),
        )
        self._budget = RetryBudget(retry_budget)
        self._queue: deque[_Waiter] = deque()
        self._active = 0
        self._tat = -math.inf  # the pacing schedule: when the next paced request may leave
        self._step = 0.0  # ... one interval after the last slot, at the pace then
        self._last_ok = -math.inf
        # counters
        self._requests = 0
        self._throttles = 0
        self._overloads = 0
        self._failures = 0
        # events (docs/observability.md): the subscribers and the last pace reported
        self._events = Events()
        self._reported: tuple[str, float | None, int] = ("unpaced", None, int(self._law.cap))

    def __repr__(self) -> str:
        rate = self._law.pace(self._clock())
        pace = "unpaced" if rate is None else f"{rate:.1f}/s"
        return (
            f"<FlowControl max_concurrency={self._max} cap={int(self._law.cap)} "
            f"pace={pace} phase={self._law.phase.value}>"
        )

    @property
    def max_concurrency(self) -> int:
        """The most requests admitted at once."""
        return self._max

    @property
    def law(self) -> Law:
        """The law this gate follows (read it under no lock only for display)."""
        return self._law

    def bind(self, identity: str) -> None:
        """Nothing to do: this flow's state lives in this process."""

    # -- events ------------------------------------------------------------------------------

    def subscribe(self, observer: Callable[[object], None]) -> None:
        """Call ``observer`` with the gate's events (``PaceChanged``, ``Paused``,
        ``BudgetSpent``), outside the flow's lock, from the task that caused them.
        """
        self._events.subscribe(observer)

    def unsubscribe(self, observer: Callable[[object], None]) -> None:
        """Stop calling ``observer``."""
        self._events.unsubscribe(observer)

    def _report(self, now: float, held: float, reason: str) -> list[object]:
        """The gate events a feedback produced: the pace when it changed for real (a new
        phase, a cut, a rise of ``_REPORT_RISE`` since the last report; not every probe step),
        and a hold that began (``held``: when the hold in force before ended). Under the lock.
        """
        law = self._law
        events: list[object] = []
        phase = _PHASE_NAMES[law.phase]
        rate = law.pace(now)
        cap = int(law.cap)
        last_phase, last_rate, last_cap = self._reported
        report = phase != last_phase or cap < last_cap
        if not report and rate is not None and last_rate is not None and rate != last_rate:
            cut = rate < last_rate and reason != "answer"
            report = cut or not (1 / _REPORT_RISE < rate / last_rate < _REPORT_RISE)
        if report:
            if reason == "answer":
                reason = {"headers": "headers", "searching": "search"}.get(phase, "probe")
            self._reported = (phase, rate, cap)
            events.append(PaceChanged(phase, rate, last_rate, reason, cap))
        elif cap > last_cap:
            self._reported = (phase, last_rate, cap)
        wait = law.wait_for_hold(now)
        contact = law.hold.reason == "first contact" and law.hold.until > now
        if wait > 0 and held <= now and not contact:  # (a first contact's round trip is none)
            why = _HOLD_NAMES.get(law.hold.reason, "quota") if law.hold.until > now else "quota"
            events.append(Paused(now + wait, wait, why))
        return events

    def _emit(self, events: list[object]) -> None:
        for event in events:
            self._events.emit(event)

    # -- admission ---------------------------------------------------------------------------

    async def admit(
        self,
        deadline: float | None = None,
        *,
        max_wait: float | None = None,
        paced: bool = True,
    ) -> Ticket:
        """Wait for a place, the end of any hold, the quota and a pacing slot, first come first
        served; return the ticket of the admitted request.

        Raises ``APITimeoutError`` if ``deadline`` (a ``clock()`` value) passes first, and
        ``RateLimitError`` at once when everyone must wait longer than ``max_wait`` seconds
        (or past the deadline). Nothing is held then. ``paced=False`` waits for a place only
        (a flow shared across processes paces through its own schedule).
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            now = self._clock()
            self._check_hold(now, deadline, max_wait)
            if not self._queue and self._ready(now, paced) <= 0:
                return self._grant(now, now, paced)
            waiter = _Waiter(loop, now, deadline, max_wait, paced)
            self._queue.append(waiter)
        try:
            return await self._wait(waiter)
        except BaseException:
            with self._lock:
                if waiter.ticket is not None:
                    self._give_back(waiter.ticket, self._clock())
                elif waiter in self._queue:
                    self._queue.remove(waiter)
                self._dispatch(self._clock())
            raise

    async def _wait(self, waiter: _Waiter) -> Ticket:
        loop = waiter.loop
        while True:
            with self._lock:
                now = self._clock()
                delay = self._dispatch(now)
                if waiter.ticket is not None:
                    return waiter.ticket
                if waiter.error is not None:
                    raise waiter.error
                if waiter.deadline is not None and now >= waiter.deadline:
                    self._queue.remove(waiter)
                    self._dispatch(now)
                    raise APITimeoutError("the deadline passed while waiting to send")
                timeout = math.inf
                if self._queue and self._queue[0] is waiter and delay is not None:
                    timeout = delay
                if waiter.deadline is not None:
                    timeout = min(timeout, waiter.deadline - now)
                kick = waiter.kick = loop.create_future()
                waiter.armed = now + timeout
            handle = loop.call_later(timeout, _resolve, kick) if timeout < math.inf else None
            try:
                await kick
            finally:
                if handle is not None:
                    handle.cancel()

    def _check_hold(self, now: float, deadline: float | None, max_wait: float | None) -> None:
        """Raise at once when everyone must wait past ``max_wait`` or the deadline."""
        wait = self._law.wait_for_hold(now)
        if wait <= 0:
            return
        error = self._hold_error(now, wait, deadline, max_wait)
        if error is not None:
            raise error

    def _hold_error(
        self, now: float, wait: float, deadline: float | None, max_wait: float | None
    ) -> RateLimitError | None:
        # (``max_wait`` bounds the server's waits; a window's rest guessed by the law is its
        # own pacing, bounded like any pacing by the deadline)
        guessed = self._law.hold.reason == "window" and self._law.hold.until > now
        too_long = max_wait is not None and wait > max_wait + 1e-6 and not guessed
        past_deadline = deadline is not None and now + wait > deadline + 1e-6
        if not (too_long or past_deadline):
            return None
        why = "longer than max_retry_after" if too_long else "past the call's deadline"
        reason = self._law.hold.reason or "quota"
        return RateLimitError(
            f"the server asked every request to wait {wait:.1f} s ({reason}), {why}",
            status_code=429,
            detail=f"every request waits {wait:.1f} s ({reason})",
            retry_after=wait,
        )

    def _ready(self, now: float, paced: bool) -> float:
        """Seconds until the head of the queue may leave (0: now; ``inf``: when a place
        frees). Under the lock.
        """
        law = self._law
        if self._active >= int(law.cap):
            return math.inf
        if not paced:
            return 0.0
        wait = law.wait_for_hold(now)
        if wait > 0:
            return wait
        rate = law.pace(now)
        if rate is None:
            return 0.0
        return max(self._slot(1.0 / rate) - now, 0.0)

    def _slot(self, interval: float) -> float:
        """When the next paced request may leave, ``interval`` apart at the pace now. (A pace
        that rose since the last slot brings the next one nearer: a slot booked at a closed
        limit's probe pace, one request a second, kept the search from it waiting that second.)
        """
        if interval > 0.5 * self._step:
            return self._tat
        return self._tat - self._step + interval

    def _grant(
        self, now: float, queued_at: float, paced: bool, placed_at: float | None = None
    ) -> Ticket:
        """Admit one request now. Under the lock."""
        law = self._law
        self._active += 1
        self._requests += 1
        if paced:
            rate = law.pace(now)
            if rate is not None:
                interval = 1.0 / rate
                self._tat = max(self._slot(interval), now - interval) + interval
                self._step = interval
                if now > queued_at:
                    law.bound(now)
            law.sent(now)
        placed = now if placed_at is None else placed_at
        return Ticket(law.cuts, now, waited_place=placed - queued_at, waited_slot=now - placed)

    def _dispatch(self, now: float) -> float | None:
        """Admit waiters from the head of the queue while they may leave; return the seconds
        until the head may (``None``: when a place frees, or nobody waits). Under the lock.
        """
        queue = self._queue
        while queue:
            head = queue[0]
            paced = head.paced
            wait = self._ready(now, paced)
            if wait > 0:
                if wait < math.inf:
                    if head.placed_at is None:
                        head.placed_at = now  # a place is free: it waits for time only
                    if head.armed > now + wait + 1e-9:
                        self._wake(head)  # it must wake sooner than it planned
                return None if wait == math.inf else wait
            queue.popleft()
            head.ticket = self._grant(now, head.queued_at, paced, head.placed_at)
            self._wake(head)
        return None

    def _wake(self, waiter: _Waiter) -> None:
        kick = waiter.kick
        if kick is None:
            return
        try:
            if _running_loop() is waiter.loop:
                _resolve(kick)
            else:
                waiter.loop.call_soon_threadsafe(_resolve, kick)
        except RuntimeError:  # that loop is closed: its caller is gone
            if waiter.ticket is not None:
                self._active -= 1
            elif waiter in self._queue:
                self._queue.remove(waiter)

    def _give_back(self, ticket: Ticket, now: float) -> None:
        """An admitted request that will not be sent: its place and its pacing slot are free
        at once. Under the lock.
        """
        self._active -= 1
        self._requests -= 1
        rate = self._law.pace(now)
        if rate is not None and self._tat > now:
            self._tat = max(self._tat - 1.0 / rate, now)

    def _fail_held(self, now: float) -> None:
        """A hold began: callers who cannot wait that long fail now, saying when to retry."""
        wait = self._law.wait_for_hold(now)
        if wait <= 0:
            return
        for waiter in list(self._queue):
            if not waiter.paced:
                continue  # waits for a place only
            error = self._hold_error(now, wait, waiter.deadline, waiter.max_wait)
            if error is not None:
                self._queue.remove(waiter)
                waiter.error = error
                self._wake(waiter)

    # -- feedback ----------------------------------------------------------------------------

    def on_answer(self, ticket: Ticket, limits: RateLimits) -> None:
        """The request was answered (a success, or an error that is the request's own)."""
        events = None
        with self._lock:
            now = self._clock()
            self._active -= 1
            self._last_ok = now
            law = self._law
            held = now + law.wait_for_hold(now)
            law.answered(now, ticket.admitted_at)
            if limits.remaining is not None:
                law.read_limits(now, limits, self._active)
                self._fail_held(now)  # a quota spent until its reset: who cannot wait fails
            self._budget.refund()
            self._dispatch(now)
            if self._events.active and (law.rate is not None or limits.remaining is not None):
                events = self._report(now, held, "answer")  # event: PaceChanged, Paused
        if events:
            self._emit(events)

    def on_throttle(
        self, ticket: Ticket, retry_after: float | None, limits: RateLimits, *, pause: bool = False
    ) -> None:
        """The request was throttled. ``pause``: the server asked everyone to wait (a 503 with
        ``Retry-After``), not only this request.
        """
        events = None
        with self._lock:
            now = self._clock()
            self._active -= 1
            self._throttles += 1
            law = self._law
            held = now + law.wait_for_hold(now)
            if limits.remaining is not None:
                law.read_limits(now, limits, self._active, refused=True)
            if pause and retry_after is not None:
                law.hold_all(now, retry_after)
            law.refused(now, ticket.admitted_at, Refusal.THROTTLE, retry_after)
            self._fail_held(now)
            self._dispatch(now)
            if self._events.active:  # event: PaceChanged (a cut), Paused
                events = self._report(now, held, "retry-after" if pause else "throttle")
        if events:
            self._emit(events)

    def on_failure(self, ticket: Ticket, failure: Failure) -> None:
        """The request got no usable answer (see ``Failure``)."""
        events = None
        with self._lock:
            now = self._clock()
            self._active -= 1
            if failure is Failure.OVERLOAD:
                self._overloads += 1
                self._law.refused(now, ticket.admitted_at, Refusal.BUSY, None)
            else:
                self._failures += 1
            self._dispatch(now)
            if self._events.active and failure is Failure.OVERLOAD:
                events = self._report(now, math.inf, "overload")  # event: PaceChanged
        if events:
            self._emit(events)

    def cancel(self, ticket: Ticket) -> None:
        """An admitted request was never sent: its place and slot are free at once."""
        with self._lock:
            now = self._clock()
            self._give_back(ticket, now)
            self._dispatch(now)

    def busy(self) -> bool:
        """Whether the server looks busy rather than down: a request succeeded in the last
        two seconds. A retry after an overload is then paced, not paid for.
        """
        with self._lock:
            return self._clock() - self._last_ok < _RECENT_SUCCESS

    def retry_allowed(self, failure: Failure) -> bool:
        """Whether a request that failed this way may be tried again: it pays the budget (10
        tokens after a timeout, 5 otherwise) and is refused when the budget is spent.
        """
        cost = retry_cost(failure)
        with self._lock:
            granted = self._budget.spend(cost)
            left = self._budget.tokens
        if self._events.active:  # event: BudgetSpent
            self._events.emit(BudgetSpent(cost, left, granted, failure.value))
        return granted

    # -- state -------------------------------------------------------------------------------

    def state(self) -> FlowState:
        """The counters and limits right now."""
        with self._lock:
            now = self._clock()
            law = self._law
            rate = law.pace(now)
            if law.phase is Phase.HEADERS:
                pacing = "headers"
            else:
                pacing = "none" if rate is None else "measured"
            return FlowState(
                in_flight=self._active,
                waiting=len(self._queue),
                concurrency=int(law.cap),
                max_concurrency=self._max,
                rate=rate,
                paused_for=law.wait_for_hold(now),
                budget=self._budget.tokens,
                requests=self._requests,
                throttles=self._throttles,
                overloads=self._overloads,
                failures=self._failures,
                cuts=law.cuts,
                pacing=pacing,
                phase=law.phase.value,
            )
