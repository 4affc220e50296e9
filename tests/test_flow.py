"""The flow control (the gate), driven by a fake clock: exact and instant, plus its thread and
event-loop behaviour with real loops.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import pytest

from nebius_datasets_async import APITimeoutError, Failure, FlowControl, InvalidArgumentError
from nebius_datasets_async._protocol import RateLimits

NONE = RateLimits()


class FakeClock:
    """A clock that only moves when told to, and a sleep that moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def make(clock: FakeClock, **kwargs: Any) -> FlowControl:
    kwargs.setdefault("max_concurrency", 64)
    return FlowControl(clock=clock, sleep=clock.sleep, **kwargs)


async def answer(flow: FlowControl, clock: FakeClock, n: int, *, spacing: float = 0.0) -> None:
    """Admit and answer ``n`` requests, ``spacing`` seconds apart."""
    for _ in range(n):
        ticket = await flow.admit()
        clock.now += spacing
        flow.on_answer(ticket, NONE)


async def test_concurrency_starts_gentle_and_grows_with_answers() -> None:
    """The cap starts at initial_concurrency and grows by half a place per answer (slow
    start: x1.5 a round trip).
    """
    clock = FakeClock()
    flow = make(clock, initial_concurrency=2, max_concurrency=8)
    a, b = await flow.admit(), await flow.admit()
    third = asyncio.ensure_future(flow.admit())
    await asyncio.sleep(0)
    assert not third.done()
    assert flow.state().waiting == 1
    flow.on_answer(a, NONE)  # frees a place (the cap grows to 2.5): the waiter gets it
    ticket = await asyncio.wait_for(third, 1)
    assert flow.state().concurrency == 2
    flow.on_answer(b, NONE)
    flow.on_answer(ticket, NONE)
    assert flow.state().concurrency == 3
    assert flow.state().in_flight == 0


async def throttle(flow: FlowControl, n: int) -> None:
    """``n`` requests admitted together, all throttled (no Retry-After)."""
    tickets = [await flow.admit() for _ in range(n)]
    for ticket in tickets:
        flow.on_throttle(ticket, None, NONE)


async def paced(flow: FlowControl, clock: FakeClock, limit: float) -> float:
    """Drive ``flow`` against a server admitting ``limit`` requests/s until its pace is
    measured (first contact, then the throttle that ends the search); return the pace.
    """
    await answer(flow, clock, int(limit / 2), spacing=1 / limit)
    await throttle(flow, 3)  # first contact
    await answer(flow, clock, int(limit), spacing=1 / limit)
    await throttle(flow, 3)  # ends the search: measured
    rate = flow.state().rate
    assert rate is not None
    return rate


async def test_waiters_are_served_first_come_first_served() -> None:
    """Callers waiting for a place get it in the order they asked."""
    clock = FakeClock()
    flow = make(clock, initial_concurrency=1, max_concurrency=1)
    first = await flow.admit()
    order: list[int] = []

    async def wait(i: int) -> None:
        t = await flow.admit()
        order.append(i)
        flow.on_answer(t, NONE)

    tasks = [asyncio.ensure_future(wait(i)) for i in range(5)]
    await asyncio.sleep(0)
    flow.on_answer(first, NONE)
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert order == [0, 1, 2, 3, 4]


async def test_cancelled_waiter_passes_its_place_on() -> None:
    """A waiter cancelled after being handed a place gives it to the next one."""
    clock = FakeClock()
    flow = make(clock, initial_concurrency=1, max_concurrency=1)
    first = await flow.admit()
    doomed = asyncio.ensure_future(flow.admit())
    nxt = asyncio.ensure_future(flow.admit())
    await asyncio.sleep(0)
    flow.on_answer(first, NONE)  # the place goes to `doomed` ...
    doomed.cancel()  # ... which never takes it
    ticket = await asyncio.wait_for(nxt, 1)
    flow.on_answer(ticket, NONE)
    assert flow.state().in_flight == 0


async def test_unpaced_until_the_first_throttle() -> None:
    """Without a throttle nothing is paced; the first one starts the pace at a quarter of
    what got through (which counts the server's burst too), then searches upward.
    """
    clock = FakeClock()
    flow = make(clock)
    await answer(flow, clock, 100, spacing=0.005)  # 200 req/s got through for 0.5 s
    assert flow.state().rate is None
    assert clock.slept == []
    await throttle(flow, 3)
    first = flow.state().rate
    assert first == pytest.approx(0.25 * 200, rel=0.05)
    assert flow.state().pacing == "measured"
    await answer(flow, clock, 60)  # back to back: the pace binds, and doubles as it searches
    searched = flow.state().rate
    assert searched is not None
    assert searched > 2 * first


async def test_throttle_while_saturated_measures_the_limit() -> None:
    """A throttle after the search sets the pace just under what the server admitted over
    the last round trips.
    """
    clock = FakeClock()
    flow = make(clock)
    await paced(flow, clock, 100)
    for _ in range(100):  # the server admits 100 req/s for a second, then throttles
        t = await flow.admit()
        flow.on_answer(t, NONE)
        clock.now += 0.01
    await throttle(flow, 3)
    assert flow.state().rate == pytest.approx(0.97 * 100, rel=0.1)


async def test_rare_throttles_among_many_successes_are_noise() -> None:
    """A throttle or two among a second's worth of successes (a server refusing a tiny share
    at random) does not pace anything; a few percent does.
    """
    clock = FakeClock()
    flow = make(clock)
    await answer(flow, clock, 200, spacing=0.005)
    await throttle(flow, 2)  # 1% of the last second's answers
    assert flow.state().rate is None
    await throttle(flow, 3)  # 2.5%
    assert flow.state().rate is not None


async def test_throttles_from_before_a_cut_are_one_signal() -> None:
    """Throttles answering requests admitted before the last cut do not cut again."""
    clock = FakeClock()
    flow = make(clock)
    await answer(flow, clock, 20, spacing=0.01)
    volley = [await flow.admit() for _ in range(10)]
    flow.on_throttle(volley[0], 1.0, NONE)
    rate = flow.state().rate
    assert rate is not None
    for ticket in volley[1:]:
        flow.on_throttle(ticket, 1.0, NONE)
    assert flow.state().rate == rate
    assert flow.state().cuts == 1


async def test_only_the_throttled_request_waits_retry_after() -> None:
    """A 429 with Retry-After does not pause the gate: the next request is only paced."""
    clock = FakeClock()
    flow = make(clock)
    await answer(flow, clock, 50, spacing=0.01)
    flow.on_throttle(await flow.admit(), 30.0, NONE)
    assert flow.state().paused_for == 0
    before = clock.now
    await flow.admit()
    assert clock.now - before < 0.1


async def test_a_server_refusing_everything_pauses_the_gate() -> None:
    """A run of throttles with no success for a while (a used-up window) pauses everyone
    for the Retry-After.
    """
    clock = FakeClock()
    flow = make(clock)
    await answer(flow, clock, 10, spacing=0.01)
    clock.now += 0.2
    tickets = [await flow.admit() for _ in range(6)]
    for t in tickets:
        flow.on_throttle(t, 7.0, NONE)
    assert flow.state().paused_for == pytest.approx(7.0)
    before = clock.now
    t = await flow.admit()
    assert clock.now - before == pytest.approx(7.0)
    flow.on_answer(t, NONE)


async def test_503_with_retry_after_pauses_every_request() -> None:
    """A 503 carrying Retry-After pauses the whole gate."""
    clock = FakeClock()
    flow = make(clock)
    flow.on_throttle(await flow.admit(), 2.0, NONE, pause=True)
    before = clock.now
    await flow.admit()
    assert clock.now - before == pytest.approx(2.0)


async def test_pacing_spaces_requests_one_slot_apart() -> None:
    """Once paced at R, requests leave about 1/R apart (the pace creeps up slowly)."""
    clock = FakeClock()
    flow = make(clock)
    rate = await paced(flow, clock, 50)
    clock.now += 0.5
    times = []
    for _ in range(6):
        t = await flow.admit()
        times.append(clock.now)
        flow.on_answer(t, NONE)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g == pytest.approx(1 / rate, rel=0.1) for g in gaps[1:])


async def test_rate_probes_up_only_while_pacing_binds() -> None:
    """A paced rate creeps up while requests wait for slots, and holds when they do not."""
    clock = FakeClock()
    flow = make(clock)
    start = await paced(flow, clock, 50)
    await answer(flow, clock, 100)  # back to back: every one waits for its slot
    grown = flow.state().rate
    assert grown is not None
    assert grown > start
    clock.now += 5
    await answer(flow, clock, 5, spacing=2.0)  # an idle service: pacing does not bind
    assert flow.state().rate == pytest.approx(grown, rel=0.01)


async def test_quota_headers_pace_without_probing() -> None:
    """With remaining and reset headers the pace is what remains over the time to reset."""
    clock = FakeClock()
    flow = make(clock)
    t = await flow.admit()
    flow.on_answer(t, RateLimits(remaining=500, limit=1000, reset=5.0))
    state = flow.state()
    assert state.pacing == "headers"
    assert state.rate == pytest.approx(100)
    await answer(flow, clock, 30)
    assert flow.state().rate == pytest.approx(100)  # no probing


async def test_quota_headers_hold_until_reset_when_nothing_remains() -> None:
    """remaining 0 holds new requests until the reset; no throttle is needed."""
    clock = FakeClock()
    flow = make(clock)
    t = await flow.admit()
    flow.on_answer(t, RateLimits(remaining=0, reset=3.0))
    assert flow.state().paused_for == pytest.approx(3.0)
    before = clock.now
    await flow.admit()
    assert clock.now - before == pytest.approx(3.0)


async def test_overload_cuts_concurrency_once_per_round() -> None:
    """503s without Retry-After cut the cap once for requests in flight together."""
    clock = FakeClock()
    flow = make(clock, initial_concurrency=40, max_concurrency=40)
    tickets = [await flow.admit() for _ in range(20)]
    for t in tickets:
        flow.on_failure(t, Failure.OVERLOAD)
    assert flow.state().concurrency == 28
    t = await flow.admit()
    flow.on_failure(t, Failure.OVERLOAD)
    assert flow.state().concurrency == 19


async def test_budget_pays_for_failures_not_for_busy_servers() -> None:
    """Failures spend the budget (timeouts twice as much); answers give a little back; the
    server counts as busy (not down) while answers came in the last two seconds.
    """
    clock = FakeClock()
    flow = make(clock, retry_budget=20)
    assert flow.retry_allowed(Failure.ERROR)  # 15 left
    assert flow.retry_allowed(Failure.TIMEOUT)  # 5 left
    assert not flow.retry_allowed(Failure.TIMEOUT)
    assert flow.retry_allowed(Failure.ERROR)  # 0 left
    assert not flow.retry_allowed(Failure.ERROR)
    assert not flow.busy()  # nothing succeeded lately: 503s mean an outage
    await answer(flow, clock, 5)
    assert flow.state().budget == 5
    assert flow.busy()  # answers lately: 503s mean a busy server, paced not paid for
    clock.now += 2.5
    assert not flow.busy()


async def test_deadline_while_waiting_raises_and_holds_nothing() -> None:
    """A deadline that passes while waiting raises APITimeoutError; the place is freed."""
    flow = FlowControl(max_concurrency=1, initial_concurrency=1)
    held = await flow.admit()
    loop = asyncio.get_running_loop()
    with pytest.raises(APITimeoutError):
        await flow.admit(deadline=loop.time() + 0.05)
    flow.on_answer(held, NONE)
    assert flow.state().in_flight == 0
    assert flow.state().waiting == 0


def test_bad_settings_are_refused() -> None:
    """Settings are checked at construction with InvalidArgumentError."""
    for kwargs in ({"max_concurrency": 0}, {"decrease": 1.5}, {"retry_budget": -1}):
        with pytest.raises(InvalidArgumentError):
            FlowControl(**kwargs)  # type: ignore[arg-type]


def test_one_flow_serves_many_threads_and_loops() -> None:
    """Places freed in one thread wake callers waiting in other threads' loops; the bound
    holds across them all.
    """
    flow = FlowControl(max_concurrency=3, initial_concurrency=3)
    peak = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    async def work() -> None:
        nonlocal peak
        for _ in range(50):
            ticket = await flow.admit()
            with lock:
                peak = max(peak, flow.state().in_flight)
            await asyncio.sleep(0.0005)
            flow.on_answer(ticket, NONE)

    async def two_tasks() -> None:
        await asyncio.wait_for(asyncio.gather(work(), work()), 20)

    def thread_main() -> None:
        try:
            asyncio.run(two_tasks())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_main) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert peak <= 3
    assert flow.state().requests == 400
    assert flow.state().in_flight == 0


async def test_history_stays_bounded_in_a_long_lived_service() -> None:
    """An hour of answers and throttles without a cut keeps only the last seconds of them."""
    clock = FakeClock()
    flow = make(clock)
    for _ in range(3600):
        ticket = await flow.admit()
        clock.now += 1.0
        flow.on_answer(ticket, NONE)
    assert len(flow._ok_times) <= 3  # type: ignore[attr-defined]
    for _ in range(100):
        ticket = await flow.admit()
        clock.now += 1.0
        flow.on_throttle(ticket, None, NONE)
    assert len(flow._throttle_times) <= 2  # type: ignore[attr-defined]
