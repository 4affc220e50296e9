"""The gate every request passes: concurrency, pauses, pacing and the retry budget.

One ``FlowControl`` serves a whole client (or several clients that share one), across every
task, event loop and thread. Its state is plain numbers under a ``threading.Lock``, driven by a
clock passed in, so the maths is tested without sleeping; a caller waits in its own event loop
and is woken from whichever thread frees its place.

How it decides (the README says the same for users):

- **Concurrency.** At most ``max_concurrency`` requests are admitted at once; waiting callers
  are served first come, first served. The working cap starts gentle (``initial_concurrency``)
  and grows by one per answer until the first sign of pressure (slow start), then by one per
  cap's worth of answers. An *overload* (a 503 without ``Retry-After`` while other requests
  succeed) cuts it by ``decrease``, at most once per round of requests in flight.
- **Pacing.** Until the server first throttles (429), only concurrency bounds the sends. A
  throttle switches pacing on: requests leave one slot apart (a GCRA schedule, booked in FIFO
  order), at a rate measured while the server is saturated: the successes between two
  throttles, when the server's quota was empty at both, are exactly what it admits.
  Throttles answering requests sent before the last change of rate are one signal, not many;
  throttles under 2% of the last second's answers are noise, not saturation; and the pace
  never falls below half the best rate the server admitted lately, so a server that refuses a
  share of requests at random cannot drive it to nothing.
  The first pace is a quarter of the first (burst-inflated) estimate, doubled every few
  round trips while it holds requests back, until a throttle measures the limit (a search,
  as TCP's slow start). After that, while pacing is what holds requests back, the rate probes
  upward (``probe`` of itself per second, faster the longer no throttle comes), and searches
  again after five quiet seconds, so it follows a limit that rises or capacity that other
  clients free; when pacing is not the bottleneck the rate holds.
- **Retry-After.** Only the throttled request waits its ``Retry-After``; the others keep
  their pace. The whole gate pauses only when the server is refusing everything (a run of
  throttles with no success for a while, as a used-up fixed window does), or for a 503 that
  carries ``Retry-After``.
- **Quota headers.** When answers carry ``x-ratelimit-remaining-requests`` (and a reset time),
  the gate paces by them and does not probe: no throttle is needed to find the limit. A reset
  that counts down with the clock is a fixed window: what remains is spread over the time to
  the reset, and nothing is sent when nothing remains. A reset that stays about constant is a
  quota that refills as it goes (a sliding window): the pace is ``limit`` over the reset.
- **Retry budget.** Retrying a failure costs tokens from a shared budget (botocore's retry
  quota); every answered request gives a little back. When it runs dry, failures are no longer
  retried, so a dead server costs about one request per call. Throttles and overloads while
  other requests succeed are paced, not paid for.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import attrs

from ._events import BudgetSpent, Events, PaceChanged, Paused
from ._exceptions import APITimeoutError, RateLimitError
from ._protocol import RateLimits
from ._validate import check

__all__ = ["Failure", "Flow", "FlowControl", "FlowState", "Ticket"]

# How the measured rate is turned into a pace.
_HEADROOM = 0.97  # pace this far below the measured limit
_MIN_SPAN = 0.05  # seconds: the shortest window that measures what the server admits
_MIN_SPAN_REQUESTS = 8  # ... and at least this many successes' worth of time
_MIN_SPAN_RTTS = 3.0  # ... and this many round trips, so that latency jitter does not count
_WINDOW_SAMPLES = 16  # ... and this many successes' worth of time at the current pace
_OK_HISTORY = 2.0  # seconds of answer times kept for measuring
_SLOW_START_STEP = 0.5  # added to the cap per answer until the first throttle: x1.5 a round trip
_FIRST_WINDOW = 1.0  # seconds of answers the first estimate counts, at most
_NOISE_SAMPLES = 50  # with this many successes in the last second ...
_NOISE_SHARE = 0.02  # ... throttles under this share of them are noise, not saturation
_FIRST_SHARE = 0.25  # the first pace, as a share of the first (burst-inflated) estimate
_SEARCH_DOUBLING = 0.1  # seconds (or two round trips) to double the pace while searching
_SEARCH_AGAIN = 5.0  # seconds without a throttle, the pace binding, before searching again
_MAX_CUT = 0.1  # one cut never takes the rate below this share of the rate in force
_BLOCKED_STREAK = 5  # throttles in a row with no success ...
_BLOCKED_QUIET = 0.1  # ... and no success for this long: the server refuses everything
_PROBE_DOUBLING = 1.0  # seconds without a throttle after which the probe speed doubles
_MAX_PROBE = 0.5  # fastest probe, as a share of the rate per second
_PACED_RECENTLY = 1.0  # seconds since a request last waited for its slot: pacing binds
_RECENT_SUCCESS = 2.0  # seconds: an overload is not an outage if a success came this recently
_PEAK_WINDOW = 0.5  # seconds over which the admitted rate is measured for the floor
_PEAK_HALF_LIFE = 60.0  # seconds: the best admitted rate counts for less as it ages
_FLOOR = 0.5  # the pace never falls below this share of the best admitted rate
_MAX_OVER_PEAK = 4.0  # ... and never grows above this many times it
_REPORT_RISE = 1.25  # a rise of the pace this large (since the last report) is a PaceChanged


class Failure(enum.Enum):
    """Why an admitted request got no usable answer."""

    #: A connection error or a 5xx: the server may be down.
    ERROR = "error"
    #: No answer within the timeout.
    TIMEOUT = "timeout"
    #: A 503 without ``Retry-After`` (or a dropped connection): the server is busy.
    OVERLOAD = "overload"


def retry_cost(failure: Failure) -> float:
    """Tokens a retry after this failure takes from the retry budget: 10 after a timeout
    (the costliest to wait for), 5 otherwise.
    """
    return 10.0 if failure is Failure.TIMEOUT else 5.0


@attrs.frozen(slots=True)
class Ticket:
    """An admitted request. Report how it ended exactly once: ``on_answer``, ``on_throttle``,
    ``on_failure`` or ``cancel``. ``waited_place``: seconds it waited for a place (the
    concurrency bound); ``waited_slot``: for a pacing slot or the end of a pause.
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
    #: Callers waiting for a place or a slot.
    waiting: int
    #: The working concurrency cap (at most ``max_concurrency``).
    concurrency: int
    max_concurrency: int
    #: The paced rate in requests per second, or ``None`` while unpaced.
    rate: float | None
    #: Seconds until a pause ends (0 when not paused).
    paused_for: float
    #: Tokens left in the retry budget (``inf`` when unlimited).
    budget: float
    requests: int
    throttles: int
    overloads: int
    failures: int
    #: Times the rate was cut or the cap cut.
    cuts: int
    #: Where the pace comes from: ``"none"``, ``"measured"`` or ``"headers"``.
    pacing: str


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
        after which waiting raises ``APITimeoutError``; when everyone must wait longer than
        ``max_wait`` seconds (or past the deadline), ``RateLimitError`` is raised at once
        with ``retry_after`` saying when to try again.
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
        """The request was admitted but never sent."""

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
    """A caller waiting for a place, in its own event loop."""

    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FlowControl:
    """The in-process flow control: see the module docstring for what it does.

    Shared state: one instance may serve any number of clients, tasks, event loops and
    threads; every method is thread-safe. Arguments (keyword-only):

    - ``max_concurrency``: requests admitted at once, at most (also the connection pool size of
      a client that uses it).
    - ``initial_concurrency``: the cap at the start, growing with answers (slow start).
    - ``retry_budget``: tokens in the retry budget (``None``: unlimited); a retry costs 5
      (10 after a timeout), an answered request gives 1 back.
    - ``decrease``: the factor the concurrency cap is cut by on an overload.
    - ``probe``: how fast a binding pace creeps up, as a share of itself per second.
    - ``min_rate``: the slowest pace, in requests per second.
    - ``clock`` and ``sleep``: a monotonic clock in seconds (``time.monotonic``; deadlines use
      the same) and the sleep that waits for it, for tests that drive time themselves.
    """

    def __init__(
        self,
        *,
        max_concurrency: int = 64,
        initial_concurrency: int = 8,
        retry_budget: float | None = 500.0,
        decrease: float = 0.7,
        probe: float = 0.02,
        min_rate: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
        self._decrease = float(decrease)
        self._probe = float(probe)
        self._min_rate = float(min_rate)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        now = clock()
        # concurrency
        self._cap = float(min(initial_concurrency, max_concurrency))
        self._slow_start = True
        self._active = 0
        self._waiters: deque[_Waiter] = deque()
        self._pacing_waiters = 0
        self._overload_epoch = -1
        # pacing
        self._rate: float | None = None
        self._next_slot = -math.inf
        self._epoch = 0
        self._last_paced = -math.inf
        self._last_growth = now
        self._hold_until = -math.inf
        # what the server admitted, for measuring its limit
        self._ok_times: deque[float] = deque()
        self._throttle_times: deque[float] = deque()
        self._last_cut = -math.inf
        self._searching = False
        self._first_ok: float | None = None
        self._last_ok = -math.inf
        self._last_throttle = -math.inf
        self._streak = 0
        self._latency = 0.0  # smoothed time from admission to answer
        self._window_start = now
        self._window_oks = 0
        self._peak = 0.0
        self._peak_at = now
        # quota headers
        self._header_rate: float | None = None
        self._header_until = -math.inf
        self._last_reset: tuple[float, float] | None = None
        self._fixed_window = 0  # > 0: the reset counts down (a fixed window); < 0: it refills
        # budget
        self._budget_capacity = math.inf if retry_budget is None else float(retry_budget)
        self._budget = self._budget_capacity
        # counters
        self._requests = 0
        self._throttles = 0
        self._overloads = 0
        self._failures = 0
        self._cuts = 0
        # events (see docs/observability.md): the subscribers and the last pace reported
        self._events = Events()
        self._reported: tuple[str, float | None, int] = ("unpaced", None, int(self._cap))

    def __repr__(self) -> str:
        rate = "unpaced" if self._rate is None else f"{self._rate:.1f}/s"
        return f"<FlowControl max_concurrency={self._max} cap={int(self._cap)} rate={rate}>"

    @property
    def max_concurrency(self) -> int:
        """The most requests admitted at once."""
        return self._max

    # -- events ------------------------------------------------------------------------------

    def subscribe(self, observer: Callable[[object], None]) -> None:
        """Call ``observer`` with the gate's events (``PaceChanged``, ``Paused``,
        ``BudgetSpent``), outside the flow's lock, from the task that caused them.
        """
        self._events.subscribe(observer)

    def unsubscribe(self, observer: Callable[[object], None]) -> None:
        """Stop calling ``observer``."""
        self._events.unsubscribe(observer)

    def _phase(self) -> str:
        """The pacing phase, as events name it. Under the lock."""
        if self._header_rate is not None:
            return "headers"
        if self._rate is None:
            return "unpaced"
        return "searching" if self._searching else "measured"

    def _report(self, now: float, held: float, reason: str) -> list[object]:
        """The gate events a feedback produced: the pace when it changed for real (a new
        phase, a cut, a rise of ``_REPORT_RISE`` since the last report; not every probe step),
        and a pause that began (``held``: when the hold ended before it). Under the lock.
        """
        events: list[object] = []
        phase = self._phase()
        rate = self._header_rate if self._header_rate is not None else self._rate
        cap = int(self._cap)
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
        hold = max(self._hold_until, self._header_until)
        if hold > now and held <= now:
            why = "quota" if self._header_until >= self._hold_until else reason
            events.append(Paused(hold, hold - now, why))
        return events

    def _emit(self, events: list[object]) -> None:
        for event in events:
            self._events.emit(event)

    # -- admission ---------------------------------------------------------------------------

    def bind(self, identity: str) -> None:
        """Nothing to do: this flow's state lives in this process."""

    async def admit(
        self,
        deadline: float | None = None,
        *,
        max_wait: float | None = None,
        paced: bool = True,
    ) -> Ticket:
        """Wait for a place, then for the end of any pause and for a pacing slot; return the
        ticket of the admitted request. Raises ``APITimeoutError`` if ``deadline`` (a
        ``clock()`` value) would pass first, and ``RateLimitError`` at once when everyone
        must wait (a pause, a spent quota) longer than ``max_wait`` seconds or past the
        deadline, with ``retry_after`` saying when to try again. Nothing is held then: a
        caller that leaves gives its place and its pacing slot back at once. ``paced=False``
        waits for the place only (a flow shared across processes paces through its own
        schedule).
        """
        with self._lock:
            self._check_hold(self._clock(), deadline, max_wait)
        waited_place = await self._take_place(deadline)
        placed: float | None = None
        if not paced:
            with self._lock:
                self._requests += 1
                return Ticket(self._epoch, self._clock(), waited_place=waited_place)
        booked = 0.0  # the interval of the slot this caller holds in the schedule (0: none)
        try:
            while True:
                with self._lock:
                    now = self._clock()
                    if placed is None:
                        placed = now
                    self._check_hold(now, deadline, max_wait)
                    wait, epoch, booked = self._book(now)
                    if wait <= 0:
                        self._requests += 1
                        return Ticket(
                            epoch, now, waited_place=waited_place, waited_slot=now - placed
                        )
                    self._pacing_waiters += 1
                if deadline is not None and now + wait > deadline:
                    with self._lock:
                        self._pacing_waiters -= 1
                    raise APITimeoutError("the deadline passed while waiting to send")
                try:
                    await self._sleep(wait)
                finally:
                    with self._lock:
                        self._pacing_waiters -= 1
                with self._lock:
                    now = self._clock()
                    if self._epoch == epoch and now >= max(self._hold_until, self._header_until):
                        self._requests += 1
                        return Ticket(
                            epoch, now, waited_place=waited_place, waited_slot=now - placed
                        )
                    # The pace changed or a pause began while waiting: book again. (The slot
                    # left behind still counts in the schedule, which spaces the requests
                    # after a cut; the law's tuning depends on it, see docs/flow-control.md.)
                    booked = 0.0
        except BaseException:
            with self._lock:
                self._give_back(booked, self._clock())
                self._free_place()
            raise

    def _give_back(self, interval: float, now: float) -> None:
        """A caller leaves the slot it booked: the schedule moves back by one slot, so it
        never runs ahead of the callers still waiting. Under the lock.
        """
        if interval > 0 and self._next_slot > now:
            self._next_slot = max(self._next_slot - interval, now)

    def _check_hold(self, now: float, deadline: float | None, max_wait: float | None) -> None:
        """Raise at once when everyone must wait longer than ``max_wait`` or past the
        deadline: the caller gets the library's error saying when to try again instead of
        hanging. Under the lock.
        """
        wait = max(self._hold_until, self._header_until) - now
        if wait <= 0:
            return
        too_long = max_wait is not None and wait > max_wait
        if not too_long and (deadline is None or now + wait <= deadline):
            return
        why = "longer than max_retry_after" if too_long else "past the call's deadline"
        raise RateLimitError(
            f"every request must wait {wait:.1f} s more (the server's Retry-After or quota), {why}",
            status_code=429,
            detail=f"every request waits {wait:.1f} s",
            retry_after=wait,
        )

    def _book(self, now: float) -> tuple[float, int, float]:
        """Seconds to wait before sending (0: send now), the epoch of that decision, and the
        interval of the pacing slot booked (0: none). Under the lock.
        """
        hold = max(self._hold_until, self._header_until)
        if now < hold:
            return hold - now, self._epoch, 0.0
        rate = self._header_rate if self._header_rate is not None else self._rate
        if rate is None:
            return 0.0, self._epoch, 0.0
        interval = 1.0 / rate
        slot = max(self._next_slot, now - interval)
        self._next_slot = slot + interval
        if slot > now:
            self._last_paced = now
            return slot - now, self._epoch, interval
        return 0.0, self._epoch, interval

    async def _take_place(self, deadline: float | None) -> float:
        """Wait for a place; return the seconds waited (0.0 when one was free)."""
        with self._lock:
            if self._active < int(self._cap) and not self._waiters:
                self._active += 1
                return 0.0
            waiter = _Waiter(asyncio.get_running_loop())
            self._waiters.append(waiter)
        asked = self._clock()
        try:
            if deadline is None:
                await waiter.future
            else:
                timeout = deadline - self._clock()
                if timeout <= 0:
                    raise TimeoutError
                await asyncio.wait_for(waiter.future, timeout)
        except BaseException as exc:
            with self._lock:
                if waiter.granted:
                    self._free_place()  # handed a place we will not use: pass it on
                else:
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise APITimeoutError("the deadline passed while waiting to send") from None
            raise
        return self._clock() - asked

    def _free_place(self) -> None:
        """Give a place back and hand free places to waiters, first come first served. Under
        the lock.
        """
        self._active -= 1
        while self._waiters and self._active < int(self._cap):
            waiter = self._waiters.popleft()
            waiter.granted = True
            self._active += 1
            try:
                if _running_loop() is waiter.loop:
                    _resolve(waiter.future)
                else:
                    waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
            except RuntimeError:  # that loop is closed: its caller is gone
                waiter.granted = False
                self._active -= 1

    # -- feedback ----------------------------------------------------------------------------

    def on_answer(self, ticket: Ticket, limits: RateLimits) -> None:
        """The request was answered (a success, or an error that is the request's own)."""
        events = None
        with self._lock:
            now = self._clock()
            held = max(self._hold_until, self._header_until)
            _append_recent(self._ok_times, now, _OK_HISTORY)
            self._streak = 0
            self._last_ok = now
            self._latency += 0.1 * (now - ticket.admitted_at - self._latency)
            self._window_oks += 1
            if now - self._window_start >= _PEAK_WINDOW:
                self._note_peak(now, self._window_oks / (now - self._window_start))
                self._window_start, self._window_oks = now, 0
            if self._first_ok is None:
                self._first_ok = now
            self._refund(1.0)
            self._grow(now)
            self._read_limits(now, limits)
            self._free_place()
            if self._events.active and (self._rate is not None or limits.remaining is not None):
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
            held = max(self._hold_until, self._header_until)
            self._throttles += 1
            self._streak += 1
            self._last_throttle = now
            _append_recent(self._throttle_times, now, _FIRST_WINDOW)
            self._slow_start = False
            self._read_limits(now, limits)
            blocked = (
                self._streak >= _BLOCKED_STREAK
                and now - self._last_ok >= _BLOCKED_QUIET
                and self._header_rate is None
            )
            if retry_after is not None and (pause or blocked):
                self._hold_until = max(self._hold_until, now + retry_after)
            elif ticket.epoch == self._epoch and self._header_rate is None:
                self._cut_rate(now)
            self._free_place()
            if self._events.active:  # event: PaceChanged (a cut), Paused
                events = self._report(
                    now, held, "retry-after" if pause else ("refused" if blocked else "throttle")
                )
        if events:
            self._emit(events)

    def _cut_rate(self, now: float) -> None:
        """Set the pace from what the server admitted over the last few round trips: while it
        throttles, that is what it admits, and a throttle says it is throttling now.
        """
        rate = self._rate
        window = max(_MIN_SPAN, _MIN_SPAN_RTTS * self._latency)
        if rate is not None and now - self._last_cut < max(window, _MIN_SPAN_REQUESTS / rate):
            return  # too soon after the last cut to measure again: the same signal
        oks, refused = self._ok_times, self._throttle_times
        while oks and oks[0] <= now - _OK_HISTORY:
            oks.popleft()
        while refused and refused[0] <= now - _FIRST_WINDOW:
            refused.popleft()
        answered = len(oks) - bisect.bisect_right(oks, now - _FIRST_WINDOW)
        if answered >= _NOISE_SAMPLES and len(refused) < _NOISE_SHARE * answered:
            return  # a few throttles among many successes: refused at random, not saturated
        first = self._first_ok if self._first_ok is not None else now
        # The window spans a few round trips, and at least the last few answers (within a
        # second): what the server admitted, however fast we were sending.
        start = now - window
        if rate is None:
            start = now - _FIRST_WINDOW  # first contact: whatever got through lately
        elif len(oks) >= _WINDOW_SAMPLES:
            start = min(start, oks[-_WINDOW_SAMPLES])
        start = max(start, now - _FIRST_WINDOW, first - self._latency)
        span = max(now - start, 0.02)
        admitted = len(oks) - bisect.bisect_right(oks, start)
        if admitted < _MIN_SPAN_REQUESTS:
            # Too little got through to measure anything: a pace in force is halved.
            if rate is None:
                return
            new_rate = 0.5 * rate
        elif rate is None:
            # First contact: what got through counts the server's burst too, so the estimate
            # may be several times the limit. Start well below it and search upward fast
            # (doubling while the pace binds) until the next throttle measures it exactly.
            new_rate = _FIRST_SHARE * admitted / span
            self._searching = True
        else:
            measured = admitted / span
            # While searching, the pace doubled every few round trips: the limit likely lies
            # above half the pace that met it, even when the window caught the end of the
            # ramp, but a refilled burst can delay the throttle, so trust the measurement
            # within a factor of two; the next throttle, if any, measures again.
            least = min(0.5 * rate, 2.0 * measured) if self._searching else _MAX_CUT * rate
            self._searching = False
            new_rate = max(min(_HEADROOM * measured, rate), least)
        # Throttles that come whatever the pace (a server that refuses a share of requests at
        # random) must not drive it to nothing: keep at least half the best admitted rate.
        new_rate = max(new_rate, _FLOOR * self._note_peak(now, 0.0))
        self._rate = max(new_rate, self._min_rate)
        self._last_cut = now
        self._epoch += 1
        self._cuts += 1
        self._last_growth = now
        self._next_slot = max(self._next_slot, now)

    def on_failure(self, ticket: Ticket, failure: Failure) -> None:
        """The request got no usable answer (see ``Failure``)."""
        events = None
        with self._lock:
            if failure is Failure.OVERLOAD:
                self._overloads += 1
                self._slow_start = False
                if ticket.epoch > self._overload_epoch:
                    # one cut per round of requests in flight
                    self._cap = max(1.0, self._cap * self._decrease)
                    self._overload_epoch = self._epoch
                    self._epoch += 1
                    self._cuts += 1
            else:
                self._failures += 1
            self._free_place()
            if self._events.active and failure is Failure.OVERLOAD:
                events = self._report(self._clock(), math.inf, "overload")  # event: PaceChanged
        if events:
            self._emit(events)

    def cancel(self, ticket: Ticket) -> None:
        """An admitted request was never sent."""
        with self._lock:
            self._requests -= 1
            self._free_place()

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
        with self._lock:
            cost = retry_cost(failure)
            granted = self._budget >= cost
            if granted:
                self._budget -= cost
            left = self._budget
        if self._events.active:  # event: BudgetSpent
            self._events.emit(BudgetSpent(cost, left, granted, failure.value))
        return granted

    # -- helpers (under the lock) ------------------------------------------------------------

    def _refund(self, tokens: float) -> None:
        if self._budget < self._budget_capacity:
            self._budget = min(self._budget_capacity, self._budget + tokens)

    def _grow(self, now: float) -> None:
        if self._cap < self._max:
            step = _SLOW_START_STEP if self._slow_start else 1.0 / self._cap
            self._cap = min(float(self._max), self._cap + step)
        rate = self._rate
        if rate is None or self._header_rate is not None:
            return
        dt = now - self._last_growth
        if dt <= 0:
            return
        self._last_growth = now
        if now - self._last_paced > _PACED_RECENTLY:
            return  # pacing is not what holds requests back: hold the rate
        quiet = now - max(self._last_throttle, self._hold_until)
        if quiet > _SEARCH_AGAIN:
            # No throttle for a while although the pace holds requests back: the limit rose,
            # or other clients left. Search upward fast again, as at first contact.
            self._searching = True
        # However long it grows, the pace stays within a few times what the server was seen
        # to admit: a pace it is not holding is never reported (nor kept).
        ceiling = _MAX_OVER_PEAK * self._note_peak(now, 0.0)
        if self._searching:
            step = max(_SEARCH_DOUBLING, 2.0 * self._latency, _WINDOW_SAMPLES / rate)
            self._rate = min(rate * 2.0 ** (min(dt, 1.0) / step), max(ceiling, rate))
            return
        speed = min(_MAX_PROBE, self._probe * 2.0 ** (max(quiet, 0.0) / _PROBE_DOUBLING))
        self._rate = min(rate * (1.0 + speed * min(dt, 1.0)), max(ceiling, rate))

    def _note_peak(self, now: float, admitted: float) -> float:
        """Record an admitted rate; return the best one, halving every ``_PEAK_HALF_LIFE``."""
        decay = 0.5 ** ((now - self._peak_at) / _PEAK_HALF_LIFE)
        self._peak = max(self._peak * decay, admitted)
        self._peak_at = now
        return self._peak

    def _read_limits(self, now: float, limits: RateLimits) -> None:
        remaining = limits.remaining
        if remaining is None:
            return
        # What is left for requests not yet counted by the server: ours in flight (this one
        # is already counted; those waiting for a pacing slot are not sent yet) come first.
        left = remaining - max(self._active - self._pacing_waiters - 1, 0)
        reset = limits.reset
        if reset is None or reset <= 0:
            # No reset time: pace by throttles; when nothing is left, wait a moment.
            self._header_rate = None
            if left <= 0:
                self._header_until = now + 1.0
            return
        # A fixed window's reset counts down with the clock; a quota that refills as it goes
        # (a sliding window, a bucket) keeps a reset of about its whole span. The first can
        # spend what remains before the reset; the second refills `limit` over `reset`.
        previous = self._last_reset
        if previous is None:
            self._last_reset = (now, reset)
        elif now - previous[0] >= max(0.1, 0.1 * previous[1]):
            # compare with a reading old enough for the two kinds to differ
            elapsed = now - previous[0]
            counted_down = abs(previous[1] - elapsed - reset) <= 0.25 * elapsed
            self._fixed_window = max(-3, min(3, self._fixed_window + (1 if counted_down else -1)))
            self._last_reset = (now, reset)
        if limits.limit is not None and self._fixed_window < 0:
            self._header_rate = max(_HEADROOM * limits.limit / reset, self._min_rate)
            self._header_until = -math.inf
        elif left <= 0:
            self._header_until = now + reset
            self._header_rate = None
        else:
            self._header_rate = max(left / reset, self._min_rate)
            self._header_until = -math.inf

    # -- state -------------------------------------------------------------------------------

    def state(self) -> FlowState:
        """The counters and limits right now."""
        with self._lock:
            now = self._clock()
            hold = max(self._hold_until, self._header_until)
            if self._header_rate is not None:
                rate: float | None = self._header_rate
                pacing = "headers"
            else:
                rate = self._rate
                pacing = "none" if rate is None else "measured"
            return FlowState(
                in_flight=self._active - self._pacing_waiters,
                waiting=len(self._waiters) + self._pacing_waiters,
                concurrency=int(self._cap),
                max_concurrency=self._max,
                rate=rate,
                paused_for=max(0.0, hold - now),
                budget=self._budget,
                requests=self._requests,
                throttles=self._throttles,
                overloads=self._overloads,
                failures=self._failures,
                cuts=self._cuts,
                pacing=pacing,
            )


def _append_recent(times: deque[float], now: float, keep: float) -> None:
    """Add ``now`` and drop the times older than ``keep`` seconds: bounded however long the
    flow lives.
    """
    times.append(now)
    while times[0] <= now - keep:
        times.popleft()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
