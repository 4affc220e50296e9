"""The flow-control law: how fast to send, how many at once, when everyone waits.

A pure state machine: numbers in (what was sent, what was answered, the time), decisions out
(a pace, a concurrency cap, a pause, a quota). No asyncio, no locks, no I/O: the gate
(``FlowControl``) holds it under its lock and does the waiting; the simulator
(``benchmarks/simulator.py``) and the unit tests drive it on virtual time. ``docs/flow-control.md``
describes the law once; the names below follow it.
"""

from __future__ import annotations

import enum
import math
from collections import deque

import attrs

from ._protocol import RateLimits

__all__ = ["Law", "Phase", "Refusal", "QuotaReader", "RetryBudget", "Hold"]

# Every constant of the law lives here, once.
HEADROOM = 0.97  # the pace sits this far under the rate the server was measured to admit
CUT = 0.85  # a throttle that measures nothing new cuts the pace to this share of itself
INITIAL_CAP = 8  # requests in flight at the start, doubling each round trip (slow start)
BUSY_CUT = 0.7  # a busy server's 503 cuts the concurrency cap to this share, once a round
LONG_WAIT = 1.0  # seconds: a Retry-After longer than this is a wait for everyone
BLOCKED_STREAK = 3  # refusals in a row with no success ...
BLOCKED_QUIET = 0.1  # ... for this long (or two round trips): the limit is closed
FIRST_BACKOFF = 1.0  # seconds everyone waits when blocked and no Retry-After says how long
MAX_BACKOFF = 30.0  # ... doubling each time, at most this
QUIET_SUCCESSES = 20  # the pace holds this many successes' worth of time after a refusal ...
QUIET_SECONDS = 2.0  # ... and at least this long, before probing upward
PROBE = 0.02  # the first probe speed: a share of the pace per second ...
PROBE_DOUBLING = 0.75  # ... doubling every 0.75 s past where the limit was met ...
MAX_PROBE = 1.0  # ... up to this (the pace then grows e-fold a second)
PROBE_STEP = 0.25  # ... and by at most this share of itself a success
PROBE_NEAR = 1.05  # ... but only creeps while under this multiple of where the limit was met
PROBE_BACK = 2.0  # a probe refused under this multiple of the pace before it goes back to that
SEARCH_DOUBLING = 0.1  # seconds (or two round trips, or four paced sends) to double a search
SEARCH_UP_TO = 0.9  # a search stops at this share of the pace the last rate signal came at
SEARCH_SENDS = 8  # ... and at least this many paced sends per doubling
CONTACT_ANSWERS = 8  # first contact: answers (over a round trip at least) that judge it ...
CONTACT_SHARE = 0.15  # ... a limit if this share of them was refused, else noise
WINDOW = 2.0  # seconds closed: a window's, not a bucket's (which refills sooner)
WINDOW_STEPS = 16  # a window guessed from a closure: ask whether it reopened every 1/16 span
WINDOW_SOONER = 0.9  # ... and if it was open at the first ask, ask this much sooner next time
CLOSED_SHARE = 0.8  # ... closed if this share was refused and at most one passed
ROUND_ANSWERS = 3  # answers a round needs before it is judged (first contact: one)
MEASURE_SUCCESSES = 4  # successes since refusals began that measure the limit
NOISE_ANSWERS = 40  # answers after a cut that tell whether its refusals were noise (at
NOISE_MOST = 300  # least three refusals' worth at the share before, at most this many)
NOISE_DROP = 0.5  # ... they were if the refused share stayed between this share of before
# and twice it (slowing down did not change it)
NOISE_MOST_SHARE = 0.2  # ... refused shares above this are never noise
NOISE_SLOWER = 0.9  # ... and only if the pace fell at least this much between the halves
NOISE_FLOOR = 0.005  # a learned noise share under this is none
NOISE_MARGIN = 2.0  # a share under this multiple of the learned noise is noise ...
NOISE_SPREAD = 3.0  # ... or a count within this many standard deviations of it (and one)
ADMITTED_SUCCESSES = 16  # the latest successes, over at most ...
ADMITTED_SPAN = 2.0  # ... this many seconds, say how fast the server admitted lately
ADMITTED_SENDS = 8  # ... or over this many of the pace's intervals, if longer
COUNTED_STEPS = 64  # a quota's span is remembered in this many steps of its successes
UNSEEN_WAIT = 0.05  # seconds a spent quota waits for answers in flight before looking again
MIN_RATE = 0.5  # requests per second: the slowest pace (a default of the gate)
BUDGET_REFUND = 1.0  # tokens an answered request gives back to the retry budget


class Phase(enum.Enum):
    """Where the pace comes from."""

    #: No pace: only the concurrency cap bounds sends (it doubles each round trip until the
    #: first sign of pressure).
    OPEN = "open"
    #: Refused lately: the pace follows what the server admitted since the refusals began
    #: (while it refuses, that is exactly its limit).
    MEASURING = "measuring"
    #: Under a limit last seen well above the pace (or never measured): the pace doubles
    #: every few round trips while it holds requests back, up to near that limit.
    SEARCHING = "searching"
    #: Under the limit: the pace holds; after a quiet spell it probes upward, ever faster.
    HOLDING = "holding"
    #: The server's quota headers pace (what remains over the time to the reset).
    HEADERS = "headers"


class Refusal(enum.Enum):
    """What a refused request says about the server."""

    #: 429 (or 503 with Retry-After): too fast, or refused at random by a gateway.
    THROTTLE = "throttle"
    #: 503 without Retry-After: too many at once (the retry loop treats it as an outage
    #: only when nothing succeeded lately).
    BUSY = "busy"


@attrs.define(slots=True)
class Hold:
    """A wait for everyone: nothing is sent before ``until`` (a clock value)."""

    until: float = -math.inf
    #: why: "retry-after", "blocked", "window" (a guessed window's rest), "first contact"
    reason: str = ""
    #: consecutive holds without a success in between (the backoff doubles with it)
    count: int = 0
    #: when it was set: refusals of requests sent before then are the same signal
    set_at: float = -math.inf


class QuotaReader:
    """Reads ``x-ratelimit-*`` headers into a quota: how many requests may leave before the
    reset, or a refilling pace.

    A reset that counts down with the clock is a fixed window: what remains is spread over the
    time to the reset, and nothing leaves when nothing remains. A reset that
    stays about constant is a quota that refills as it goes (a sliding window, a bucket): pace
    at ``limit`` over the longest reset seen, or at what remains over the reset when no limit
    is sent.
    """

    def __init__(self) -> None:
        self.rate: float | None = None  # a refilling quota's pace
        self.left: float | None = None  # requests that may leave before the reset
        self.reset_at = -math.inf  # when the window's quota is whole again
        self._last_reset: tuple[float, float, int] | None = None  # when, reset, remaining
        self._fixed = 0  # > 0: the reset counts down (a fixed window); < 0: it refills
        self._longest = 0.0  # the longest reset seen (a fixed window's whole span)
        self._asking = False  # after a reset: the next reading is the new window's
        self._least = math.inf  # the least ``remaining`` read in this window
        self._unseen = 0  # requests in flight at the last reading: their answers may tell more
        self._counted: deque[float] = deque()  # when successes were counted, a span's worth
        self._refused_until = -math.inf  # a refilling quota's 429: nothing leaves sooner
        self._limit: int | None = None  # the last limit read (a new one: a new span)

    @property
    def active(self) -> bool:
        return self.rate is not None or self.left is not None

    def read(self, now: float, limits: RateLimits, in_flight: int, refused: bool = False) -> None:
        """An answer's headers, with ``in_flight`` of ours sent and not answered (the server
        may not have counted them yet, or counted them already: either way they are spent, until
        their own answers tell better). ``refused``: the answer was a 429.
        """
        remaining = limits.remaining
        if remaining is None:
            return
        left = float(remaining - max(in_flight, 0))
        reset = limits.reset
        if reset is None or reset <= 0:
            # No reset time: nothing to pace by; when nothing is left, wait a moment.
            self.rate = None
            self.left = left if left <= 0 else None
            self.reset_at = now + 1.0
            return
        if limits.limit != self._limit:
            self._limit, self._longest = limits.limit, 0.0  # another quota: learn its span
        self._longest = max(self._longest, reset)
        if not refused:
            # when the quota counted our successes (the answer's time: a little late, which
            # is the safe side), to a 64th of its span
            counted = self._counted
            if not counted or now - counted[-1] >= self._longest / COUNTED_STEPS:
                counted.append(now)
            while len(counted) > 1 and counted[1] <= now - self._longest:
                counted.popleft()
        previous = self._last_reset
        if previous is None:
            self._last_reset = (now, reset, remaining)
        elif now - previous[0] >= previous[1] and reset >= 0.9 * self._longest:
            # a fresh window after that one: compare from here
            self._last_reset = (now, reset, remaining)
        elif now - previous[0] >= max(0.1, 0.1 * previous[1]):
            elapsed = now - previous[0]
            # (a bucket's reset, when it is full again, counts down too while it refills,
            # but what remains grows meanwhile; within a fixed window it only falls)
            counted_down = (
                abs(previous[1] - elapsed - reset) <= 0.25 * elapsed and remaining <= previous[2]
            )
            self._fixed = max(-3, min(3, self._fixed + (1 if counted_down else -1)))
            self._last_reset = (now, reset, remaining)
        if self._fixed < 0:
            # a refilling quota: its limit over its span (the longest reset seen: a bucket's
            # reset says when it is full again, less than the span unless it is empty), or
            # what remains over the reset when no limit is sent
            if limits.limit is not None:  # (a limit of 0: one request a span asks again)
                quota, span = max(float(limits.limit), 1.0), self._longest
            else:
                quota, span = max(left, 1.0), reset
            # (no headroom: what remains is the server's own count, and when nothing does,
            # the pace waits; 3% under the limit made a 60 s run 1.9 s longer)
            self.rate = quota / span
            self.left = None if left > 0 else 0.0
            # (not sooner than a 429 said: a success in flight when it came does not end it)
            self.reset_at = max(now + span / quota, self._refused_until)
            if refused and remaining <= 0:
                # refused with nothing left (a bucket would have refilled a request's share
                # by now): the quota frees what it counted a span after it counted it (a
                # sliding window spent at once frees nothing for most of a span; asking every
                # share was refused again and again), so nothing leaves before the oldest
                # success of the last span ages out, and never after the reset
                span = self._longest
                oldest = next((t for t in self._counted if t > now - span), None)
                if oldest is not None:
                    self.reset_at = max(self.reset_at, now + min(reset, oldest + span - now))
                    self._refused_until = self.reset_at
                self._unseen = 0
        else:
            # a fixed window (or not known yet): what remains may leave now. Answers come
            # back out of order: within one window, the least that remains is the server's
            # latest count; what is in flight now may not be in it yet.
            same_window = (
                self.left is not None
                and not self._asking
                and abs(now + reset - self.reset_at) < max(0.1 * reset, 0.05)
            )
            self._asking = False
            least = float(remaining)
            self._least = min(self._least, least) if same_window else least
            self.left = self._least - max(in_flight, 0)
            self._unseen = max(in_flight, 0)
            self.reset_at = now + reset
            # what remains may leave at once: a fixed window's quota is spent as it opens
            # (after a reset one request asks first what the new window holds)
            self.rate = None

    def spend(self) -> None:
        if self.left is not None:
            self.left -= 1

    def blocks(self, now: float) -> float:
        """Seconds until the quota lets a request leave (0: now)."""
        if self.left is not None and self.left < 1 and now < self.reset_at:
            if self._unseen > 0:
                # spent, counting every request in flight; their answers may tell that the
                # server had counted some already: wait for them, not for the reset
                return min(self.reset_at - now, UNSEEN_WAIT)
            return self.reset_at - now
        if self.left is not None and now >= self.reset_at and self.left < 1:
            # the window reset: one request asks what it holds now (another a second later
            # if no answer tells)
            self.left = 1.0
            self.reset_at = now + 1.0
            self._asking = True
        return 0.0


class RetryBudget:
    """Tokens that retries of failures spend and answers give back (botocore's retry quota):
    when it runs dry, failures are no longer retried, so a dead server costs about one request
    per call.
    """

    def __init__(self, capacity: float | None) -> None:
        self.capacity = math.inf if capacity is None else float(capacity)
        self.tokens = self.capacity

    def refund(self, tokens: float = BUDGET_REFUND) -> None:
        if self.tokens < self.capacity:
            self.tokens = min(self.capacity, self.tokens + tokens)

    def spend(self, cost: float) -> bool:
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class _Trial:
    """The refusals of one kind since the law first slowed down for them: if they go on at
    the same share although it slowed down, they are noise (refused at random, whatever the
    pace), and what it did for them is undone.
    """

    __slots__ = ("before", "began", "flags", "kind", "paces")

    def __init__(
        self, kind: Refusal, before: tuple[float | None, float, Phase, bool], began: float
    ) -> None:
        self.kind = kind
        #: the law's clock when it began: answers from before it (reported late) do not count
        self.began = began
        #: what the law did before (pace, cap, phase, slow start), to restore
        self.before = before
        #: whether each answer since was refused this way, and the pace (or cap) then
        self.flags: list[bool] = []
        self.paces: list[float] = []

    def add(self, refused: bool, pace: float, noise: float) -> float | None:
        """Count one answer; return the noise share once the answers say it is noise: as
        many refused in the second half as in the first, although the pace fell between.
        """
        flags = self.flags
        if len(flags) >= NOISE_MOST:
            # no verdict in that many: judge the latest half and what comes next (a trial
            # that stopped counting kept every later cut from ever being undone)
            del flags[: len(flags) // 2]
            del self.paces[: len(self.paces) // 2]
        flags.append(refused)
        self.paces.append(pace)
        n = len(flags)
        count = sum(flags)
        if count < 4 or n < NOISE_ANSWERS or count > NOISE_MOST_SHARE * n:
            return None
        share = count / n
        if n < min(NOISE_MOST, 3.0 / share):
            return None
        half = n // 2
        first, second = sum(flags[:half]) / half, sum(flags[half:]) / (n - half)
        now_pace = sum(self.paces[half:]) / (n - half)
        slower = now_pace <= NOISE_SLOWER * sum(self.paces[:half]) / half
        if not slower and noise >= NOISE_FLOOR and share <= NOISE_MARGIN * noise:
            # as often as the noise already learned: slower than before the law slowed
            # down for them is enough (it took a burst of noise for a limit)
            before = self.before[1] if self.kind is Refusal.BUSY else self.before[0]
            slower = now_pace <= NOISE_SLOWER * (math.inf if before is None else before)
        return share if slower and second >= NOISE_DROP * first else None


class Law:
    """The flow-control law. See ``docs/flow-control.md``; every method is a transition and
    takes the time ``now`` from the gate's clock.

    Read by the gate: ``phase``, ``pace(now)`` (``None``: unpaced), ``cap``,
    ``wait_for_hold(now)``, ``quota``.
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        initial_concurrency: int = INITIAL_CAP,
        min_rate: float = MIN_RATE,
        probe: float = PROBE,
        decrease: float = BUSY_CUT,
        now: float = 0.0,
    ) -> None:
        self.max_cap = max_concurrency
        self.cap = float(min(initial_concurrency, max_concurrency))
        self.min_rate = min_rate
        self.probe = probe
        self.decrease = decrease
        self.phase = Phase.OPEN
        self.rate: float | None = None
        self.hold = Hold()
        self.quota = QuotaReader()
        self.slow_start = True
        self.latency = 0.0  # smoothed send-to-answer time
        self._latency_samples = 0
        self.cuts = 0
        # MEASURING: since when refusals go on, and the successes since
        self._episode_start = now
        self._episode_oks = 0
        self._episode_began = now  # the law's clock when the successes began to count
        self._episode_refused = 0  # refusals of requests sent since it began
        self._last_refusal = -math.inf
        self._last_signal = -math.inf  # the last refusal that was not noise
        self._limit_seen = math.inf  # the pace at which the last rate signal came
        self._probe_pace: float | None = None  # blocked: one request a hold
        self._probe_refused = -math.inf  # when the last refused probe was sent
        self._reopen_gap: float | None = None  # last refused probe to the one that passed
        # first contact: answers received in the round trip after the first refusal
        self._contact_at: float | None = None
        # answers, refused, successes, and answers to requests that left at its own pace
        self._contact = [0, 0, 0, 0]
        self._contact_paced: float | None = None  # when the first of those left
        # ... and the latest request sent before it began: a verdict of few refusals waits for
        # its answer (or a later one's): a burst's refusals may come just after its successes
        self._contact_last: float | None = None
        self._last_sent = -math.inf  # when the latest request left
        self._retry_after: float | None = None  # of the last refusal
        self._contact_waited = False  # first contact restarted after a long Retry-After
        self._reopening = False  # a window reopens after a long Retry-After: not measuring
        self._beyond = now  # when the probe passed where the limit was last met
        self._probe_from: float | None = None  # the pace that held before this probe began
        self._after_block = False  # searching up since a closed limit opened
        self._blocked_since = math.inf  # when the limit last closed
        # ... at first contact (nothing measured before it): when that wait ends
        self._contact_reopens = math.inf
        self._last_cut = -math.inf  # answers to requests sent before it are the same signal
        self._last_growth = now
        self._last_bound = -math.inf  # the last time pacing held a request back
        self._streak = 0  # refusals in a row
        self._last_ok = -math.inf
        self._oks: deque[float] = deque(maxlen=ADMITTED_SUCCESSES)  # the latest successes
        # a window (a long Retry-After ends it): what the last one held, and this one's counts
        self._window_quota: int | None = None
        self._window_span = 0.0  # how long the last window lasted, from its first send
        self._window_from = now  # when this window may open (the end of the last wait)
        self._window_started: float | None = None  # its first send
        self._window_sent = self._window_answered = self._window_oks = 0
        self._window_guessed = False  # learned from a closure (no Retry-After): its span too
        self._noise: dict[Refusal, float] = {Refusal.THROTTLE: 0.0, Refusal.BUSY: 0.0}
        # what the law did for each kind of refusal, on trial until they stop (or prove noise)
        self._trials: dict[Refusal, _Trial] = {}
        self._last_busy = -math.inf
        # the current round: answers to requests sent after the last decision
        self._round_answers = 0
        self._round_refused = 0
        self._pending: Refusal | None = None  # a refusal of this round waits for a verdict
        # the latest time a transition saw: the law's clock never runs backwards (a fleet's
        # events reach it in the order their processes report them, not quite in time order)
        self._now = now

    # -- what the gate reads -----------------------------------------------------------------

    def pace(self, now: float) -> float | None:
        """The pace in force now, in requests per second (``None``: unpaced)."""
        now = max(now, self._now)
        if self.phase is Phase.HEADERS:
            return self.quota.rate
        rate = self.rate
        if self._contact_at is not None and rate is None and self.hold.reason == "first contact":
            # first contact, judging: once its wait ends undecided, at most what got through
            # since the first refusal, and one more (not everyone waiting at once; a fleet
            # stores the pace during the wait, as it will be at its end)
            since = max(now, self.hold.until) - self._contact_at
            span = max(since, 2.0 * self.latency, 0.01)
            return max(HEADROOM * (self._contact[2] + 1) / span, self.min_rate)
        if rate is None or self.phase is not Phase.MEASURING:
            return rate
        if self._probe_pace is not None:
            rate = min(rate, self._probe_pace)
        # While refusals go on, the server admits exactly its limit: what it admitted since
        # they began bounds the pace (one success more than seen, which shrinks with time,
        # so a pace far above the limit falls fast with few refusals on the way).
        span = now - self._episode_start
        if span <= 0 or self._reopening:
            return rate
        noise = self._noise[Refusal.THROTTLE]
        bound = HEADROOM * (self._episode_oks + 1) / (span * (1.0 - min(noise, 0.5)))
        return max(min(rate, bound), self.min_rate)

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """The law's whole state as plain JSON data (every attribute, whatever its type among
        the law's own; an attribute of any other type raises ``TypeError``), for a fleet that
        keeps one law in a shared store. ``Law.restore`` makes the same law again.
        """
        data = _encode(self)
        assert isinstance(data, dict)
        return data

    @classmethod
    def restore(cls, data: object) -> Law:
        """The law a ``snapshot()`` holds. Raises ``ValueError`` for anything that is not one
        (an unknown type or attribute, a missing attribute); it builds only the law's own
        types, so stored data cannot make it run code.
        """
        try:
            law = _decode(data)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a snapshot of the law: {exc}") from exc
        if not isinstance(law, cls):
            raise ValueError("not a snapshot of the law")
        return law

    @property
    def judging(self) -> bool:
        """First contact: the answers of the round trip after the first refusal decide
        whether it met a limit (a fleet reports each of them at once).
        """
        return self._contact_at is not None

    def rate_cap(self) -> float:
        """The pace's ceiling, before the measuring bound (``inf``: none)."""
        return math.inf if self.rate is None else self.rate

    def wait_for_hold(self, now: float) -> float:
        """Seconds until everyone may send again (0: now)."""
        now = max(now, self._now)
        wait = max(self.hold.until - now, 0.0)
        if self.quota.left is not None:
            wait = max(wait, self.quota.blocks(now))
        elif (
            self._window_quota is not None
            and self.phase is not Phase.HEADERS
            and self._window_sent >= self._window_quota
            and self._window_sent > self._window_answered
            and self._window_started is not None
            and now < self._window_started + self._window_span
        ):
            # this window's quota (as the last one held) is out: one request at a time asks
            # whether more remains (the next answer re-checks)
            wait = max(wait, self.latency, 0.001)
        return wait

    # -- transitions -------------------------------------------------------------------------

    def sent(self, now: float) -> None:
        """A request leaves."""
        self.quota.spend()
        self._last_sent = max(self._last_sent, now)
        start = self._contact_at
        if start is not None and now < start:
            # first contact's judgement waits for this one too: it left before it began (a
            # fleet's sends may reach the law after the refusal that began it)
            last = self._contact_last
            self._contact_last = now if last is None else max(last, now)
        elif start is not None and self.hold.reason == "first contact" and now >= self.hold.until:
            # first contact's wait is over: its pace holds (the earliest such send, whatever
            # the order a fleet's sends reach the law in)
            paced = self._contact_paced
            self._contact_paced = now if paced is None else min(paced, now)
        if now >= self._window_from:
            started = self._window_started
            spent = started is not None and self.hold.set_at >= started
            if started is not None and 0.0 < self._window_span <= now - started and not spent:
                # the last window's span passed with no wait to end this one: it was no
                # window (a one-off long wait), or it reset unseen; forget its count
                self._window_quota, self._window_span = None, 0.0
                started = None
            if started is None:
                # a new window: count afresh (it runs until a long wait ends it)
                self._window_started = now
                self._window_sent = self._window_answered = self._window_oks = 0
            self._window_sent += 1

    def bound(self, now: float) -> None:
        """Pacing held a request back: the pace is what limits the flow (it may probe)."""
        self._last_bound = self._tick(now)

    def answered(self, now: float, sent_at: float) -> None:
        """A request was answered by a server that admitted it (a success, or an error that is
        the request's own).
        """
        self._measure_latency(now - sent_at)
        at, now = now, self._tick(now)  # (``at``: when it was answered, if reported late)
        self._streak = 0
        self._last_ok = now
        self._oks.append(at)
        self.hold.count = 0
        if sent_at >= self._window_from:
            self._window_answered += 1
            self._window_oks += 1
            if self._window_quota is not None and self._window_oks > self._window_quota:
                self._window_quota = self._window_oks  # the window holds more than the last
        if at >= self._episode_began:
            self._episode_oks += 1
        closed = now - self._blocked_since
        # (a request sent before the limit closed is no probe: it says nothing of it now)
        probe = self._probe_pace if sent_at >= self._blocked_since else None
        # (or found closed by first contact, which measured nothing, and a probe sent after its
        # wait passed: the wait refilled it by as much as its rate allows, and a measure
        # spanning the wait read one request a wait, from which a bucket of 20/s took 7 s to
        # find; a fleet's request sent during the wait, before it knew of it, is no probe)
        reopened = closed > WINDOW or sent_at >= self._contact_reopens
        if probe is not None and self.phase is Phase.MEASURING and reopened:
            # A limit closed for seconds let one through: a window reopened with its whole
            # quota (a bucket refills within a second or two). Search up fast from the
            # probe's pace, measured afresh (the time it was closed says nothing of its rate).
            self.rate = max(2.0 * probe, self.min_rate)
            self.phase = Phase.SEARCHING
            self._after_block = True
            # (from the last refused probe, if it was sent before this one)
            refused = self._probe_refused
            if self._contact_reopens < math.inf:
                # (or from first contact's verdict: a limit that refills one request in that
                # time, which its search's first refusal tells, is held at that)
                refused = max(refused, self._blocked_since)
            gap = sent_at - refused
            self._reopen_gap = gap if 0 < gap < math.inf else None
            self._trials.pop(Refusal.THROTTLE, None)
            self._window_reopened(sent_at)
        if sent_at >= self._blocked_since:
            self._probe_pace = None
            self._contact_reopens = math.inf
        for trial in list(self._trials.values()):
            self._judge(trial, now, at, refused=False)
        busy = self._trials.get(Refusal.BUSY)
        if busy is not None and now - self._last_busy > max(1.0, 10.0 * self.latency):
            del self._trials[Refusal.BUSY]  # the cap cut ended them: a busy server's
        if self._contact_at is not None and at >= self._contact_at:
            self._contact[0] += 1
            self._contact[2] += 1
            self._contact[3] += self._at_contact_pace(sent_at)
            self._contacted(now, at, sent_at)
        if sent_at >= self._last_cut:
            self._round_answers += 1
            if self._pending is not None:
                self._decide(now)
        if self.cap < self.max_cap:
            step = 1.0 if self.slow_start else 1.0 / self.cap
            self.cap = min(float(self.max_cap), self.cap + step)
        self._grow(now)

    def refused(self, now: float, sent_at: float, kind: Refusal, retry_after: float | None) -> None:
        """A request was refused: ``kind`` says how; ``retry_after`` is the server's wait."""
        self._measure_latency(now - sent_at)
        at, now = now, self._tick(now)  # (``at``: when it was answered, if reported late)
        self._streak += 1
        self._retry_after = retry_after
        self.slow_start = False
        if kind is Refusal.BUSY:
            self._last_busy = now
        elif sent_at >= self._episode_start:
            self._episode_refused += 1
            self._last_refusal = now
        for trial in list(self._trials.values()):
            self._judge(trial, now, at, refused=trial.kind is kind)
        if sent_at >= self._window_from:
            self._window_answered += 1
        if retry_after is not None and retry_after > LONG_WAIT:
            # The rest of a window: everyone waits it out; when it reopens, its quota is
            # whole, so what was measured before the wait says nothing of it.
            reopened = self._episode_start
            self._hold(now, retry_after, "retry-after")
            if sent_at >= self._window_from:
                # the window ends: it held what succeeded since it opened (the next one is
                # spent as far as that, then one request at a time)
                if self._window_oks >= 2:
                    self._window_quota = self._window_oks
                    started = self._window_started if self._window_started is not None else now
                    self._window_span = self.hold.until - started
                self._window_from = self.hold.until
                self._window_started = None
                self._window_sent = self._window_answered = self._window_oks = 0
            if self.phase is Phase.MEASURING and self._reopening and self._episode_oks <= 1:
                # The last wait "reopened" to let one request through: no window but a
                # limit that refills about one request a Retry-After. Pace at that.
                spell = max(self.hold.until - reopened, 1e-3)
                self.rate = max(HEADROOM * max(self._episode_oks, 1) / spell, self.min_rate)
                self._reopening = False
                self._last_signal = now
            elif self.phase is Phase.MEASURING:
                self._episode_start = self.hold.until
                self._episode_oks, self._episode_began = 0, now
                self._reopening = True
            if self._contact_at is not None and not self._contact_waited:
                # first contact is judged by what comes after the wait (once)
                self._contact_at, self._contact = self.hold.until, [0, 0, 0, 0]
                self._contact_paced = None
                self._contact_waited = True
        elif kind is Refusal.THROTTLE and self._window_spent(now, sent_at, retry_after):
            pass  # a guessed window is spent: everyone waits for it to reopen
        elif kind is Refusal.THROTTLE and self._blocked(now, sent_at):
            # Refused again and again with no success: the limit is closed. Everyone waits
            # (the Retry-After, else a backoff doubling each time), then one request at a time
            # asks whether it opened.
            wait = retry_after if retry_after else FIRST_BACKOFF * 2.0 ** min(self.hold.count, 7)
            wait = min(wait, MAX_BACKOFF) if not retry_after else wait
            if not retry_after and self._window_guessed:
                # a guessed window's reopening is near: ask in small steps of its span
                wait = min(wait, max(FIRST_BACKOFF, self._window_span / WINDOW_STEPS))
            self._close(now, wait, "blocked")
            self._probe_refused = sent_at
        elif kind is Refusal.THROTTLE and (gap := self._probe_refill(sent_at)) is not None:
            # The closed limit that reopened let only its probe through before the search
            # from it was refused: no window, but a limit that refills about one request in
            # the time from its last refused probe to the one that passed (a bucket of 30 a
            # minute). Hold at that; searching on, then measuring down from the search's
            # pace, cost four refusals at 0.5/s.
            self.rate = max(HEADROOM / gap, self.min_rate)
            self._limit_seen = self.rate / HEADROOM
            self.phase = Phase.HOLDING
            self._after_block = False
            self._reopen_gap = None
            self._trials.pop(Refusal.THROTTLE, None)
            self._last_signal = now
            self._pending = None
            self._decided(now)  # (this refusal, and those of requests sent before it)

        if self._contact_at is not None and kind is Refusal.THROTTLE:
            if at >= self._contact_at:
                self._contact[0] += 1
                self._contact[1] += 1
                self._contact[3] += self._at_contact_pace(sent_at)
                self._contacted(now, at, sent_at)
            return
        if self._reopening and sent_at >= self.hold.until:
            self._reopening = False  # the reopened window is spent: measure again
            self._episode_start, self._episode_oks, self._episode_began = now, 0, now
        headers = self.phase is Phase.HEADERS and kind is Refusal.THROTTLE
        if sent_at < self._last_cut or headers:
            return  # the same signal as the last decision, or the headers say better
        if self._pending is None:
            # a round begins with its first refusal: judge what comes from here on
            self._round_answers = self._round_refused = 0
        self._round_answers += 1
        self._round_refused += 1
        self._pending = kind
        self._decide(now)

    def read_limits(
        self, now: float, limits: RateLimits, in_flight: int, refused: bool = False
    ) -> None:
        """An answer's quota headers (if any): with them the headers pace, not refusals.
        ``in_flight``: requests sent and not answered; ``refused``: the answer was a 429.
        """
        if limits.remaining is None:
            return
        self._tick(now)
        self.quota.read(now, limits, in_flight, refused)  # (its own time: a reset counts from it)
        if self.quota.active and self.phase is not Phase.HEADERS:
            self.phase = Phase.HEADERS
            self.hold = Hold()
            self._trials.pop(Refusal.THROTTLE, None)
            self._probe_from = None
        elif not self.quota.active and self.phase is Phase.HEADERS:
            self.phase = Phase.HOLDING if self.rate is not None else Phase.OPEN

    def hold_all(self, now: float, seconds: float) -> None:
        """The server asked everyone to wait (a 503 with ``Retry-After``)."""
        self._hold(self._tick(now), seconds, "retry-after")

    # -- the steps ---------------------------------------------------------------------------

    def _tick(self, now: float) -> float:
        """The time a transition acts at: ``now``, or the latest time seen if that is later
        (an event that reaches the law late acts when it arrives; only its latency is its own).
        """
        if now > self._now:
            self._now = now
        return self._now

    def _measure_latency(self, sample: float) -> None:
        """Smooth the send-to-answer time (the first answer sets it)."""
        if self._latency_samples == 0:
            self.latency = sample
        else:
            self.latency += 0.1 * (sample - self.latency)
        self._latency_samples += 1

    def _blocked(self, now: float, sent_at: float) -> bool:
        if self.phase is Phase.HEADERS or sent_at < self.hold.set_at:
            return False
        if self._probe_pace is not None:
            return True  # a probe of a closed limit: still closed
        return self._streak >= BLOCKED_STREAK and now - self._last_ok > max(
            2.0 * self.latency, BLOCKED_QUIET
        )

    def _window_reopened(self, sent_at: float) -> None:
        """A limit closed for seconds let a probe through (sent at ``sent_at``): a window
        reopened. What got through since the last one opened is its quota; it opened between
        the last refused probe and this one (the span is a guess: no Retry-After told it).
        """
        held, started = self._window_oks - 1, self._window_started
        told = self._window_quota is not None and not self._window_guessed
        if held >= 2 and started is not None and not told:
            span = sent_at - started  # (at most: it opened before this one went)
            if self._window_guessed and self._probe_refused < started:
                # open at the first ask: it may have opened sooner; ask sooner next time
                span *= WINDOW_SOONER
            self._window_quota, self._window_guessed = held, True
            self._window_span = max(span, 1e-3)
        self._window_from = self._window_started = sent_at
        self._window_sent = self._window_answered = self._window_oks = 1

    def _window_spent(self, now: float, sent_at: float, retry_after: float | None) -> bool:
        """A throttle without a long wait for a request sent beyond a guessed window's quota:
        the window is spent. Everyone waits until it should reopen (as if a Retry-After said
        so), then one request asks whether it did.
        """
        started, quota = self._window_started, self._window_quota
        if not self._window_guessed or started is None or quota is None:
            return False
        if retry_after is not None and retry_after > LONG_WAIT:
            return False
        reopens = started + self._window_span
        if sent_at < self._window_from or self._window_oks < quota or reopens - now <= LONG_WAIT:
            return False
        self._close(now, reopens - now, "window")
        return True

    def _probe_refill(self, sent_at: float) -> float | None:
        """For a request sent while searching up from the probe that reopened a closed limit,
        with no other request through since: the time the limit took to refill that one
        request (from the last refused probe to the one that passed), if known."""
        searching = self._after_block and self.phase is Phase.SEARCHING
        if searching and sent_at >= self._window_from and self._window_oks <= 1:
            return self._reopen_gap
        return None

    def _close(self, now: float, wait: float, reason: str) -> None:
        """The limit is closed: everyone waits ``wait``, then one request a hold asks whether
        it opened. This refusal (and those of requests sent before it) is decided: no round
        judges it later (a probe's refusal left pending cut the pace once the limit opened).
        """
        self._hold(now, wait, reason)
        before = self.pace(now)  # (None: unpaced, as a noise verdict would restore)
        if self.phase is not Phase.MEASURING:
            self._limit_seen = before or math.inf
            self.rate = before or self.min_rate
        self._enter_measuring(now, before)
        if self._probe_pace is None:
            # a new closed spell: a probe refused in an earlier one tells nothing of it
            self._blocked_since, self._probe_refused = now, -math.inf
            self._contact_reopens = math.inf
        self._probe_pace = 1.0 / max(wait, 1e-3)  # one request a hold, until one passes
        self._last_signal = now
        self._pending = None
        self._last_cut = now
        self._round_answers = self._round_refused = 0

    def _hold(self, now: float, seconds: float, reason: str) -> None:
        until = now + seconds
        if until > self.hold.until:
            if self.hold.until < now:
                self.hold.count += 1  # a new hold, not a longer one
            self.hold.until = until
            self.hold.reason = reason
            self.hold.set_at = now

    def _enter_measuring(self, now: float, pace: float | None) -> None:
        """Refusals began: measure what the server admits from here on. What the law did
        before is kept, to be restored if the refusals turn out to be noise.
        """
        self._after_block = False
        self._probe_from = None
        if self.phase is not Phase.MEASURING:
            self._episode_start = now
            self._episode_oks, self._episode_began = 0, self._now
            self._episode_refused = 0
            self._start_trial(Refusal.THROTTLE, pace)
            self.phase = Phase.MEASURING

    def _start_trial(self, kind: Refusal, pace: float | None) -> None:
        if kind not in self._trials:
            before = (pace, self.cap, self.phase, self.slow_start)
            self._trials[kind] = _Trial(kind, before, self._now)

    def _judge(self, trial: _Trial, now: float, at: float, *, refused: bool) -> None:
        """Refusals that go on at the same share while the law slowed down are not the
        limit's (nor a busy server's): noise. Undo what they did, and from now on refusals at
        about that share pass. (An answer from before the trial began, reported late by a
        fleet, says nothing of it.)
        """
        if at < trial.began:
            return
        measure = self.cap if trial.kind is Refusal.BUSY else (self.pace(now) or math.inf)
        share = trial.add(refused, measure, self._noise[trial.kind])
        if share is None:
            return
        del self._trials[trial.kind]
        self._noise[trial.kind] = max(self._noise[trial.kind], share)
        pace, cap, phase, slow_start = trial.before
        self.slow_start = slow_start
        if trial.kind is Refusal.BUSY:
            self.cap = max(self.cap, cap)
            return
        self.rate = pace
        self.phase = phase if pace is not None else Phase.OPEN
        if self.phase in (Phase.MEASURING, Phase.SEARCHING):
            self.phase = Phase.HOLDING
        self._probe_pace = None
        self._contact_reopens = math.inf
        self._probe_from = None
        self._last_signal = -math.inf

    def _decide(self, now: float) -> None:
        """A round with a refusal: once it has enough answers to say how many were refused,
        cut (or, within the learned noise, let it pass).
        """
        kind = self._pending
        assert kind is not None
        if self.phase is Phase.OPEN and kind is Refusal.THROTTLE and self._contact_at is None:
            verdict = self._noise_verdict(kind)
            if verdict is None:
                return
            self._pending = None
            if verdict:
                self._round_answers = self._round_refused = 0
                return
            # First contact: judge by the answers of the next round trip.
            self.slow_start = False
            self._contact_at = now
            self._contact = [1, 1, 0, 0]
            self._contact_paced = None
            self._contact_last = self._last_sent
            self._contact_waited = False
            # nothing more leaves until the answers in flight tell what this was
            self._hold(now, max(2.0 * self.latency, 0.01), "first contact")
            return
        if self._round_answers < ROUND_ANSWERS and not self._telling(kind, now):
            return
        verdict = self._noise_verdict(kind)
        if verdict is None:
            return  # too few answers yet to tell this round from the learned noise
        self._pending = None
        if verdict:
            self._round_answers = self._round_refused = 0  # a round of noise: start anew
            return
        if kind is Refusal.BUSY:
            self._cut_cap(now)
        else:
            self._last_signal = now
            self._cut_rate(now)

    def _at_contact_pace(self, sent_at: float) -> bool:
        """Whether a request left at the first contact's own pace (its wait was over)."""
        return self._contact_paced is not None and sent_at >= self._contact_paced

    def _contacted(self, now: float, at: float, sent_at: float) -> None:
        """First contact: once a round trip of answers came since the first refusal, the
        refused share tells a limit (the server's burst is spent: what it admits since is its
        limit) from refusals at random (few, among many successes). ``at``: when the latest
        of them was answered (a fleet reports answers late: they came over that span);
        ``sent_at``: when it was sent.
        """
        start = self._contact_at
        assert start is not None
        if self._contact_last is not None and sent_at >= self._contact_last:
            self._contact_last = None  # every request in flight at the first refusal is in
        answers, refused, oks, paced = self._contact
        span = at - start
        if answers < CONTACT_ANSWERS or span < max(self.latency, 0.005):
            return
        share = refused / answers
        if share < CONTACT_SHARE and self._contact_last is not None:
            # few refused so far, but a burst's successes come first and its refusals maybe
            # just after: no verdict of few refusals before every request in flight is in
            return
        self._contact_at = None
        if share < CONTACT_SHARE and answers - paced < CONTACT_ANSWERS:
            # Few refused, but too few of them left unpaced: the others left at the first
            # contact's own pace, which a limit above it does not refuse. Neither noise nor
            # proof that unpaced is safe: search up from that pace (a refusal on the way is
            # a rate signal).
            self.rate = max(HEADROOM * (oks + 1) / span, self.min_rate)
            self.phase = Phase.SEARCHING
            self._decided(now)
            return
        if share < CONTACT_SHARE:
            # refused at random, it seems: no pace; refusals at about this share are noise
            self._noise[Refusal.THROTTLE] = max(self._noise[Refusal.THROTTLE], share)
            self._decided(now)
            return
        # From here on, every success is the limit's refill (the successes so far may have
        # spent what was left of a burst): measure from now.
        self._enter_measuring(now, None)
        if self.hold.reason == "first contact":
            self.hold.until = min(self.hold.until, now)  # the first contact's wait is over
        if oks <= 1 and share >= CLOSED_SHARE:
            # everything refused: the limit is closed; wait (the Retry-After, else a
            # backoff), then ask one request at a time
            wait = self._retry_after or FIRST_BACKOFF
            self._hold(now, wait, "blocked")
            self._probe_pace = 1.0 / max(wait, 1e-3)
            self._blocked_since = now  # (so a window that reopens later is told by it)
            self._contact_reopens = self.hold.until
        bound = HEADROOM * (oks + 1) / span
        self.rate = max(bound, self.min_rate)
        # refused at about the rate the answers came at: a search goes back up to near it
        self._limit_seen = max(self.rate, answers / span)
        self._last_signal = now
        self._decided(now)

    def _cut_rate(self, now: float) -> None:
        """A round of throttles that is a rate signal."""
        pace = self.pace(now)
        share = self._round_refused / max(self._round_answers, 1)
        if pace is None:
            return  # unpaced: first contact is judged by _contacted, not here
        # the limit lies under the pace it was met at, and near what the server admitted
        # lately (a search overshoots by what it grew while a burst hid the limit)
        seen = min(pace, self._admitted(now, pace) or pace)
        if self.phase is Phase.MEASURING:
            young = now - self._episode_start < max(4.0 * self.latency, 0.05)
            if share < 0.5 or pace < (self.rate or math.inf) or young:
                return  # refusals while measuring: the bound follows what gets through
            new = 0.5 * pace  # refused more often than not, the bound not yet telling
        else:
            new = CUT * seen  # a probe or a search went over the limit: step back, measure
            held = self._probe_from
            if self.phase is Phase.HOLDING and held is not None and pace <= PROBE_BACK * held:
                # a probe met the limit not far above the pace that held before it: the
                # limit lies between them (a burst hid it while the probe grew); go back
                new = min(new, held)
        self._limit_seen = seen
        self._enter_measuring(now, pace)
        self.rate = max(new, self.min_rate)
        self._decided(now)

    def _cut_cap(self, now: float) -> None:
        """A busy server's 503 that starts a new round: fewer requests at once."""
        self._start_trial(Refusal.BUSY, self.rate)
        self.cap = max(1.0, self.cap * self.decrease)
        self._decided(now)

    def _decided(self, now: float) -> None:
        self._last_cut = now
        self._last_growth = now
        self._round_answers = 0
        self._round_refused = 0
        self.cuts += 1

    def _telling(self, kind: Refusal, now: float) -> bool:
        """Whether one refusal decides a round: a limit was met before, no noise was
        learned, and the pace is so slow that waiting for more answers would take longer than
        a search's doubling step (at 5 requests/s, two more answers cost 0.4 s and likely a
        second refusal).
        """
        if self._noise[kind] >= NOISE_FLOOR or self.phase not in (Phase.HOLDING, Phase.SEARCHING):
            return False
        pace = self.pace(now)
        return pace is not None and (ROUND_ANSWERS - 1) / pace > SEARCH_DOUBLING

    def _admitted(self, now: float, pace: float) -> float | None:
        """Successes per second lately (``None``: too few to tell): over ``ADMITTED_SPAN``, or
        over a few of ``pace``'s intervals if longer.
        """
        oks = [t for t in self._oks if t > now - max(ADMITTED_SPAN, ADMITTED_SENDS / pace)]
        if len(oks) < 4:
            return None
        return len(oks) / max(now - oks[0], 1e-3)

    def _noise_verdict(self, kind: Refusal) -> bool | None:
        """Whether the refusals of the current round are noise (``None``: too few answers
        yet to tell). With no noise learned, any refusal is a signal.
        """
        noise = self._noise[kind]
        if noise < NOISE_FLOOR:
            return False

        def most(answers: int) -> float:
            # within the margin, or within what chance gives that noise in so few answers
            expected = answers * noise
            chance = expected + NOISE_SPREAD * math.sqrt(expected * (1.0 - noise)) + 1.0
            return max(NOISE_MARGIN * expected, chance)

        whole = max(10, min(int(3.0 / noise), 100))  # the answers a round needs ...
        if self._round_refused > most(whole):
            return False  # ... unless it already has more refusals than noise gives in them
        n = self._round_answers
        if n < whole:
            return None
        return self._round_refused <= most(n)

    def _grow(self, now: float) -> None:
        """A success: leave MEASURING after a quiet spell; probe upward while the pace binds."""
        rate = self.rate
        if rate is None or self.phase is Phase.HEADERS:
            return
        dt = now - self._last_growth
        self._last_growth = now
        pace = self.pace(now)
        assert pace is not None
        quiet = now - max(self._last_signal, self.hold.until)
        if self.phase is Phase.MEASURING:
            if quiet >= max(1.0, 4.0 / pace, 4.0 * self.latency):
                # no refusal for a while at this pace: it is under the limit (so the
                # refusals were not noise: slowing down ended them). Far under the pace
                # where the limit was last met: search back up to near it.
                oks = self._episode_oks
                # (a measure that spans a closed limit's holds is no measure: search)
                # (refused in its second half: the pace was the limit's until lately)
                halfway = (self._episode_start + now - quiet) / 2
                measured = (
                    oks >= MEASURE_SUCCESSES
                    and self._episode_refused > 0
                    and self._last_refusal >= halfway
                    and pace < self.rate_cap()
                    and self.hold.set_at < self._episode_start
                )
                if measured:
                    # what it admitted while refusing, without the bound's benefit of doubt
                    span = max(now - self._episode_start, 1e-3)
                    pace = max(min(pace, HEADROOM * oks / span), self.min_rate)
                    self._limit_seen = pace / HEADROOM
                self.rate = pace
                if now - self._last_refusal >= quiet:
                    # no refusal at all since: slowing down ended them, they were the limit's
                    # (refusals that went on, judged noise round by round, were noise)
                    self._noise[Refusal.THROTTLE] *= 0.5
                far = not measured and pace < SEARCH_UP_TO * self._limit_seen * HEADROOM
                self.phase = Phase.SEARCHING if far else Phase.HOLDING
                if now - self._last_refusal >= quiet:
                    self._trials.pop(Refusal.THROTTLE, None)  # ended: the limit's
            return
        if dt <= 0 or now - self._last_bound > max(1.0, 2.0 / pace):
            return  # pacing is not what holds requests back: the pace holds
        if self.phase is Phase.SEARCHING:
            # double every few round trips, and (unless a closed limit just opened) only
            # after a few paced sends, so a low limit is not overshot by much; at most
            # doubling with one success (the time since the last may span a hold)
            step = max(SEARCH_DOUBLING, 2.0 * self.latency)
            if not self._after_block:
                step = max(step, SEARCH_SENDS / rate)
            grown = rate * 2.0 ** min(min(dt, 1.0) / step, 1.0)
            top = SEARCH_UP_TO * self._limit_seen
            if grown >= top:
                grown, self.phase = min(grown, max(top, rate)), Phase.HOLDING
            self.rate = grown
            return
        quiet_needed = max(QUIET_SECONDS, QUIET_SUCCESSES / pace)
        if quiet < quiet_needed:
            return
        if self._probe_from is None:
            self._probe_from = rate
        if rate < PROBE_NEAR * self._limit_seen:
            speed = self.probe  # near where the limit was last met: creep
            self._beyond = now
        else:
            # past it with no refusal: the limit rose; probe ever faster
            speed = min(MAX_PROBE, self.probe * 2.0 ** ((now - self._beyond) / PROBE_DOUBLING))
        self.rate = rate * (1.0 + min(speed * min(dt, 1.0), PROBE_STEP))


# -- snapshots: plain JSON data, tagged ("$") where JSON has no type of its own -----------------

_ENUMS: dict[str, type[enum.Enum]] = {"Phase": Phase, "Refusal": Refusal}
_CLASSES: dict[str, type] = {"Law": Law, "Hold": Hold, "QuotaReader": QuotaReader, "_Trial": _Trial}
_NAMES: dict[type, frozenset[str]] = {}


def _names(cls: type) -> frozenset[str]:
    """The attributes an instance of one of the law's classes has."""
    names = _NAMES.get(cls)
    if names is None:
        if attrs.has(cls):
            names = frozenset(f.name for f in attrs.fields(cls))
        elif "__slots__" in vars(cls):
            names = frozenset(vars(cls)["__slots__"])
        else:
            example = Law(max_concurrency=1) if cls is Law else cls()
            names = frozenset(vars(example))
        _NAMES[cls] = names
    return names


def _encode(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$": "float", "v": repr(value)}
    if isinstance(value, enum.Enum):
        return {"$": type(value).__name__, "v": value.value}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, tuple):
        return {"$": "tuple", "v": [_encode(item) for item in value]}
    if isinstance(value, deque):
        return {"$": "deque", "v": [_encode(item) for item in value], "maxlen": value.maxlen}
    if isinstance(value, dict):
        return {"$": "dict", "v": [[_encode(k), _encode(v)] for k, v in value.items()]}
    cls = type(value)
    name = cls.__name__
    if _CLASSES.get(name) is not cls:
        raise TypeError(f"a snapshot of the law cannot hold a {name}")
    if hasattr(value, "__dict__"):
        fields = vars(value)
    else:
        fields = {n: getattr(value, n) for n in _names(cls)}
    return {"$": name, "v": {n: _encode(v) for n, v in fields.items()}}


def _decode(data: object) -> object:
    if isinstance(data, list):
        return [_decode(item) for item in data]
    if not isinstance(data, dict):
        if data is None or isinstance(data, bool | int | float | str):
            return data
        raise TypeError(f"not JSON data: {type(data).__name__}")
    tag, value = data["$"], data["v"]
    if tag == "float":
        if value not in ("inf", "-inf", "nan"):
            raise ValueError(f"not a float: {value!r}")
        return float(value)
    if tag == "tuple":
        return tuple(_decode(item) for item in value)
    if tag == "deque":
        maxlen = data["maxlen"]
        if maxlen is not None and (not isinstance(maxlen, int) or isinstance(maxlen, bool)):
            raise ValueError(f"not a deque's length: {maxlen!r}")
        return deque((_decode(item) for item in value), maxlen=maxlen)
    if tag == "dict":
        return {_decode(k): _decode(v) for k, v in value}
    if tag in _ENUMS:
        return _ENUMS[tag](value)
    cls = _CLASSES.get(tag)
    if cls is None or not isinstance(value, dict):
        raise ValueError(f"not a type of the law: {tag!r}")
    if set(value) != _names(cls):
        raise ValueError(f"{tag} has other attributes: {sorted(set(value) ^ _names(cls))}")
    obj: object = object.__new__(cls)
    for name, item in value.items():
        object.__setattr__(obj, name, _decode(item))
    return obj
