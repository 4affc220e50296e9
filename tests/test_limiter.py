"""The adaptive limiter and the retry budget, driven by a fake clock: exact and instant."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from nebius_datasets_async._limiter import AdaptiveLimiter, RetryBudget


class FakeClock:
    """A clock that only moves when told to (or when the limiter sleeps on it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


def limiter(clock: FakeClock, **kwargs: float) -> AdaptiveLimiter:
    return AdaptiveLimiter(
        max_concurrency=int(kwargs.pop("max_concurrency", 8)),
        clock=clock,
        sleep=clock.sleep,
        **kwargs,
    )


async def send(lim: AdaptiveLimiter, clock: FakeClock, n: int, *, ok: bool = True) -> int:
    """Admit and answer ``n`` requests one after another; return the last epoch."""
    epoch = 0
    for _ in range(n):
        epoch = await lim.acquire()
        if ok:
            lim.on_success(epoch)
        lim.release()
    return epoch


async def test_no_pacing_before_the_first_throttle() -> None:
    """Until a throttle, requests are admitted at once, bounded only by concurrency."""
    clock = FakeClock()
    lim = limiter(clock)
    await send(lim, clock, 100)
    assert lim.rate is None
    assert clock.sleeps == []


async def test_a_volley_of_throttles_is_one_cut() -> None:
    """Many 429s for requests admitted before the cut count once (no rate collapse)."""
    clock = FakeClock()
    lim = limiter(clock)
    epochs = [await lim.acquire() for _ in range(8)]
    for _ in range(4):
        lim.on_success(epochs[0])
    clock.now += 0.1
    assert lim.on_throttle(epochs[4], retry_after=None)
    rate = lim.rate
    for epoch in epochs[5:]:
        assert not lim.on_throttle(epoch, retry_after=None)
    assert lim.rate == rate
    assert lim.cuts == 1


async def test_first_cut_starts_from_the_admitted_rate() -> None:
    """The first throttle sets the rate near what the server admitted, not a tiny floor."""
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=64)
    for _ in range(50):  # 50 successes in half a second: 100/s admitted
        epoch = await lim.acquire()
        clock.now += 0.01
        lim.on_success(epoch)
        lim.release()
    epoch = await lim.acquire()
    assert lim.on_throttle(epoch, retry_after=None)
    assert lim.rate == pytest.approx(0.97 * 100 * 1.0, rel=0.05)


async def test_admitted_rate_subtracts_the_burst_after_a_pause() -> None:
    """After a pause the server's burst is not mistaken for its rate."""
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=64)
    # First contact: a volley of 40, of which 20 (the burst) get through at once.
    volley = [await lim.acquire() for _ in range(40)]
    for epoch in volley[:20]:
        lim.on_success(epoch)
    assert lim.on_throttle(volley[20], retry_after=1.0)
    for epoch in volley[21:]:
        lim.on_throttle(epoch, retry_after=1.0)
    for _ in volley:
        lim.release()
    assert lim.burst_estimate == 20
    assert clock.now < lim.pause_until
    # After the pause: 20 (refilled burst) + 100/s for 2 s get through, then a throttle.
    resumed = lim.pause_until
    clock.now = resumed
    for i in range(220):
        epoch = await lim.acquire()
        clock.now = max(clock.now, resumed + i * (2.0 / 220))
        lim.on_success(epoch)
        lim.release()
    epoch = await lim.acquire()
    clock.now = resumed + 2.0
    assert lim.on_throttle(epoch, retry_after=1.0)
    assert lim.rate is not None
    assert lim.rate == pytest.approx(0.97 * 100, rel=0.05)


async def test_pacing_spaces_requests_one_slot_apart() -> None:
    """With a rate set, consecutive requests are admitted 1/rate seconds apart: no herd."""
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=64)
    lim.rate = 50.0
    times = []
    for _ in range(6):
        await lim.acquire()
        times.append(clock.now)
        lim.release()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[1:] == pytest.approx([0.02] * 4)


async def test_retry_after_pauses_every_new_request() -> None:
    """While a server-given wait is in force, nothing is admitted; then one slot apart."""
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=64)
    epoch = await lim.acquire()
    lim.release()
    lim.on_throttle(epoch, retry_after=2.5)
    pause_end = lim.pause_until
    assert pause_end == pytest.approx(clock.now + 2.5)
    assert lim.rate is not None
    lim.rate = 10.0
    times = []
    for _ in range(3):
        await lim.acquire()
        times.append(clock.now)
        lim.release()
    assert times[0] >= pause_end
    assert times[1] - times[0] == pytest.approx(0.1)
    assert times[2] - times[1] == pytest.approx(0.1)


async def test_concurrency_cap_falls_on_throttle_and_recovers() -> None:
    """The cap is cut on a counted throttle and rises by one per cap's worth of successes."""
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=40)
    epoch = await lim.acquire()
    lim.release()
    lim.on_throttle(epoch, retry_after=None)
    assert lim.concurrency_cap == pytest.approx(28.0)
    lim.rate = 1e9  # take pacing out of the picture
    cap = lim.concurrency_cap
    await send(lim, clock, 28)
    assert lim.concurrency_cap == pytest.approx(cap + 1, abs=0.05)


async def test_concurrency_cap_blocks_beyond_it() -> None:
    """No more than the cap are admitted at once; a release lets the next one in."""
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=2)
    await lim.acquire()
    await lim.acquire()
    third = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    assert not third.done()
    lim.release()
    await asyncio.wait_for(third, 1)
    assert lim.active == 2


async def test_steady_random_throttles_cannot_collapse_the_rate() -> None:
    """A server that throttles a share of requests at any rate leaves at least half the peak."""
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=64)
    for _ in range(200):  # 200/s for a second, unthrottled
        epoch = await lim.acquire()
        clock.now += 0.005
        lim.on_success(epoch)
        lim.release()
    for _ in range(200):  # then one throttle every 20 requests, for a long time
        for _ in range(19):
            await send(lim, clock, 1)
        epoch = await lim.acquire()
        lim.release()
        lim.on_throttle(epoch, retry_after=None)
    assert lim.rate is not None
    assert lim.rate >= 0.5 * 0.5 * 200  # half of a peak that may have halved once


def test_budget_stops_retries_when_most_requests_fail() -> None:
    """500 tokens at 5 a retry: 100 retries, then none until successes refill it."""
    budget = RetryBudget()
    allowed = sum(budget.try_spend() for _ in range(1000))
    assert allowed == 100
    assert budget.denied == 900
    for _ in range(5):
        budget.on_success()
    assert budget.try_spend()
    assert not budget.try_spend()


def test_budget_timeouts_cost_more_and_refills_are_capped() -> None:
    """A timeout retry costs 10; successes never push the budget past its capacity."""
    budget = RetryBudget(capacity=20)
    assert budget.try_spend(timeout=True)
    assert budget.try_spend(timeout=True)
    assert not budget.try_spend(timeout=True)
    for _ in range(100):
        budget.on_success()
    assert budget.tokens == 20
