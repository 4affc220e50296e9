"""The law's snapshot: the whole state as plain JSON, restored into a law that decides exactly
as the original would (what a fleet keeps in Redis), and nothing but the law's own types.
"""

from __future__ import annotations

import enum
import heapq
import json
import math
import random
from collections import deque
from typing import Any

import attrs
import pytest

from nebius_datasets_async import RateLimits
from nebius_datasets_async._law import Law, Phase, Refusal

LATENCY = 0.02
NO_LIMITS = RateLimits()


class Server:
    """A server whose limit changes every few seconds: a token bucket refusing without and
    then with a short Retry-After, a closed limit asking for a long wait, random throttles and
    busy 503s, a fixed window with quota headers, a 503 asking everyone to wait.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tokens = 10.0
        self.filled_at = 0.0
        self.window_start = 25.0
        self.window_left = 100

    def answer(self, t: float) -> tuple[str, float | None, RateLimits]:
        rng = self.rng
        if t < 15:  # a bucket (40/s, then 20/s with Retry-After 0.5)
            rate, retry_after = (40.0, None) if t < 10 else (20.0, 0.5)
            self.tokens = min(10.0, self.tokens + (t - self.filled_at) * rate)
            self.filled_at = t
            if self.tokens < 1:
                return "throttle", retry_after, NO_LIMITS
            self.tokens -= 1
            return "ok", None, NO_LIMITS
        if t < 18:  # closed: the rest of a window
            return "throttle", 2.0, NO_LIMITS
        if t < 25:  # no limit, but a gateway refusing at random and a busy backend
            draw = rng.random()
            if draw < 0.04:
                return "throttle", None, NO_LIMITS
            return ("busy", None, NO_LIMITS) if draw < 0.08 else ("ok", None, NO_LIMITS)
        if t < 32:  # a fixed window of 100 requests per 2 s that says so
            if t >= self.window_start + 2.0:
                self.window_start += 2.0 * ((t - self.window_start) // 2.0)
                self.window_left = 100
            reset = self.window_start + 2.0 - t
            if self.window_left <= 0:
                return "throttle", reset, RateLimits(remaining=0, limit=100, reset=reset)
            self.window_left -= 1
            return "ok", None, RateLimits(remaining=self.window_left, limit=100, reset=reset)
        if 34 <= t < 34.05:
            return "pause", 0.3, NO_LIMITS  # a 503 with Retry-After: everyone waits
        return "ok", None, NO_LIMITS


Step = tuple[str, tuple[Any, ...]]


def drive(law: Law, seed: int = 7, until: float = 40.0) -> list[Step]:
    """Send and answer requests the way the gate would (a place under the cap, the end of any
    hold, a pacing slot), against ``Server``, on virtual time; return every transition made.
    """
    server = Server(seed)
    steps: list[Step] = []
    pending: list[tuple[float, int, float, str, float | None, RateLimits]] = []
    t = next_slot = 0.0

    def step(name: str, *args: Any) -> None:
        getattr(law, name)(*args)
        steps.append((name, args))

    while t < until:
        wait = law.wait_for_hold(t)
        pace = law.pace(t)
        send_at = math.inf
        if len(pending) < int(law.cap):
            send_at = max(t + wait, next_slot if pace else t)
        if pending and pending[0][0] < send_at:
            t, _, sent_at, outcome, retry_after, limits = heapq.heappop(pending)
            if outcome == "ok":
                step("answered", t, sent_at)
                step("read_limits", t, limits, len(pending))
            elif outcome == "busy":
                step("refused", t, sent_at, Refusal.BUSY, None)
            else:
                step("read_limits", t, limits, len(pending), True)
                if outcome == "pause":
                    step("hold_all", t, retry_after)
                step("refused", t, sent_at, Refusal.THROTTLE, retry_after)
            continue
        if send_at > t:
            step("bound", send_at)
        t = send_at
        step("sent", t)
        next_slot = t + (1.0 / pace if pace else 0.002)
        outcome, retry_after, limits = server.answer(t + LATENCY / 2)
        heapq.heappush(pending, (t + LATENCY, len(steps), t, outcome, retry_after, limits))
    return steps


def decisions(law: Law, now: float) -> tuple[Any, ...]:
    """What the gate reads from the law (in the gate's order: the hold may count a reset)."""
    return (law.wait_for_hold(now), law.pace(now), law.cap, law.phase, law.cuts, law.rate_cap())


def state(value: object) -> object:
    """A law's state as nested tuples, read directly (not through the snapshot code)."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, [state(v) for v in value])
    if isinstance(value, deque):
        return ("deque", value.maxlen, [state(v) for v in value])
    if isinstance(value, dict):
        return ("dict", sorted((repr(k), state(v)) for k, v in value.items()))
    cls = type(value)
    if cls.__module__ == Law.__module__ and not isinstance(value, enum.Enum):
        if attrs.has(cls):
            names = [f.name for f in attrs.fields(cls)]
        elif hasattr(value, "__dict__"):
            names = list(vars(value))
        else:
            names = list(vars(cls)["__slots__"])
        return (cls.__name__, sorted((n, state(getattr(value, n))) for n in names))
    return (cls.__name__, value)


def new_law() -> Law:
    return Law(max_concurrency=16, now=0.0)


def test_every_attribute_of_a_busy_law_round_trips_through_json() -> None:
    """Driven through bucket, closed, noisy, busy and quota-header regimes, the law's every
    attribute (nested holds, quota readers, trials, enum-keyed dicts, infinities) survives a
    strict JSON round trip, at every few hundred steps.
    """
    law = new_law()
    seen_phases: set[Phase] = set()
    seen_trial = seen_hold = seen_quota = False
    for n, (name, args) in enumerate(drive(new_law())):
        getattr(law, name)(*args)
        seen_phases.add(law.phase)
        if n % 97:
            continue
        snapshot = law.snapshot()
        assert set(snapshot["v"]) == set(vars(law))  # type: ignore[call-overload]
        text = json.dumps(snapshot, allow_nan=False)  # strict JSON: no Infinity, no NaN
        restored = Law.restore(json.loads(text))
        assert state(restored) == state(law)
        seen_trial |= bool(law._trials)
        seen_hold |= math.isfinite(law.hold.until)
        seen_quota |= law.quota.active
    assert {Phase.OPEN, Phase.MEASURING, Phase.HEADERS} <= seen_phases
    assert seen_phases & {Phase.HOLDING, Phase.SEARCHING}
    assert seen_trial
    assert seen_hold
    assert seen_quota
    assert law.cuts > 0


@pytest.mark.parametrize("share", [0.03, 0.3, 0.6, 0.7, 0.95])
def test_a_restored_law_decides_exactly_as_the_original(share: float) -> None:
    """Restored from a snapshot taken mid-scenario (measuring, holding, after a long wait,
    under quota headers), a law makes the same decisions as the original at every later step.
    """
    steps = drive(new_law())
    split = int(share * len(steps))
    law = new_law()
    for name, args in steps[:split]:
        getattr(law, name)(*args)
    restored = Law.restore(json.loads(json.dumps(law.snapshot())))
    for n, (name, args) in enumerate(steps[split:]):
        getattr(law, name)(*args)
        getattr(restored, name)(*args)
        now = args[0] if isinstance(args[0], float) else 0.0
        assert decisions(restored, now) == decisions(law, now), (name, args)
        if n % 25 == 0:
            assert state(restored) == state(law), (name, args)
    assert state(restored) == state(law)


def test_a_snapshot_holds_only_the_laws_own_types() -> None:
    """An attribute of another type cannot be snapshotted (not silently dropped), and restore
    builds nothing but the law's own types: anything else is a ValueError.
    """
    law = new_law()
    law.extra = object()  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="cannot hold a object"):
        law.snapshot()
    good = new_law().snapshot()

    def variant(**fields: object) -> dict[str, object]:
        return {"$": "Law", "v": {**good["v"], **fields}}  # type: ignore[dict-item]

    bad: list[object] = [
        {"$": "os.system", "v": "echo pwned"},
        {"$": "Hold", "v": {"until": 0.0, "reason": "", "count": 0, "set_at": 0.0}},
        variant(rate={"$": "float", "v": "1e308"}),
        variant(phase={"$": "Phase", "v": "bogus"}),
        variant(hold={"$": "RetryBudget", "v": {}}),
        variant(_noise={"$": "dict", "v": [[[1], 0.0]]}),
        variant(_oks={"$": "deque", "v": [], "maxlen": "all"}),
        variant(unknown=1),
        {"$": "Law", "v": {k: v for k, v in good["v"].items() if k != "cap"}},  # type: ignore[attr-defined]
        [1, 2],
        "law",
    ]
    for data in bad:
        with pytest.raises(ValueError, match="not a snapshot of the law"):
            Law.restore(data)


def test_a_transition_reported_late_acts_when_it_arrives() -> None:
    """A fleet's law gets events in the order processes report them: its clock never runs
    backwards (a late hold starts when it arrives), while an answer's latency and its place
    in a first contact are its own.
    """
    law = new_law()
    law.answered(10.0, 9.98)
    law.hold_all(9.0, 1.0)  # reported a second late
    assert law.wait_for_hold(10.0) == pytest.approx(1.0)
    law.answered(9.5, 9.47)  # reported late too: its latency is 30 ms, not 530
    assert law.latency == pytest.approx(0.02 + 0.1 * (0.03 - 0.02))
    assert law.pace(5.0) is None  # a read at an earlier time reads now
    assert law.wait_for_hold(5.0) == pytest.approx(1.0)
