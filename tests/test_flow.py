"""The gate (FlowControl) and its law, on virtual time: exact and instant. A few tests use real
loops and threads, for what only they can show.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest

from nebius_datasets_async import (
    APITimeoutError,
    Failure,
    FlowControl,
    InvalidArgumentError,
    RateLimitError,
)
from nebius_datasets_async._law import (
    COUNTED_STEPS,
    FIRST_BACKOFF,
    HEADROOM,
    NOISE_MOST,
    UNSEEN_WAIT,
    Law,
    Phase,
    QuotaReader,
    Refusal,
    _Trial,
)
from nebius_datasets_async._protocol import RateLimits
from nebius_datasets_async.testing import run_virtual

NONE = RateLimits()


def virtual(body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` on a virtual-time loop."""
    run_virtual(body)


def make(**kwargs: Any) -> FlowControl:
    """A flow on the running (virtual) loop's clock."""
    kwargs.setdefault("max_concurrency", 64)
    return FlowControl(clock=asyncio.get_running_loop().time, **kwargs)


def now() -> float:
    return asyncio.get_running_loop().time()


def paced(flow: FlowControl, rate: float) -> None:
    """Put the law in HOLDING at ``rate`` (as after a measured limit)."""
    flow.law.phase = Phase.HOLDING
    flow.law.rate = rate


async def answer(flow: FlowControl, n: int, *, spacing: float = 0.0) -> None:
    """Admit and answer ``n`` requests, ``spacing`` seconds apart."""
    for _ in range(n):
        ticket = await flow.admit()
        await asyncio.sleep(spacing)
        flow.on_answer(ticket, NONE)


# -- places ---------------------------------------------------------------------------------


async def test_waiters_are_served_first_come_first_served() -> None:
    """Callers waiting for a place get it in the order they asked."""
    flow = FlowControl(max_concurrency=1, initial_concurrency=1)
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
    flow = FlowControl(max_concurrency=1, initial_concurrency=1)
    first = await flow.admit()
    doomed = asyncio.ensure_future(flow.admit())
    nxt = asyncio.ensure_future(flow.admit())
    await asyncio.sleep(0)
    flow.on_answer(first, NONE)  # the place goes to `doomed` ...
    doomed.cancel()  # ... which never takes it
    ticket = await asyncio.wait_for(nxt, 1)
    flow.on_answer(ticket, NONE)
    assert flow.state().in_flight == 0


def test_concurrency_starts_gentle_and_doubles_each_round_trip() -> None:
    """The cap starts at initial_concurrency and grows by one per answer until the first sign
    of pressure (slow start: x2 a round trip).
    """

    async def body() -> None:
        flow = make(initial_concurrency=4, max_concurrency=64)
        tickets = [await flow.admit() for _ in range(4)]
        fifth = asyncio.ensure_future(flow.admit())
        await asyncio.sleep(0)
        assert not fifth.done()
        for t in tickets:
            flow.on_answer(t, NONE)
        assert flow.state().concurrency == 8
        flow.on_answer(await fifth, NONE)

    virtual(body)


# -- the schedule: nothing booked ahead -----------------------------------------------------


def test_a_caller_that_leaves_gives_its_slot_back() -> None:
    """Callers waiting for their pacing slot who leave (deadline, cancellation) hold nothing:
    the callers behind them move up, one slot apart, with no gap where they were.
    """

    async def body() -> None:
        flow = make()
        paced(flow, 10.0)
        await answer(flow, 1)  # the schedule starts
        admitted: list[float] = []

        async def call() -> None:
            t = await flow.admit()
            admitted.append(now())
            flow.on_answer(t, NONE)

        start = now()
        tasks = [asyncio.ensure_future(call()) for _ in range(10)]
        await asyncio.sleep(0.01)
        for task in tasks[2:7]:  # five leave while waiting
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert len(admitted) == 5
        gaps = [b - a for a, b in itertools.pairwise(admitted)]
        assert gaps == pytest.approx([0.1] * 4, abs=0.002)
        assert admitted[-1] - start < 0.5 + 0.01

    virtual(body)


def test_a_change_of_pace_reaches_the_caller_at_the_head_at_once() -> None:
    """The pace in force applies to the caller at the head of the queue: raising it lets the
    queue go faster at once, and changes of pace never stop admissions.
    """

    async def body() -> None:
        flow = make(max_concurrency=64)
        paced(flow, 10.0)
        admitted = 0

        async def call() -> None:
            nonlocal admitted
            t = await flow.admit()
            admitted += 1
            flow.on_answer(t, NONE)

        tasks = [asyncio.ensure_future(call()) for _ in range(400)]
        for i in range(40):  # the pace changes every 50 ms for 2 s
            flow.law.rate = 100.0 if i % 2 else 200.0
            await asyncio.sleep(0.05)
        assert admitted >= 0.9 * 2.0 * 150
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    virtual(body)


def test_a_slot_booked_at_a_pace_since_doubled_comes_at_the_pace_in_force() -> None:
    """A slot booked at a closed limit's probe pace (one request a second) does not hold the
    next request once the pace rose to many times that: it leaves one interval at the new
    pace after the last slot (the search up from a probe that passed waited the whole
    second). A cut, or a rise of less than double, keeps the slot as booked.
    """

    async def body() -> None:
        flow = make()
        paced(flow, 1.0)
        start = now()
        times: list[float] = []

        async def send(rate: float) -> None:
            flow.law.rate = rate
            flow.on_answer(await flow.admit(), NONE)
            times.append(now() - start)

        for rate in (1.0, 1.0, 50.0, 50.0, 30.0, 50.0):
            await send(rate)
        # two at once (an idle gate's slack), then the next a 50th of a second after the
        # second instead of a second; 30/s keeps the slot booked at 50/s, and 50/s after it
        # keeps the one booked at 30/s
        assert times == pytest.approx([0.0, 0.0, 0.02, 0.04, 0.06, 0.06 + 1 / 30], abs=1e-9)

    virtual(body)


def test_deadline_while_waiting_raises_and_holds_nothing() -> None:
    """A deadline that passes while waiting for a place or a slot raises APITimeoutError; the
    place and the slot are free at once.
    """

    async def body() -> None:
        flow = make(max_concurrency=1, initial_concurrency=1)
        held = await flow.admit()
        with pytest.raises(APITimeoutError):
            await flow.admit(deadline=now() + 0.05)
        flow.on_answer(held, NONE)
        assert flow.state().in_flight == 0
        assert flow.state().waiting == 0
        started = now()
        flow.on_answer(await flow.admit(), NONE)  # an idle gate sends at once
        assert now() == started

    virtual(body)


# -- holds -------------------------------------------------------------------------------


def test_a_long_retry_after_holds_everyone_a_short_one_only_its_request() -> None:
    """A Retry-After longer than a second is the rest of a window: everyone waits it. A
    short one concerns the refused request (the retry loop waits it).
    """

    async def body() -> None:
        flow = make()
        await answer(flow, 20, spacing=0.01)
        flow.on_throttle(await flow.admit(), 0.5, NONE)
        assert flow.state().paused_for < 0.05  # a round trip at first contact, no more
        flow.on_throttle(await flow.admit(), 30.0, NONE)
        assert flow.state().paused_for == pytest.approx(30.0)
        started = now()
        flow.on_answer(await flow.admit(), NONE)
        assert now() - started == pytest.approx(30.0)

    virtual(body)


def test_a_window_is_spent_as_far_as_the_last_one_held_then_one_at_a_time() -> None:
    """A long Retry-After ends a window: the next window sends what the last one held, then
    one request at a time asks whether more remains (each answer re-checks), so a window's
    end costs one refusal, not a volley as wide as the concurrency cap.
    """

    async def body() -> None:
        flow = make()
        tickets = [await flow.admit() for _ in range(8)]  # slow start: 8 at once
        for ticket in tickets[:5]:
            flow.on_answer(ticket, NONE)  # the window held 5 ...
        flow.on_throttle(tickets[5], 30.0, NONE)  # ... and ends, for 30 s
        for ticket in tickets[6:]:
            flow.on_throttle(ticket, 30.0, NONE)  # (the same signal, sent before it)
        started = now()
        window = [await flow.admit() for _ in range(5)]
        assert now() - started == pytest.approx(30.0)  # waited out once
        sixth = asyncio.ensure_future(flow.admit())
        await asyncio.sleep(1.0)
        assert not sixth.done()  # the sixth waits while the five are in flight ...
        for ticket in window:
            flow.on_answer(ticket, NONE)
        probe = await sixth  # ... and asks, alone, once they are answered
        seventh = asyncio.ensure_future(flow.admit())
        await asyncio.sleep(1.0)
        assert not seventh.done()
        flow.on_answer(probe, NONE)  # more remained: the window is larger than the last
        flow.on_answer(await seventh, NONE)

    virtual(body)


def test_a_first_window_whose_sends_and_answers_interleave_is_counted_whole() -> None:
    """The first window (no span learned yet) counts every success until a long wait ends
    it, however its sends and answers interleave: the next window then sends what it held
    and no more (each send restarted the count, so a window was never learned and every
    window after the first was met with a volley of refusals).
    """

    async def body() -> None:
        flow = make()
        await answer(flow, 6, spacing=0.5)  # one at a time: send, answer, send, ...
        flow.on_throttle(await flow.admit(), 30.0, NONE)  # the window ends, for 30 s
        started = now()
        window = [await flow.admit() for _ in range(6)]
        assert now() - started == pytest.approx(30.0)
        seventh = asyncio.ensure_future(flow.admit())
        await asyncio.sleep(1.0)
        assert not seventh.done()  # the window's count is out: wait for the answers
        for ticket in window:
            flow.on_answer(ticket, NONE)
        flow.on_answer(await seventh, NONE)

    virtual(body)


def test_a_window_learned_from_one_long_wait_ends_with_its_span() -> None:
    """A one-off long Retry-After (a 503 asking for 2 s, a gateway's 429) teaches a "window"
    of what got through before it; once that window's span has passed with no long wait to
    end the next one, requests are not held to its count any more (they were, for good: one
    at a time from then on).
    """

    async def body() -> None:
        flow = make(initial_concurrency=64)
        await answer(flow, 20, spacing=0.01)
        flow.on_throttle(await flow.admit(), 2.0, NONE)  # everyone waits 2 s, once
        await answer(flow, 20)
        await asyncio.sleep(3.0)  # longer than the "window" lasted
        started = now()
        tickets = await asyncio.wait_for(
            asyncio.gather(*(flow.admit() for _ in range(30))), timeout=1.0
        )
        assert now() - started < 0.1
        for ticket in tickets:
            flow.on_answer(ticket, NONE)

    virtual(body)


def test_a_long_retry_after_that_lets_one_request_through_paces_at_one_per_wait() -> None:
    """A "window" that reopens after a 2 s Retry-After to let one request through is a limit
    that refills one request per 2 s: the law paces at that instead of sending a volley at
    every reopening.
    """

    async def body() -> None:
        flow = make()
        flow.law.phase, flow.law.rate = Phase.MEASURING, 50.0  # refused lately, at 50/s
        flow.on_throttle(await flow.admit(), 2.0, NONE)  # everyone waits 2 s
        for _ in range(3):
            flow.on_answer(await flow.admit(), NONE)  # one passes as the wait ends ...
            flow.on_throttle(await flow.admit(), 2.0, NONE)  # ... the next is refused
        assert flow.state().rate == pytest.approx(0.97 / 2.0, rel=0.05)

    virtual(body)


def test_at_a_slow_pace_one_refusal_over_a_met_limit_is_a_signal() -> None:
    """Holding at 2 requests/s with no noise learned, the first refusal cuts the pace: waiting
    for two more answers (a second) would most likely cost a second refusal. At 200/s a
    round still needs three answers (the refusal may be noise; two answers cost 10 ms).
    """

    async def body() -> None:
        slow, fast = make(), make()
        paced(slow, 2.0)
        paced(fast, 200.0)
        for flow in (slow, fast):
            await answer(flow, 3)
            flow.on_throttle(await flow.admit(), None, NONE)
        assert slow.state().cuts == 1
        rate = slow.state().rate
        assert rate is not None
        assert rate < 2.0
        assert fast.state().cuts == 0

    virtual(body)


def test_a_hold_longer_than_max_wait_fails_waiting_callers_within_a_second() -> None:
    """Callers already waiting when a hold longer than they allow begins fail at once with
    RateLimitError carrying when to try again; new callers too.
    """

    async def body() -> None:
        flow = make(max_concurrency=1, initial_concurrency=1)
        held = await flow.admit()
        waiting = asyncio.ensure_future(flow.admit(max_wait=60.0))
        await asyncio.sleep(0.1)
        started = now()
        flow.on_throttle(held, 3600.0, NONE, pause=True)
        with pytest.raises(RateLimitError) as caught:
            await waiting
        assert now() - started < 1.0
        assert caught.value.retry_after == pytest.approx(3600.0, abs=1.0)
        with pytest.raises(RateLimitError):
            await flow.admit(max_wait=60.0)
        assert flow.state().waiting == 0

    virtual(body)


def test_a_closed_limit_is_asked_one_request_at_a_time_with_a_growing_backoff() -> None:
    """Refused again and again with nothing getting through and no Retry-After: everyone
    waits a backoff that doubles (0.25 s, 0.5 s, ...), and one request at a time asks whether
    the limit opened; it is never hammered.
    """

    async def body() -> None:
        flow = make()
        await answer(flow, 10, spacing=0.01)
        sent: list[float] = []

        async def refused_request() -> None:
            t = await flow.admit()
            sent.append(now())
            await asyncio.sleep(0.01)
            flow.on_throttle(t, None, NONE)

        for _ in range(8):  # a volley all refused, then the gate holds
            await asyncio.gather(*(refused_request() for _ in range(1)))
        started = now()
        for _ in range(6):
            await refused_request()
        assert flow.state().phase == "measuring"
        gaps = [b - a for a, b in itertools.pairwise(sent[-6:])]
        assert all(b >= a - 1e-6 for a, b in itertools.pairwise(gaps))  # growing (to a cap)
        assert now() - started > 3.0  # six requests took seconds, not milliseconds

    virtual(body)


# -- pace --------------------------------------------------------------------------------


def test_unpaced_until_the_first_throttle() -> None:
    """Without a throttle nothing is paced."""

    async def body() -> None:
        flow = make()
        await answer(flow, 100, spacing=0.005)
        assert flow.state().rate is None
        assert flow.state().phase == "open"

    virtual(body)


def test_first_contact_measures_what_the_server_admits_after_its_burst() -> None:
    """At the first throttle the gate sends nothing for a round trip and judges its answers:
    mostly refusals mean a limit, and what gets through from then on bounds the pace.
    """

    async def body() -> None:
        flow = make()
        await answer(flow, 30, spacing=0.001)
        tickets = [await flow.admit() for _ in range(20)]
        await asyncio.sleep(0.02)
        for t in tickets[:16]:
            flow.on_throttle(t, None, NONE)
        assert flow.state().paused_for > 0  # nothing leaves until the answers tell
        await asyncio.sleep(0.02)
        for t in tickets[16:]:
            flow.on_answer(t, NONE)
        assert flow.state().phase == "measuring"
        # what gets through from then on (about 100/s) bounds the pace within a second
        for i in range(300):
            t = await flow.admit()
            await asyncio.sleep(0.002)
            if i % 5 == 0:
                flow.on_answer(t, NONE)
            else:
                flow.on_throttle(t, None, NONE)
        rate = flow.state().rate
        assert rate is not None
        assert rate < 150

    virtual(body)


def test_refusals_that_slowing_down_does_not_reduce_are_noise() -> None:
    """429s at 5% whatever the pace: after the law slowed down and they went on at the same
    share, its cuts are undone; the gate ends unpaced, refusals at that share pass.
    """

    async def body() -> None:
        flow = make()
        for k in range(1, 3001):
            t = await flow.admit()
            await asyncio.sleep(0.0005)
            if k % 20 == 0:
                flow.on_throttle(t, None, NONE)
            else:
                flow.on_answer(t, NONE)
        assert flow.state().rate is None or flow.state().phase != "measuring"
        assert flow.law._noise  # learned

    virtual(body)


def _refusals(n: int, every: int) -> list[bool]:
    return [k % every == every - 1 for k in range(n)]


def test_a_noise_trial_that_finds_no_verdict_in_its_answers_goes_on_judging() -> None:
    """A trial with no verdict after ``NOISE_MOST`` answers keeps judging its latest ones:
    it stopped counting, and every later cut for the same noise stood for good (a 10%
    random 429 run went 25x slower than without them).
    """
    trial = _Trial(Refusal.THROTTLE, (None, 64.0, Phase.OPEN, False), 0.0)
    for refused in _refusals(NOISE_MOST, 10):
        assert trial.add(refused, 100.0, 0.0) is None  # the pace never fell: no verdict
    verdicts = [trial.add(refused, 50.0, 0.0) for refused in _refusals(NOISE_MOST, 10)]
    assert any(v == pytest.approx(0.1, abs=0.02) for v in verdicts)  # it fell: noise


def test_refusals_as_often_as_the_learned_noise_are_noise_under_any_slower_pace() -> None:
    """Refusals at the share of the noise already learned, going on at a pace the law cut
    from unpaced (a burst of noise taken for a limit), are noise: the pace need not fall
    again within the trial. With no noise learned, the same answers are no verdict.
    """
    answers = _refusals(200, 10)
    unlearned = _Trial(Refusal.THROTTLE, (None, 64.0, Phase.OPEN, False), 0.0)
    assert all(unlearned.add(r, 135.0, 0.0) is None for r in answers)
    learned = _Trial(Refusal.THROTTLE, (None, 64.0, Phase.OPEN, False), 0.0)
    verdicts = [learned.add(r, 135.0, 0.1) for r in answers]
    assert any(v is not None for v in verdicts)


def test_a_round_is_noise_within_what_chance_gives_the_learned_share() -> None:
    """With 12.5% noise learned, 7 refused of 24 answers (29%, over twice the share) is
    within chance (``NOISE_SPREAD``, 3 standard deviations): noise, not a new first contact.
    """
    law = Law(max_concurrency=64)
    law._noise[Refusal.THROTTLE] = 0.125
    t = 1.0
    for k in range(24):
        law.sent(t)
        if k % 3 == 0 and k < 21:  # 7 refused, spread out
            law.refused(t + 0.02, t, Refusal.THROTTLE, 0.0)
        else:
            law.answered(t + 0.02, t)
        t += 0.001
    assert law.phase is Phase.OPEN
    assert not law.judging  # (7 > 2 x 12.5% x 24: the margin alone called it a limit)


def test_a_round_with_more_refusals_than_the_learned_noise_gives_is_judged_at_once() -> None:
    """With 12.5% noise learned (a first contact judged at 1 refused of 8), a round needs 24
    answers; but nine refusals are more than chance gives that noise in 24: a new first
    contact begins at the ninth, not after fifteen more answers (a fleet of two at 200/s
    sent bursts of 30 meanwhile: 5-10% of its requests refused).
    """
    law = Law(max_concurrency=64)
    law._noise[Refusal.THROTTLE] = 0.125
    t = 1.0
    for _ in range(30):
        law.sent(t)
    law.answered(t + 0.02, t)
    for k in range(8):
        law.refused(t + 0.021 + k * 1e-4, t, Refusal.THROTTLE, None)
        assert not law.judging
    law.refused(t + 0.022, t, Refusal.THROTTLE, None)  # 9 refused in a row
    assert law.judging


def test_quota_headers_pace_without_probing() -> None:
    """A quota that refills (a reset that stays about its span) paces at limit over reset,
    with no headroom (what remains is the server's own count).
    """

    async def body() -> None:
        flow = make()
        for _ in range(6):
            t = await flow.admit()
            await asyncio.sleep(0.2)
            flow.on_answer(t, RateLimits(remaining=500, limit=1000, reset=10.0))
        state = flow.state()
        assert state.pacing == "headers"
        assert state.rate == pytest.approx(100.0)

    virtual(body)


def test_quota_headers_hold_until_reset_when_nothing_remains() -> None:
    """remaining 0 holds new requests until the reset; no throttle is needed."""

    async def body() -> None:
        flow = make()
        t = await flow.admit()
        flow.on_answer(t, RateLimits(remaining=0, limit=60, reset=3.0))
        assert flow.state().paused_for == pytest.approx(3.0)
        started = now()
        await flow.admit()
        assert now() - started == pytest.approx(3.0)

    virtual(body)


def test_a_quota_spent_until_its_reset_fails_callers_who_cannot_wait_so_long() -> None:
    """An answer whose headers say nothing remains for 120 s fails the callers already
    queued who allow less (max_retry_after 60 s) at once, saying when to retry, as a
    throttle's hold does.
    """

    async def body() -> None:
        flow = make(max_concurrency=1, initial_concurrency=1)
        held = await flow.admit()
        waiting = asyncio.ensure_future(flow.admit(max_wait=60.0))
        await asyncio.sleep(0.1)
        started = now()
        flow.on_answer(held, RateLimits(remaining=0, limit=60, reset=120.0))
        with pytest.raises(RateLimitError) as caught:
            await waiting
        assert now() - started < 1.0
        assert caught.value.retry_after == pytest.approx(120.0, abs=1.0)

    virtual(body)


def test_a_busy_server_cuts_the_cap_while_quota_headers_pace() -> None:
    """With quota headers in force, throttles are not rate signals (the headers say
    better), but a 503 without Retry-After still says too many at once: the cap is cut.
    """

    async def body() -> None:
        flow = make(initial_concurrency=40, max_concurrency=40)
        flow.on_answer(await flow.admit(), RateLimits(remaining=500, limit=600, reset=60.0))
        assert flow.state().pacing == "headers"
        tickets = [await flow.admit() for _ in range(10)]
        await asyncio.sleep(0.01)
        for ticket in tickets:
            flow.on_failure(ticket, Failure.OVERLOAD)
        assert flow.state().concurrency == 28  # 40 x 0.7, once

    virtual(body)


def test_a_limit_closed_at_first_contact_that_reopens_later_was_a_window() -> None:
    """First contact finds the limit closed (a round trip of refusals after one success); when
    one request passes three seconds later, a window reopened with its whole quota: the law
    searches up at once instead of measuring the closed time as a rate.
    """
    law = Law(max_concurrency=64)
    law.answered(0.02, 0.0)  # one passed: the first burst
    for _ in range(7):
        law.refused(0.02, 0.0, Refusal.THROTTLE, None)
    law.refused(0.05, 0.03, Refusal.THROTTLE, None)  # a round trip of answers: closed
    assert law.phase is Phase.MEASURING
    assert law.wait_for_hold(0.05) > 0
    law.answered(3.05, 3.03)
    assert law.phase is Phase.SEARCHING


def test_a_limit_closed_at_first_contact_whose_probe_passes_a_second_later_is_searched() -> None:
    """First contact finds the limit closed (a round trip of nothing but refusals) and waits
    the Retry-After, a second; the probe after it passes. The wait refilled the limit by an
    unknown amount: the law searches up from the probe's pace at once (a measure spanning the
    wait read one request a second, and a bucket of 20/s took 7 s to find from it).
    """
    law = Law(max_concurrency=64)
    for _ in range(20):
        law.sent(0.0)
    for i in range(10):
        law.sent(0.003 * i)
    for _ in range(20):
        law.answered(0.02, 0.0)  # the burst
    for i in range(10):
        law.refused(0.02 + 0.003 * i, 0.003 * i, Refusal.THROTTLE, 1.0)  # then only 429s
    assert law.phase is Phase.MEASURING
    assert law.hold.reason == "blocked"
    until = law.hold.until
    law.sent(until)
    law.bound(until)
    law.answered(until + 0.02, until)  # the probe passes
    assert law.phase is Phase.SEARCHING
    law.bound(until + 0.5)
    law.answered(until + 0.52, until + 0.5)
    pace = law.pace(until + 0.52)
    assert pace is not None
    assert pace >= 4.0  # doubling fast from twice the probe's one a second


def test_a_limit_closed_at_first_contact_that_refills_one_request_a_wait_is_held_there() -> None:
    """The same first contact against a limit that refills about one request a second: the
    search's first request after the probe is refused before any other passed, so the limit
    refills one request in the wait, and the law holds at that.
    """
    law = Law(max_concurrency=64, min_rate=0.1)
    law.answered(0.02, 0.0)
    for i in range(8):
        law.refused(0.02 + 0.004 * i, 0.004 * i, Refusal.THROTTLE, 1.0)
    assert law.hold.reason == "blocked"
    verdict, until = law.hold.set_at, law.hold.until
    law.answered(until + 0.02, until)  # the probe passes
    law.refused(until + 0.52, until + 0.5, Refusal.THROTTLE, 1.0)  # the search's next: refused
    assert law.phase is Phase.HOLDING
    assert law.pace(until + 0.52) == pytest.approx(HEADROOM / (until - verdict))


def test_a_success_sent_before_the_limit_closed_does_not_end_its_probing() -> None:
    """First contact found the limit closed; then a request sent before that verdict comes
    back a success. It left before the limit closed and says nothing of it now: the law still
    sends one probe a wait, and the probe that passes after the wait is what reopens it.
    """
    law = Law(max_concurrency=64)
    law.answered(0.02, 0.0)
    for i in range(8):
        law.refused(0.02 + 0.004 * i, 0.004 * i, Refusal.THROTTLE, 1.0)
    verdict, until = law.hold.set_at, law.hold.until
    law.answered(verdict + 0.001, verdict - 0.02)  # sent before the verdict
    assert law.pace(until) == pytest.approx(1.0)  # one probe a wait, still
    law.answered(until + 0.02, until)
    assert law.phase is Phase.SEARCHING


def test_a_fleets_request_sent_during_first_contacts_wait_is_no_probe() -> None:
    """In a fleet, another process may send during the wait first contact set for a closed
    limit (it has not seen the wait yet), and a bucket of 20/s refills one request in 50 ms:
    its success is no probe of the wait's end, and a refusal just after it is no proof of a
    limit that refills one request in those few milliseconds (it held at 97/s).
    """
    law = Law(max_concurrency=64)
    law.answered(0.02, 0.0)
    for i in range(8):
        law.refused(0.02 + 0.004 * i, 0.004 * i, Refusal.THROTTLE, 1.0)
    verdict = law.hold.set_at
    law.answered(verdict + 0.03, verdict + 0.01)  # sent 10 ms into the wait
    assert law.phase is Phase.MEASURING
    law.refused(verdict + 0.035, verdict + 0.015, Refusal.THROTTLE, 1.0)
    assert law.phase is Phase.MEASURING
    pace = law.pace(verdict + 0.04)
    assert pace is not None
    assert pace < 50


def test_a_success_sent_before_a_limit_closed_answered_seconds_later_reopens_nothing() -> None:
    """A request sent before the limit closed whose success comes back more than `WINDOW`
    after the closure (a slow answer) did not pass the closed limit: no window reopened, the
    law still sends one probe a wait.
    """
    law = Law(max_concurrency=64)
    law.answered(0.02, 0.0)
    for _ in range(7):
        law.refused(0.02, 0.0, Refusal.THROTTLE, None)
    law.refused(0.05, 0.03, Refusal.THROTTLE, None)  # closed
    law.answered(2.5, 0.01)  # sent before: answered 2.45 s after the closure
    assert law.phase is Phase.MEASURING
    pace = law.pace(2.5)
    assert pace is not None
    assert pace <= 1.0 / FIRST_BACKOFF  # one probe a wait at most
    law.answered(3.05, 3.03)  # a probe passes: now a window reopened
    assert law.phase is Phase.SEARCHING


def test_a_probes_refusal_is_not_judged_again_when_the_limit_opens() -> None:
    """A refused probe of a closed limit is decided by the closed-limit wait itself: when a
    later probe passes (a window reopened), that refusal is not left to cut the pace to the
    slowest (the search up then crawled at 0.5 requests/s for a minute).
    """
    law = Law(max_concurrency=64)
    law.answered(0.02, 0.0)
    for _ in range(7):
        law.refused(0.02, 0.0, Refusal.THROTTLE, None)
    law.refused(0.05, 0.03, Refusal.THROTTLE, None)  # closed
    law.refused(1.02, 1.0, Refusal.THROTTLE, None)  # a probe: still closed
    law.answered(3.05, 3.03)  # the next passes: a window reopened
    assert law.phase is Phase.SEARCHING
    assert law.pace(3.05) == pytest.approx(2.0 / (2.0 * FIRST_BACKOFF))  # twice the probes'


def test_a_closed_limit_that_reopens_for_its_probe_alone_refills_one_request_a_probe() -> None:
    """A closed limit whose probe passes reopened like a window; but if the search up from it
    is refused before any other request passed, it was no window: a limit that refills
    about one request from its last refused probe to the one that passed (a bucket of 30 a
    minute). The law holds at that, instead of measuring down from the search's pace (four
    refusals at 0.5/s).
    """
    law = Law(max_concurrency=64, min_rate=0.1)
    law.answered(0.02, 0.0)
    for _ in range(7):
        law.refused(0.02, 0.0, Refusal.THROTTLE, None)
    law.refused(0.05, 0.03, Refusal.THROTTLE, None)  # closed
    law.refused(1.02, 1.0, Refusal.THROTTLE, None)  # a probe: still closed
    law.answered(3.05, 3.03)  # the next passes, 2.03 s after the refused one
    assert law.phase is Phase.SEARCHING
    law.refused(4.05, 4.03, Refusal.THROTTLE, None)  # the search's next is refused
    assert law.phase is Phase.HOLDING
    assert law.pace(4.05) == pytest.approx(HEADROOM / 2.03)
    law.refused(4.06, 4.04, Refusal.THROTTLE, None)  # sent before that: the same signal
    assert law.pace(4.06) == pytest.approx(HEADROOM / 2.03)


def test_a_window_that_reopens_with_more_than_its_probe_is_searched() -> None:
    """The same closed limit, when a second request passes after the probe: a window with
    a quota reopened; a refusal then is the search's own (a cut), not one request a probe."""
    law = Law(max_concurrency=64, min_rate=0.1)
    law.answered(0.02, 0.0)
    for _ in range(7):
        law.refused(0.02, 0.0, Refusal.THROTTLE, None)
    law.refused(0.05, 0.03, Refusal.THROTTLE, None)
    law.refused(1.02, 1.0, Refusal.THROTTLE, None)
    law.answered(3.05, 3.03)
    law.answered(3.6, 3.55)  # another passed: more than the probe
    law.refused(4.05, 4.03, Refusal.THROTTLE, None)
    assert law.phase is Phase.MEASURING
    assert law.rate is not None
    assert law.rate > 0.6


def test_a_probe_answered_after_a_later_ones_refusal_tells_no_refill_time() -> None:
    """The probe that passed may have been sent before the last refused one (its answer came
    later): no time between them says how fast the limit refills, and a search refused next
    is cut as any search is (a negative gap made the limit last met negative, and the law
    then probed ever faster)."""
    law = Law(max_concurrency=64, min_rate=0.1)
    law.answered(0.02, 0.0)
    for _ in range(7):
        law.refused(0.02, 0.0, Refusal.THROTTLE, None)
    law.refused(0.05, 0.03, Refusal.THROTTLE, None)  # closed
    law.refused(2.3, 2.05, Refusal.THROTTLE, None)  # a probe sent at 2.05: refused
    law.answered(3.5, 1.05)  # one sent at 1.05 passes, slowly
    law.refused(4.05, 4.03, Refusal.THROTTLE, None)
    assert law.phase is Phase.MEASURING
    assert law.rate is not None
    assert law.rate > 0.6


def test_a_search_at_most_doubles_with_one_success() -> None:
    """A search's growth goes by time, but one success never more than doubles the pace: the
    time since the last success may span a hold (a bucket of 30 a minute, reopened after a
    2 s wait, was searched from 2/s to 360/s by its first success: 68% refused).
    """
    law = Law(max_concurrency=64)
    law.answered(0.02, 0.0)
    for _ in range(7):
        law.refused(0.02, 0.0, Refusal.THROTTLE, None)
    law.refused(0.05, 0.03, Refusal.THROTTLE, None)  # closed
    law.bound(3.0)  # pacing holds requests back
    law.answered(3.05, 3.03)  # a window reopened: search up from twice the probes' pace
    first = law.pace(3.05)
    assert law.phase is Phase.SEARCHING
    assert first is not None
    law.bound(5.0)
    law.answered(5.05, 5.03)  # two seconds later
    assert law.pace(5.05) == pytest.approx(2 * first)


def _ok(law: Law, t: float) -> None:
    law.sent(t)
    law.answered(t + 0.02, t)


def _no(law: Law, t: float) -> None:
    law.sent(t)
    law.refused(t + 0.02, t, Refusal.THROTTLE, None)


def _window_closes(law: Law, t: float) -> float:
    """Probe a closed limit (no Retry-After) at each end of its wait until one passes at
    10 s; return when it went."""
    while t < 10.0:
        _no(law, t)
        t = max(law.wait_for_hold(t + 0.02) + t + 0.02, t + 0.03)
    _ok(law, t)
    return t


def test_a_window_with_no_retry_after_is_guessed_from_its_closure() -> None:
    """A limit that closes after 10 successes and opens again 10 s later (no Retry-After,
    no headers) is a window: once the next one has held as many, the refusal past them is
    its end, and everyone waits until it should reopen (no probes in between); the next
    time the ask comes sooner, in case it reopened earlier than the probes found.
    """
    law = Law(max_concurrency=64)
    for i in range(10):
        _ok(law, 0.001 * i)
    for i in range(8):
        _no(law, 0.02 + 0.005 * i)  # first contact: closed
    reopened = _window_closes(law, law.wait_for_hold(0.06) + 0.06)
    span = reopened  # the first window began at 0
    for i in range(9):
        _ok(law, reopened + 0.03 + 0.001 * i)  # the window's quota: 10 with the probe
    end = reopened + 0.1
    _no(law, end)  # past the quota: the window is spent
    assert law.wait_for_hold(end + 0.02) == pytest.approx(reopened + span - end - 0.02)
    _no(law, end + 0.01)  # sent before the wait began: the same signal, no longer a wait
    assert law.wait_for_hold(end + 0.03) == pytest.approx(reopened + span - end - 0.03)
    second = reopened + span
    _ok(law, second)  # open at the first ask ...
    for i in range(9):
        _ok(law, second + 0.03 + 0.001 * i)
    _no(law, second + 0.1)
    sooner = second + 0.9 * span  # ... so the next ask comes sooner
    assert law.wait_for_hold(second + 0.12) == pytest.approx(sooner - second - 0.12)


def test_a_guessed_windows_rest_is_pacing_not_a_servers_wait() -> None:
    """The rest of a window the law guessed (no Retry-After said it) is its own pacing:
    callers wait it out (bounded by their deadline), and ``max_retry_after``, which bounds the
    server's waits, does not fail them (a bulk run's remaining updates all failed when the
    guess came out longer than 60 s).
    """

    async def body() -> None:
        flow = make()
        law, start = flow.law, now()
        for i in range(10):
            _ok(law, start + 0.001 * i)
        for i in range(8):
            _no(law, start + 0.02 + 0.005 * i)
        reopened = _window_closes(law, law.wait_for_hold(start + 0.06) + start + 0.06)
        for i in range(9):
            _ok(law, reopened + 0.03 + 0.001 * i)
        _no(law, reopened + 0.1)  # the window is spent: everyone waits for its reopening
        await asyncio.sleep(reopened + 0.2 - now())
        assert law.wait_for_hold(now()) > 5.0
        with pytest.raises(RateLimitError):
            await flow.admit(deadline=now() + 1.0)  # a deadline still bounds it
        ticket = await flow.admit(max_wait=5.0)
        assert now() == pytest.approx(2 * reopened - start)
        flow.on_answer(ticket, NONE)

    virtual(body)


def test_quota_headers_count_what_is_in_flight_now_not_when_last_read() -> None:
    """Answers come back out of order. Within a window the least ``remaining`` read is the
    server's latest count, and the requests in flight *now* may not be in it yet: as their
    answers come, what is left grows back (it was only ever lowered, so requests in flight
    were counted twice and a window's quota ran out early). A quota spent while requests are
    in flight waits for their answers, not for the reset.
    """
    quota = QuotaReader()
    window = RateLimits(remaining=56, limit=120, reset=30.0)
    quota.read(1.0, window, 58)  # the last-sent request answered first: 58 more in flight
    assert quota.left == -2
    assert 0 < quota.blocks(1.0) <= UNSEEN_WAIT  # their answers may tell better
    for in_flight, remaining in zip(range(57, -1, -1), range(57, 115), strict=True):
        quota.read(1.01, attrs.evolve(window, remaining=remaining), in_flight)  # older news
    assert quota.left == 56  # all answered: the server's count stands
    assert quota.blocks(1.01) == 0.0
    quota.read(1.02, attrs.evolve(window, remaining=0), 0)
    assert quota.blocks(1.02) == pytest.approx(30.0)  # spent, nothing in flight: the reset


def test_a_spent_sliding_window_is_asked_again_when_its_oldest_success_ages_out() -> None:
    """A refilling quota (the reset stays put: a sliding window, a bucket) with nothing left
    waits a request's share of the reset: a bucket refills by then. A request refused after
    that share waits until the oldest success the quota counted in its span ages out. Asking
    every share (16 ms for 60 a second) was refused four to six times in a row on a loaded
    machine, where a sliding window had been spent at once.
    """
    quota = QuotaReader()
    window = RateLimits(limit=60, remaining=59, reset=1.0)
    quota.read(10.0, window, 0)
    for i in range(1, 4):  # the reset does not count down: a refilling quota
        quota.read(10.0 + 0.1 * i, attrs.evolve(window, remaining=59 - i), 0)
    assert quota.rate is not None
    quota.read(10.33, attrs.evolve(window, remaining=0), 0)
    assert quota.blocks(10.33) == pytest.approx(1.0 / 60)  # a share: a bucket refills
    quota.read(10.35, attrs.evolve(window, remaining=0, reset=0.97), 0, True)
    assert quota.blocks(10.35) == pytest.approx(0.65)  # when the success at 10.0 ages out
    quota.read(10.36, attrs.evolve(window, remaining=0), 0)  # a success that was in flight
    assert quota.blocks(10.36) == pytest.approx(0.64)  # does not end that wait
    quota.read(11.0, attrs.evolve(window, remaining=0), 0)  # it did: one more got through
    assert quota.blocks(11.0) == pytest.approx(1.0 / 60)
    quota.read(11.02, attrs.evolve(window, remaining=0, reset=0.98), 0, True)
    assert quota.blocks(11.02) == pytest.approx(0.08)  # the next, counted at 10.1
    quota.read(13.0, attrs.evolve(window, remaining=0), 0, True)
    assert quota.blocks(13.0) == pytest.approx(1.0 / 60)  # nothing of ours counted: a share


def test_a_quotas_counted_successes_stay_a_few_dozen_whatever_the_rate() -> None:
    """The successes a refilling quota keeps are a span's worth in steps of its 64th: at
    250 answers a second on a minute's quota, a few dozen times, not thousands."""
    quota = QuotaReader()
    window = RateLimits(limit=60_000, remaining=30_000, reset=60.0)
    for i in range(30_000):  # two minutes of answers 4 ms apart, the reset short at times
        t = 1.0 + 0.004 * i
        quota.read(t, attrs.evolve(window, reset=60.0 if i % 2 else 0.01), 0)
    assert len(quota._counted) <= COUNTED_STEPS + 1


def test_the_gate_tells_the_quota_which_answers_were_refused() -> None:
    """A 429's quota headers reach the law as a refusal (a spent sliding window then waits
    for its oldest success to age out), a success's as a success (a request's share)."""

    async def body() -> None:
        flow = make(initial_concurrency=64)
        window = RateLimits(limit=60, remaining=59, reset=1.0)
        first = now()
        for i in range(4):  # a refilling quota: the reset stays put
            ticket = await flow.admit()
            flow.on_answer(ticket, attrs.evolve(window, remaining=59 - i))
            await asyncio.sleep(0.1)
        ticket = await flow.admit()
        flow.on_throttle(ticket, None, attrs.evolve(window, remaining=0, reset=0.9))
        assert flow.law.wait_for_hold(now()) == pytest.approx(first + 1.0 - now())  # 0.6 s

    virtual(body)


def test_a_quota_whose_limit_is_zero_asks_once_a_span() -> None:
    """``x-ratelimit-limit-requests: 0`` made a pace of 0 requests/s, and the gate divided
    by it; it asks once a span instead."""
    quota = QuotaReader()
    for i in range(4):
        quota.read(1.0 + 0.1 * i, RateLimits(limit=0, remaining=0, reset=2.0), 0)
    assert quota.rate == pytest.approx(0.5)
    assert quota.blocks(1.3) == pytest.approx(2.0)


def test_a_buckets_reset_counts_down_as_it_refills_but_it_is_no_fixed_window() -> None:
    """A bucket whose reset says when it is full again counts down while it refills, as a
    fixed window's does; but what remains grows meanwhile, which it never does within a
    fixed window. Taken for a fixed window, the bucket was spent at once, as a window's
    quota is (bucket 100/s burst 50 with headers: 27% refused).
    """
    quota = QuotaReader()
    bucket = RateLimits(limit=50, remaining=10, reset=0.4)
    for i in range(4):  # 0.1 s apart: 10 more tokens each time, the reset 0.1 s nearer
        quota.read(
            1.0 + 0.1 * i, attrs.evolve(bucket, remaining=10 + 10 * i, reset=0.4 - 0.1 * i), 0
        )
    assert quota.rate is not None  # a refilling quota: paced, not spent at once
    window = QuotaReader()
    for i in range(4):  # a fixed window: the same countdown, what remains only falls
        window.read(
            1.0 + 0.1 * i, attrs.evolve(bucket, remaining=40 - 10 * i, reset=0.4 - 0.1 * i), 0
        )
    assert window.rate is None
    assert window.left == 10


def test_a_refilling_quota_is_paced_at_its_limit_over_its_longest_reset() -> None:
    """A bucket's reset says when it is full again: near empty it is a little under the time
    it takes to fill from empty, so its limit over the reset paced 10-20% over the bucket's
    rate (bucket 10/s with headers at 50 ms: 5% refused). The longest reset seen is the span.
    """
    quota = QuotaReader()
    bucket = RateLimits(limit=10, remaining=0, reset=1.0)
    quota.read(1.0, bucket, 0)  # empty: a whole span to fill
    for i in range(1, 4):  # then paced near empty: the reset 0.9, and it does not count down
        quota.read(1.0 + 0.1 * i, attrs.evolve(bucket, remaining=1, reset=0.9), 0)
    assert quota.rate == pytest.approx(10 / 1.0)
    assert quota.blocks(1.3) == 0.0
    quota.read(1.31, attrs.evolve(bucket, reset=0.91), 0)
    assert quota.blocks(1.31) == pytest.approx(0.1)  # nothing left: one token's time


def test_a_fixed_windows_quota_is_spent_as_it_opens() -> None:
    """Once the reset is seen to count down (a fixed window), what remains leaves at once,
    not spread over the time to the reset: 50 callers with 95 left are all sent now.
    """

    async def body() -> None:
        flow = make(initial_concurrency=64)
        for i in range(3):  # readings 10 s apart: the reset counts down with the clock
            ticket = await flow.admit()
            flow.on_answer(ticket, RateLimits(limit=100, remaining=99 - i, reset=60.0 - now()))
            await asyncio.sleep(10.0)
        assert flow.law.phase is Phase.HEADERS
        started = now()
        tickets = await asyncio.gather(*(flow.admit() for _ in range(50)))
        assert now() - started < 0.01
        for ticket in tickets:
            flow.on_answer(ticket, RateLimits(limit=100, remaining=40, reset=60.0 - now()))

    virtual(body)


def test_the_reported_pace_is_the_pace_in_force() -> None:
    """FlowState.rate is the pace the gate holds now (the law's bound included)."""

    async def body() -> None:
        flow = make()
        paced(flow, 50.0)
        assert flow.state().rate == 50.0
        assert flow.state().rate == flow.law.pace(now())

    virtual(body)


# -- busy servers, budget ------------------------------------------------------------------


def test_overload_cuts_concurrency_once_per_round() -> None:
    """503s without Retry-After cut the cap once for requests in flight together."""

    async def body() -> None:
        flow = make(initial_concurrency=40, max_concurrency=40)
        tickets = [await flow.admit() for _ in range(20)]
        await asyncio.sleep(0.01)
        for t in tickets:
            flow.on_failure(t, Failure.OVERLOAD)
        assert flow.state().concurrency in (28, 27)  # 40 x 0.7 (one cut)
        cut = flow.state().concurrency
        tickets = [await flow.admit() for _ in range(3)]
        await asyncio.sleep(0.01)
        for t in tickets:
            flow.on_failure(t, Failure.OVERLOAD)
        assert flow.state().concurrency == int(cut * 0.7) or flow.state().concurrency < cut

    virtual(body)


def test_budget_pays_for_failures_not_for_busy_servers() -> None:
    """Failures spend the budget (timeouts twice as much); answers give a little back; the
    server counts as busy (not down) while answers came in the last two seconds.
    """

    async def body() -> None:
        flow = make(retry_budget=20)
        assert flow.retry_allowed(Failure.ERROR)  # 15 left
        assert flow.retry_allowed(Failure.TIMEOUT)  # 5 left
        assert not flow.retry_allowed(Failure.TIMEOUT)
        assert flow.retry_allowed(Failure.ERROR)  # 0 left
        assert not flow.retry_allowed(Failure.ERROR)
        assert not flow.busy()
        await answer(flow, 5)
        assert flow.state().budget == 5
        assert flow.busy()
        await asyncio.sleep(2.5)
        assert not flow.busy()

    virtual(body)


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


def test_history_stays_bounded_in_a_long_lived_service() -> None:
    """An hour of answers and throttles keeps a bounded history."""

    async def body() -> None:
        flow = make()
        for i in range(7200):
            ticket = await flow.admit()
            await asyncio.sleep(0.5)
            if i % 7 == 0:
                flow.on_throttle(ticket, None, NONE)
            else:
                flow.on_answer(ticket, NONE)
        law = flow.law
        assert all(len(trial.flags) <= NOISE_MOST for trial in law._trials.values())

    virtual(body)


def _holding(rate: float) -> Law:
    """A law that measured a limit at ``rate``: it holds there."""
    law = Law(max_concurrency=64)
    law.phase, law.rate, law._limit_seen = Phase.HOLDING, rate, rate
    return law


def _paced(law: Law, t: float, until: float) -> float:
    """Paced successes from ``t`` until ``until`` (each at the law's pace); return when the
    next would go."""
    while t < until:
        law.sent(t)
        law.bound(t)
        law.answered(t + 0.02, t)
        pace = law.pace(t + 0.02)
        assert pace is not None
        t += 1.0 / pace
    return t


def test_a_probe_refused_not_far_above_the_pace_before_it_goes_back_to_that_pace() -> None:
    """A probe that a bucket's burst hid grows past where the limit was met before it is
    refused; the limit lies between the pace that held before the probe and the probe's:
    back to the former (a cut by 15% left it over the limit: a second refusal, and a third
    while measuring, at 5 requests/s).
    """
    law = _holding(5.0)
    law._limit_seen = 5.5  # (met a little above the pace that held)
    t = 0.0
    while law.rate < 8.0:  # the probe grows, nothing refused (a burst absorbs it)
        t = _paced(law, t, t + 0.01)
    law.sent(t)
    law.refused(t + 0.02, t, Refusal.THROTTLE, None)
    assert law.phase is Phase.MEASURING
    assert law.rate == 5.0  # (0.85 of the probe's pace or of what got through: 5.9-6.8)


def test_a_probe_refused_far_above_the_pace_before_it_found_a_higher_limit() -> None:
    """A probe that got past twice the pace that held before it met a limit that rose: the
    cut steps back from where it was met, not to the old pace.
    """
    law = _holding(5.0)
    t = 0.0
    while law.rate < 12.0:
        t = _paced(law, t, t + 0.01)
    pace = law.pace(t)
    assert pace is not None
    law.sent(t)
    law.refused(t + 0.02, t, Refusal.THROTTLE, None)
    assert law.phase is Phase.MEASURING
    assert law.rate is not None
    assert law.rate > 6.0  # (0.85 of what got through lately, not back to 5/s)


def test_a_cut_steps_back_from_what_the_server_admitted_at_a_slow_pace() -> None:
    """A search that overshot a limit of 1 request/s to 1.2/s: the server admitted about
    1/s over the last eight intervals; the cut steps back from that, not from the pace
    (0.85 x 1.2 = 1.02 was still over the limit, and refused again a second later).
    """
    law = _holding(1.2)
    law.phase = Phase.SEARCHING
    law._limit_seen = 100.0
    for i in range(8):
        t = float(i)  # admitted once a second
        law.sent(t)
        law.answered(t + 0.02, t)
    law.sent(8.0)
    law.refused(8.02, 8.0, Refusal.THROTTLE, None)
    assert law.phase is Phase.MEASURING
    assert law.rate is not None
    assert law.rate < 0.9  # (0.85 of the admitted 1/s, not of the pace)


def test_a_first_contact_undecided_when_its_wait_ends_paces_what_leaves() -> None:
    """Every answer of the first burst came at once (7 refused, 1 passed, 50 ms away): too
    few to judge, and none in flight to wait for. When the first contact's wait ends, the
    callers waiting leave at most at what got through since, and one more: not all at once
    (50 single calls against 1 request/s at 50 ms sent 17 at once into the closed limit).
    """
    law = Law(max_concurrency=64)
    for _ in range(8):
        law.sent(0.0)
    law.answered(0.05, 0.0)
    for _ in range(7):
        law.refused(0.05, 0.0, Refusal.THROTTLE, None)
    assert law.judging
    end = 0.05 + law.wait_for_hold(0.05)
    assert law.pace(end) == pytest.approx(HEADROOM / (end - 0.05))  # (~10/s, not unpaced)
    # (during the wait it reads the same: a fleet stores the pace it will be at its end)
    assert law.pace(0.06) == law.pace(end)


def test_first_contact_is_judged_once_every_request_in_flight_at_its_start_is_answered() -> None:
    """A burst's successes are answered before its refusals, which may reach a loaded
    client's loop some milliseconds later: first contact waits for the answer of the last
    request in flight when it began. Judged on the successes alone, a bucket at 300/s was
    taken for noise at 1 refusal in 8, and three more bursts of 50 went out (10% of the run
    refused).
    """
    law = Law(max_concurrency=64)
    for i in range(30):  # a round of quick successes (10 ms)
        law.sent(-0.1 + i * 1e-4)
        law.answered(-0.09 + i * 1e-4, -0.1 + i * 1e-4)
    early = [i * 1e-4 for i in range(4)]
    late = [0.02 + i * 1e-4 for i in range(30)]
    for t in early + late:
        law.sent(t)
    law.refused(0.03, early[-1], Refusal.THROTTLE, None)  # the burst is spent
    assert law.judging
    for t in early[:-1] + late[:4]:
        law.answered(0.09, t)  # seven successes, a round trip on
    assert law.judging  # (not noise at 1 in 8: the rest of the burst is still in flight)
    for t in late[4:-1]:
        law.refused(0.1, t, Refusal.THROTTLE, None)
    law.refused(0.15, late[-1], Refusal.THROTTLE, None)
    assert not law.judging
    assert law.phase is Phase.MEASURING
    assert law.pace(0.15) is not None


def test_a_first_contact_that_passed_at_its_own_pace_searches_up_from_it() -> None:
    """One refusal, then seven successes that left at the first contact's own pace (what got
    through since, and one more): a limit above that pace refuses none of them, so this is
    no proof of random refusals. The law searches up from that pace and learns no noise
    (before: unpaced, with one refusal in eight learned as noise, so the next bursts' refusals
    passed as noise; a fleet of two arq workers at 200/s refused 5-10% in 4 runs of 10).
    """
    law = Law(max_concurrency=64)
    for _ in range(8):
        law.sent(0.0)
    for _ in range(7):
        law.answered(0.02, 0.0)
    law.refused(0.02, 0.0, Refusal.THROTTLE, None)  # the first refusal
    assert law.judging
    t = 0.02 + law.wait_for_hold(0.02)
    for _ in range(7):  # one at a time, at the first contact's pace
        pace = law.pace(t)
        assert pace is not None
        law.sent(t)
        law.answered(t + 0.02, t)
        t += 1.0 / pace
    assert not law.judging
    assert law.phase is Phase.SEARCHING
    assert law._noise[Refusal.THROTTLE] == 0.0
    assert law.pace(t) is not None


def test_a_fleets_send_reported_after_first_contact_began_is_waited_for() -> None:
    """In a fleet one process's sends reach the shared law after another's refusal began
    first contact: those requests were in flight at its start, so it waits for them too
    (judged on the first process's eight successes alone, it was noise at 1 in 8).
    """
    law = Law(max_concurrency=64)
    for _ in range(9):
        law.sent(0.0)  # one process's sends
    law.refused(0.03, 0.0, Refusal.THROTTLE, None)  # first contact begins
    for _ in range(20):
        law.sent(0.02)  # another process's, sent before it began, reported after
    for _ in range(8):
        law.answered(0.12, 0.0)
    assert law.judging
    for _ in range(20):
        law.refused(0.15, 0.02, Refusal.THROTTLE, None)
    assert not law.judging
    assert law.phase is Phase.MEASURING


def test_a_fleets_sends_at_first_contacts_pace_count_whatever_order_they_arrive_in() -> None:
    """The first send at first contact's own pace is the earliest, not the first reported: a
    fleet's later send reported before an earlier one does not make the earlier one's answer
    count as unpaced (which made seven in-flight answers and it eight: noise learned).
    """
    law = Law(max_concurrency=64)
    for _ in range(8):
        law.sent(0.0)
    law.refused(0.02, 0.0, Refusal.THROTTLE, None)
    h = 0.02 + law.wait_for_hold(0.02)
    law.sent(h + 0.01)  # one process's paced send, reported first
    law.sent(h + 0.001)  # another's, earlier, reported after
    for _ in range(6):
        law.answered(h + 0.005, 0.0)  # six in flight since before: unpaced
    law.answered(h + 0.021, h + 0.001)
    assert law.phase is Phase.SEARCHING
    assert law._noise[Refusal.THROTTLE] == 0.0


def test_first_contacts_verdict_does_not_shorten_a_closed_limits_hold() -> None:
    """The first contact's verdict ends the first contact's own wait, never a closed-limit
    hold set while it was judging (the sixth probe of a closed limit came 1 s after the
    fifth instead of 16 s).
    """
    law = Law(max_concurrency=64)
    for _ in range(8):
        law.sent(0.0)
    for _ in range(7):
        law.refused(0.02, 0.0, Refusal.THROTTLE, None)  # judging: 7 answers of 8
    law.hold.until, law.hold.reason = 10.0, "blocked"  # a closed limit's hold meanwhile
    law.refused(0.06, 0.0, Refusal.THROTTLE, None)  # the eighth, a round trip on: the verdict
    assert not law.judging
    assert law.wait_for_hold(0.07) == pytest.approx(10.0 - 0.07)
