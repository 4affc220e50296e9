"""Client-side flow control for bulk runs: an adaptive pacer and a shared retry budget.

Both are plain state machines driven by a clock the caller passes in, so their maths is tested
without sleeping; ``AdaptiveLimiter.acquire`` is the only coroutine.

How the limiter behaves (the README's bulk section says the same for users):

- Until the first throttle (429, or 503) it does nothing but bound concurrency.
- A throttle cuts the send rate and the concurrency cap by ``decrease`` (0.7: a 30% cut) at most
  once per *epoch*: answers to requests that were admitted before the last cut describe the old
  rate, not the new one, so a volley of 429s from one burst is one signal, not sixty-four.
- The first cut starts from the rate actually measured over the last second (what was being
  sent), not from a tiny floor.
- While requests succeed the rate rises additively by ``increase`` of the rate at the last cut
  per second (AIMD), and the concurrency cap by one per cap's worth of successes.
- A server-given ``Retry-After`` pauses every new request until it has passed; when the pause
  ends, requests leave one pacing slot apart (``1 / rate`` seconds), never as a herd.
- Requests are paced by reservation (each one books the next free slot), so waiting workers do
  not wake up and race each other.
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


class AdaptiveLimiter:
    """Paces and bounds the requests of one bulk run; see the module docstring."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        decrease: float = 0.7,
        increase: float = 0.05,
        min_rate: float = 0.5,
        burst: float = 1.0,
    ) -> None:
        if not 0 < decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        self._clock = clock
        self._sleep = sleep
        self.max_concurrency = max_concurrency
        self.decrease = decrease
        self.increase = increase
        self.min_rate = min_rate
        self.burst = burst
        #: Requests per second, or ``None`` while no throttle has been seen.
        self.rate: float | None = None
        #: How many requests may be in flight; ``float`` so that AIMD can add fractions.
        self.concurrency_cap: float = float(max_concurrency)
        self.active = 0
        self.epoch = 0
        self.cuts = 0
        self.pause_until = -math.inf
        self._next_slot = -math.inf
        self._rate_at_cut = 0.0
        self._last_increase = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Sends counted over a sliding window of two one-second buckets.
        self._bucket_start = clock()
        self._bucket_sends = 0
        self._previous_sends = 0

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
                slot = max(self._next_slot, now - self.burst * interval, self.pause_until)
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
            self._count_send(now)
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

    def _count_send(self, now: float) -> None:
        elapsed = now - self._bucket_start
        if elapsed >= 1.0:
            self._previous_sends = self._bucket_sends if elapsed < 2.0 else 0
            self._bucket_sends = 0
            self._bucket_start = now
        self._bucket_sends += 1

    def send_rate(self) -> float:
        """Requests per second sent over about the last second."""
        now = self._clock()
        elapsed = now - self._bucket_start
        if elapsed >= 2.0:
            return 0.0
        if elapsed >= 1.0:
            return self._bucket_sends / elapsed
        return (self._previous_sends * (1.0 - elapsed) + self._bucket_sends) / 1.0

    # -- feedback ----------------------------------------------------------------------------

    def on_success(self) -> None:
        """A request succeeded: raise the rate (AIMD, additive) and the concurrency cap."""
        if self.concurrency_cap < self.max_concurrency:
            self.concurrency_cap = min(
                float(self.max_concurrency), self.concurrency_cap + 1.0 / self.concurrency_cap
            )
            self._wake_next()
        rate = self.rate
        if rate is None:
            return
        now = self._clock()
        dt = now - self._last_increase
        if dt > 0:
            self._last_increase = now
            self.rate = rate + self.increase * self._rate_at_cut * min(dt, 1.0)

    def on_throttle(self, epoch: int, retry_after: float | None) -> bool:
        """A request admitted in ``epoch`` was throttled (429, or 503). Cut the rate and the
        concurrency cap once per epoch and pause for ``retry_after`` seconds if given. Returns
        whether this call cut.
        """
        now = self._clock()
        if retry_after is not None and retry_after > 0:
            self.pause_until = max(self.pause_until, now + retry_after)
        if epoch != self.epoch:
            return False  # admitted before the last cut: already accounted for
        measured = self.send_rate()
        base = self.rate if self.rate is not None else max(measured, self.min_rate)
        if self.rate is not None and measured > 0:
            base = min(base, max(measured, self.min_rate))
        self.rate = max(self.min_rate, base * self.decrease)
        self._rate_at_cut = self.rate
        self._last_increase = max(now, self.pause_until)
        self._next_slot = max(self._next_slot, now)
        self.concurrency_cap = max(1.0, self.concurrency_cap * self.decrease)
        self.epoch += 1
        self.cuts += 1
        return True
