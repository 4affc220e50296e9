"""Client-side flow control for bulk runs: an adaptive pacer and a shared retry budget.

Both are plain state machines driven by a clock the caller passes in, so their maths is tested
without sleeping; ``AdaptiveLimiter.acquire`` is the only coroutine.

How the limiter behaves (the README's bulk section says the same for users):

- Until the first throttle (a 429, or a 503 with Retry-After) it only bounds concurrency.
- Throttles are counted once per *epoch*: answers to requests admitted before the last cut
  describe the old rate, not the new one, so a volley of 429s from one burst is one signal;
  and at most one is counted per half second.
- A counted throttle sets the send rate to the **admitted rate**, measured: the successes of
  this epoch, less the burst the server allows (learnt from the first throttle, and only when
  a pause let the server refill), over the time since sending resumed, times ``headroom``.
  Against a token bucket this is its refill rate. The cut is at least 3% and at most 75% of
  the rate actually sent, and the rate never falls below ``floor`` (half) of the best admitted
  rate of the run (which itself halves every minute), so a server that throttles a steady
  share of requests whatever the rate cannot drive it to nothing. A throttle that came less
  than half a second after sending resumed measures the limit only roughly, so the rate is
  then set 30% above the estimate: the next throttle, if any, comes after a longer span and
  measures it well.
- Between throttles the rate creeps up by ``probe`` of itself per second, to follow a limit
  that rises.
- The concurrency cap falls by ``decrease`` on each counted throttle (not below a quarter of
  the maximum) and rises by one per cap's worth of successes (AIMD), for servers that limit
  concurrency rather than rate.
- A server-given ``Retry-After`` pauses every new request until it has passed; when it ends,
  requests leave one pacing slot apart (``1 / rate`` seconds), never as a herd.
- Pacing is by reservation (each request books the next free slot), so waiting workers never
  wake up together to race for a token.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable

import attrs

__all__ = ["AdaptiveLimiter", "RetryBudget"]


@attrs.define
class RetryBudget:
    """A retry quota shared by a run (as botocore's retry quota and gRPC retry throttling).

    Each retry after a failure costs ``retry_cost`` tokens (``timeout_cost`` after a timeout);
    each success gives one back. When the tokens run out, failed requests are no longer
    retried, so a run against a dead server ends quickly instead of multiplying its traffic.
    With the defaults the budget holds while fewer than about one request in six fails.
    """

    capacity: float = 500.0
    retry_cost: float = 5.0
    timeout_cost: float = 10.0
    success_refund: float = 1.0
    tokens: float = attrs.field(init=False)
    denied: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self.tokens = self.capacity

    def try_spend(self, *, timeout: bool = False) -> bool:
        """Take the cost of one retry; ``False`` (and nothing taken) when the budget is spent."""
        cost = self.timeout_cost if timeout else self.retry_cost
        if self.tokens < cost:
            self.denied += 1
            return False
        self.tokens -= cost
        return True

    def on_success(self) -> None:
        """A request succeeded: give back a little."""
        if self.tokens < self.capacity:
            self.tokens = min(self.capacity, self.tokens + self.success_refund)


_PEAK_HALF_LIFE = 60.0  # seconds
_RELIABLE_SPAN = 0.5  # seconds of sending before a throttle that make its estimate reliable
_REMEASURE = 1.3
_COOLDOWN = 0.5  # seconds: throttles closer than this to the last cut are the same signal
_PEAK_WINDOW = 0.5  # seconds over which the peak admitted rate is measured


class AdaptiveLimiter:
    """Paces and bounds the requests of one bulk run; see the module docstring."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        decrease: float = 0.7,
        headroom: float = 0.97,
        probe: float = 0.002,
        floor: float = 0.5,
        min_rate: float = 0.5,
        burst: float = 1.0,
    ) -> None:
        if not 0 < decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        self._clock = clock
        self._sleep = sleep
        self.max_concurrency = max_concurrency
        self.decrease = decrease
        self.headroom = headroom
        self.probe = probe
        self.floor = floor
        self.min_rate = min_rate
        self.burst = burst
        now = clock()
        #: Requests per second, or ``None`` while no throttle has been seen.
        self.rate: float | None = None
        #: How many requests may be in flight; ``float`` so that AIMD can add fractions.
        self.concurrency_cap: float = float(max_concurrency)
        self.active = 0
        self.epoch = 0
        self.cuts = 0
        self.pause_until = -math.inf
        #: The burst the server allows after a pause, learnt at the first throttle.
        self.burst_estimate = 0.0
        self._started = now
        self._next_slot = -math.inf
        self._last_growth = now
        self._last_cut = -math.inf
        self._first_sends = 0
        self._first_volley = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Since the last cut: when sending resumed, what was sent and what succeeded.
        self._resumed = now
        self._refilled = False
        self._sends = 0
        self._oks = 0
        # The best admitted rate, over windows of _PEAK_WINDOW seconds.
        self._window_start = now
        self._window_oks = 0
        self._peak = 0.0
        self._peak_at = now

    # -- admission ---------------------------------------------------------------------------

    async def acquire(self) -> int:
        """Wait until a request may be sent; return the epoch it is sent in. Pair with
        ``release()``.
        """
        while True:
            if self.active >= int(self.concurrency_cap):
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                except BaseException:
                    if not waiter.cancelled() and waiter.done():
                        self._wake_next()  # pass on a wake-up we got but cannot use
                    raise
                continue
            now = self._clock()
            if now < self.pause_until:
                await self._sleep(self.pause_until - now)
                continue
            epoch = self.epoch
            rate = self.rate
            if rate is not None:
                interval = 1.0 / rate
                slot = max(self._next_slot, now - self.burst * interval)
                self._next_slot = slot + interval
                if slot > now:
                    self.active += 1  # hold the place while waiting for the slot
                    try:
                        await self._sleep(slot - now)
                    finally:
                        self.active -= 1
                    if self.epoch != epoch or self._clock() < self.pause_until:
                        self._wake_next()
                        continue  # the rate was cut or a pause began: book again
            self.active += 1
            self._sends += 1
            return epoch

    def release(self) -> None:
        """A request admitted by ``acquire()`` has ended."""
        self.active -= 1
        self._wake_next()

    def _wake_next(self) -> None:
        while self._waiters and self.active < int(self.concurrency_cap):
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- feedback ----------------------------------------------------------------------------

    def on_success(self, epoch: int) -> None:
        """A request admitted in ``epoch`` succeeded: count it; raise the concurrency cap and,
        slowly, the rate.
        """
        now = self._clock()
        if epoch == self.epoch:
            self._oks += 1
        self._window_oks += 1
        if now - self._window_start >= _PEAK_WINDOW:
            self._note_peak(now, self._window_oks / (now - self._window_start))
            self._window_start, self._window_oks = now, 0
        if self.concurrency_cap < self.max_concurrency:
            self.concurrency_cap = min(
                float(self.max_concurrency), self.concurrency_cap + 1.0 / self.concurrency_cap
            )
            self._wake_next()
        rate = self.rate
        if rate is not None:
            dt = now - max(self._last_growth, self.pause_until)
            if dt > 0:
                self._last_growth = now
                self.rate = rate * (1.0 + self.probe * min(dt, 1.0))

    def on_throttle(self, epoch: int, retry_after: float | None) -> bool:
        """A request admitted in ``epoch`` was throttled (429, or 503 with Retry-After). Pause for
        ``retry_after`` seconds if given; once per epoch, set the rate from the admitted rate
        and cut the concurrency cap. Returns whether this call cut.
        """
        now = self._clock()
        if retry_after is not None and retry_after > 0:
            self.pause_until = max(self.pause_until, now + retry_after)
        if epoch == 0 and self.cuts:
            self._first_volley += 1  # the rest of the first volley, answered after the cut
        if epoch != self.epoch or now - self._last_cut < _COOLDOWN:
            return False  # admitted before the last cut, or too soon after it: one signal
        self._last_cut = now
        span = max(now - self._resumed, 1e-3)
        sent = max(self._sends / span, self.min_rate)
        if self.cuts == 1 and self._first_volley < 0.25 * self._first_sends:
            # Most of the first volley got through: that throttle was not a drained bucket.
            self.burst_estimate = 0.0
        if self.rate is None:
            # The first throttle: what got through before it is the server's burst (when it
            # came quickly); the rate is what was being admitted.
            self._first_sends = self._sends
            if span <= 1.0:
                self.burst_estimate = float(self._oks)
            admitted = self._oks / max(span, 0.05)
        else:
            drained = self.burst_estimate if self._refilled else 0.0
            admitted = max(0.0, self._oks - drained) / span
        if span < _RELIABLE_SPAN:
            # A quick throttle measures the limit roughly: aim a little above the estimate, so
            # that the next throttle (if any) comes after a long, accurately measured span.
            admitted *= _REMEASURE
        target = self.headroom * min(max(admitted, 0.25 * sent), 0.97 * sent)
        self.rate = max(target, self.floor * self._note_peak(now, 0.0), self.min_rate)
        self.concurrency_cap = max(
            1.0, 0.25 * self.max_concurrency, self.concurrency_cap * self.decrease
        )
        self.epoch += 1
        self.cuts += 1
        self._resumed = max(now, self.pause_until)
        self._refilled = self.pause_until > now
        self._sends = self._oks = 0
        self._last_growth = now
        self._next_slot = max(self._next_slot, self._resumed)
        return True

    def _note_peak(self, now: float, admitted: float) -> float:
        """Record an admitted rate; return the run's best, halving every minute."""
        decay = 0.5 ** ((now - self._peak_at) / _PEAK_HALF_LIFE)
        self._peak = max(self._peak * decay, admitted)
        self._peak_at = now
        return self._peak
