"""The event stream: one vocabulary for calls, the gate and bulk runs; subscribers; its cost."""

from __future__ import annotations

import asyncio
import builtins
import importlib
import logging
import subprocess
import sys
from typing import Any

import pytest

import nebius_datasets_async
import nebius_datasets_async._call
from nebius_datasets_async import DatasetUpdate, FlowControl, NotFoundError, RateLimits
from nebius_datasets_async import events as ev
from nebius_datasets_async.testing import FakeDatasetsServer, Faults, run_virtual

from .conftest import SleepRecorder, wait_until


class Recorder:
    """An observer that keeps every event it is given."""

    def __init__(self, *interests: type[Any]) -> None:
        self.events: list[Any] = []
        if interests:
            self.interests = interests

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_events_module_all_is_exact() -> None:
    """nebius_datasets_async.events exports exactly its public names, sorted."""
    public = {n for n in vars(ev) if n.isidentifier() and not n.startswith("_")}
    assert ev.__all__ == sorted(ev.__all__)
    assert set(ev.__all__) == public


async def test_success_emits_one_call_in_order(fake: FakeDatasetsServer) -> None:
    """A successful PATCH: CallStarted, Admitted, Sent, Answered, CallEnded, same CallInfo."""
    seen = Recorder()
    dataset_id = fake.dataset_ids[0]
    async with fake.client(observers=[seen]) as client:
        await client.move(dataset_id, "/a")
    assert seen.kinds() == ["CallStarted", "Admitted", "Sent", "Answered", "CallEnded"]
    started, admitted, sent, answered, ended = seen.events
    call = started.call
    assert all(e.call is call for e in seen.events)
    assert (call.method, call.dataset_id, call.run) == ("PATCH", dataset_id, None)
    assert (admitted.attempt, sent.attempt, answered.attempt) == (1, 1, 1)
    assert admitted.waited_place >= 0
    assert admitted.waited_slot >= 0
    assert answered.status == 200
    assert answered.latency > 0
    assert answered.request_id
    assert answered.request_id.startswith("req-")
    assert (ended.attempts, ended.status, ended.error, ended.cancelled) == (1, 200, None, False)
    assert ended.duration >= answered.latency


async def test_throttled_then_success(fake: FakeDatasetsServer) -> None:
    """A 429 then a 200: Answered 429, Throttled, Retrying, then a second attempt."""
    seen = Recorder()
    fake.fail_next(1, status=429, retry_after=0)
    async with fake.client(observers=[seen], _sleep=SleepRecorder()) as client:
        await client.move(fake.dataset_ids[1], "/b")
    assert seen.kinds() == [
        "CallStarted",
        "Admitted",
        "Sent",
        "Answered",
        "Throttled",
        "Retrying",
        "Admitted",
        "Sent",
        "Answered",
        "CallEnded",
    ]
    throttled, retrying, ended = seen.events[4], seen.events[5], seen.events[-1]
    assert (throttled.attempt, throttled.status, throttled.retry_after) == (1, 429, 0.0)
    assert retrying.attempt == 1
    assert type(retrying.error).__name__ == "RateLimitError"
    assert [e.status for e in seen.events if isinstance(e, ev.Answered)] == [429, 200]
    assert (ended.attempts, ended.error) == (2, None)


async def test_failure_ends_the_call_with_its_error(fake: FakeDatasetsServer) -> None:
    """A 404 is not retried: CallEnded carries the NotFoundError and status 404."""
    seen = Recorder()
    async with fake.client(observers=[seen]) as client:
        with pytest.raises(NotFoundError):
            await client.move("no-such-dataset", "/c")
    ended = seen.events[-1]
    assert isinstance(ended, ev.CallEnded)
    assert isinstance(ended.error, NotFoundError)
    assert ended.status == 404
    assert "Failed" not in seen.kinds()  # the request's own error, not a failed attempt


async def test_connection_failure_is_a_failed_event(fake: FakeDatasetsServer) -> None:
    """A dropped connection (twice: the transport resends once) is Failed with reason error."""
    seen = Recorder()
    fake.fail_next(2, reset=True)
    async with fake.client(observers=[seen], _sleep=SleepRecorder()) as client:
        await client.move(fake.dataset_ids[2], "/d")
    (failed,) = [e for e in seen.events if isinstance(e, ev.Failed)]
    assert (failed.attempt, failed.reason, failed.status) == (1, "error", None)
    assert type(failed.error).__name__ == "APIConnectionError"
    assert seen.events[-1].attempts == 2


async def test_latency_is_measured_on_one_clock(fake: FakeDatasetsServer) -> None:
    """An attempt's latency is never negative, even when the flow's clock runs apart from
    the event loop's (uvloop's clock is cached, the fleet's flow reads time.monotonic): a
    negative duration made OpenTelemetry drop the answer's histogram point.
    """
    seen = Recorder(ev.Answered, ev.Failed)
    flow = FlowControl(clock=lambda: asyncio.get_running_loop().time() + 5.0)
    fake.fail_next(1, status=503)
    async with fake.client(observers=[seen], flow=flow, _sleep=SleepRecorder()) as client:
        await client.move(fake.dataset_ids[1], "/e")
        with pytest.raises(NotFoundError):
            await client.move("no-such-dataset", "/e")
    kinds = [(type(e).__name__, e.status) for e in seen.events]
    assert kinds == [("Answered", 503), ("Failed", 503), ("Answered", 200), ("Answered", 404)]
    assert all(0.0 <= e.latency < 1.0 for e in seen.events), [e.latency for e in seen.events]


async def test_no_call_event_is_built_without_a_subscriber(
    fake: FakeDatasetsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only the default (logging) subscriber, a call builds no per-call event at all."""

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an event was built")

    async with fake.client() as client:
        assert len(client.events) == 1
        assert not client.events.calls
        for name in ("CallInfo", "CallStarted", "Admitted", "Sent", "Answered", "CallEnded"):
            monkeypatch.setattr(nebius_datasets_async._call, name, forbidden)
        await client.move(fake.dataset_ids[3], "/e")
        await client.get_dataset(fake.dataset_ids[3])


async def test_interests_limit_what_an_observer_gets(fake: FakeDatasetsServer) -> None:
    """An observer interested in retries only gets Retrying, and turns no call events on."""
    retries = Recorder(ev.Retrying)
    fake.fail_next(1, status=503, retry_after=0)
    async with fake.client(observers=[retries], _sleep=SleepRecorder()) as client:
        assert not client.events.calls
        await client.move(fake.dataset_ids[4], "/f")
    assert retries.kinds() == ["Retrying"]
    assert retries.events[0].call.method == "PATCH"


async def test_subscribe_and_unsubscribe_later(fake: FakeDatasetsServer) -> None:
    """client.events.subscribe adds an observer at any time; unsubscribe removes it."""
    seen = Recorder()
    async with fake.client() as client:
        client.events.subscribe(seen)
        assert client.events.calls
        await client.move(fake.dataset_ids[5], "/g")
        client.events.unsubscribe(seen)
        assert not client.events.calls
        await client.move(fake.dataset_ids[5], "/h")
    assert seen.kinds().count("CallEnded") == 1


async def test_a_failing_observer_never_breaks_a_call(
    fake: FakeDatasetsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An observer that raises is logged and skipped; the call and other observers go on."""

    def broken(event: Any) -> None:
        raise RuntimeError("observer bug")

    seen = Recorder()
    async with fake.client(observers=[broken, seen]) as client:
        dataset = await client.move(fake.dataset_ids[6], "/i")
    assert dataset.folder == "/i"
    assert seen.kinds()[-1] == "CallEnded"
    assert any("observer" in r.getMessage() for r in caplog.records)


async def test_sent_headers_are_added_but_never_replace_ours(fake: FakeDatasetsServer) -> None:
    """Headers an observer adds to Sent go out; it cannot replace Authorization."""

    def add(event: Any) -> None:
        if isinstance(event, ev.Sent):
            event.headers["traceparent"] = f"00-{'1' * 32}-{'2' * 16}-01"
            event.headers["authorization"] = "Bearer stolen"

    async with fake.client(observers=[add]) as client:
        await client.move(fake.dataset_ids[7], "/j")
    (request,) = fake.requests
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["traceparent"] == f"00-{'1' * 32}-{'2' * 16}-01"
    assert headers["authorization"] == f"Bearer {fake.api_key}"


async def test_bulk_run_events_and_progress_subscriber(fake: FakeDatasetsServer) -> None:
    """A bulk run: RunStarted, its calls name the run, RunProgress, RunFinished with totals;
    the progress callback is fed by the same events.
    """
    seen = Recorder()
    snapshots: list[Any] = []
    updates = [DatasetUpdate(i, folder="/k") for i in fake.dataset_ids[:5]]
    async with fake.client(observers=[seen]) as client:
        report = await client.patch_all(updates, progress=snapshots.append)
    kinds = seen.kinds()
    assert kinds[0] == "RunStarted"
    assert kinds[-1] == "RunFinished"
    run = seen.events[0].run
    assert run.concurrency == 64  # the client's max_concurrency
    calls = [e.call for e in seen.events if isinstance(e, ev.CallStarted)]
    assert len(calls) == 5
    assert all(c.run is run for c in calls)
    finished = seen.events[-1]
    assert finished.error is None
    assert finished.progress.finished
    assert (finished.progress.succeeded, finished.progress.requests) == (5, 5)
    assert report.succeeded == 5
    assert snapshots
    assert snapshots[-1] == finished.progress


async def test_bulk_run_closed_early_finishes_with_an_error(fake: FakeDatasetsServer) -> None:
    """Leaving a run early still ends it with RunFinished, naming why."""
    finished = Recorder(ev.RunFinished)
    updates = [DatasetUpdate(i, folder="/l") for i in fake.dataset_ids]
    async with fake.client(observers=[finished]) as client:
        async with client.patch_many(updates, concurrency=2) as run:
            async for _outcome in run:
                break
    (event,) = finished.events
    assert type(event.error).__name__ == "RunStoppedError"


def test_gate_events_cut_pause_budget() -> None:
    """The flow emits PaceChanged when a limit is met (not at each probe step), Paused when a
    pause begins, PaceChanged on an overload's cap cut, and BudgetSpent for each retry asked.
    """

    async def body() -> None:
        loop = asyncio.get_running_loop()
        flow = FlowControl(
            max_concurrency=8, initial_concurrency=8, clock=loop.time, retry_budget=12
        )
        seen = Recorder()
        flow.subscribe(seen)
        for _ in range(40):  # answers at 100/s: what the server admits
            ticket = await flow.admit()
            await asyncio.sleep(0.01)
            flow.on_answer(ticket, RateLimits())
        assert seen.events == []  # unpaced, nothing changed
        volley = [await flow.admit() for _ in range(8)]
        await asyncio.sleep(0.01)
        for ticket in volley:  # a limit met: everything refused for a round trip
            flow.on_throttle(ticket, None, RateLimits())
        assert seen.events == []  # judged after a round trip of answers, no pause reported
        await asyncio.sleep(0.02)
        ticket = await flow.admit()
        flow.on_throttle(ticket, None, RateLimits())
        (cut,) = [e for e in seen.events if isinstance(e, ev.PaceChanged)]
        assert (cut.phase, cut.previous, cut.reason) == ("measured", None, "throttle")
        assert cut.rate is not None
        await asyncio.sleep(flow.state().paused_for)  # the closed limit's backoff, if any
        ticket = await flow.admit(paced=False)
        flow.on_throttle(ticket, 2.0, RateLimits(), pause=True)
        paused = seen.events[-1]
        assert isinstance(paused, ev.Paused)
        assert paused.reason == "retry-after"
        assert paused.duration == pytest.approx(2.0)
        assert paused.until == pytest.approx(loop.time() + 2.0)
        ticket = await flow.admit(paced=False)
        flow.on_throttle(ticket, 2.0, RateLimits(), pause=True)
        assert seen.events[-1] is paused  # the same pause, extended: not a new one
        await asyncio.sleep(3)
        tickets = [await flow.admit(paced=False) for _ in range(3)]
        for ticket in tickets:
            flow.on_failure(ticket, nebius_datasets_async.Failure.OVERLOAD)
        overload = seen.events[-1]
        assert isinstance(overload, ev.PaceChanged)
        assert overload.reason == "overload"
        assert overload.concurrency < 8
        assert flow.retry_allowed(nebius_datasets_async.Failure.ERROR)
        assert flow.retry_allowed(nebius_datasets_async.Failure.ERROR)
        assert not flow.retry_allowed(nebius_datasets_async.Failure.ERROR)
        spent = [e for e in seen.events if isinstance(e, ev.BudgetSpent)]
        assert [(e.cost, e.left, e.granted, e.failure) for e in spent] == [
            (5.0, 7.0, True, "error"),
            (5.0, 2.0, True, "error"),
            (5.0, 2.0, False, "error"),
        ]
        flow.unsubscribe(seen)
        flow.retry_allowed(nebius_datasets_async.Failure.ERROR)
        assert len([e for e in seen.events if isinstance(e, ev.BudgetSpent)]) == 3

    run_virtual(body)


async def test_quota_headers_pause_and_pace() -> None:
    """Quota headers: pacing by them is a PaceChanged to phase headers; nothing left is a
    Paused with reason quota.
    """
    clock = Clock()
    flow = FlowControl(clock=clock)
    seen = Recorder()
    flow.subscribe(seen)
    ticket = await flow.admit()
    flow.on_answer(ticket, RateLimits(remaining=50, limit=100, reset=10.0))
    (paced,) = seen.events
    # one reading does not tell a fixed window from a refilling quota: no pace yet, only
    # the quota (what remains may leave)
    assert (paced.phase, paced.reason, paced.rate) == ("headers", "headers", None)
    clock.now += 0.01
    ticket = await flow.admit()
    flow.on_answer(ticket, RateLimits(remaining=0, limit=100, reset=9.99))
    paused = seen.events[-1]
    assert isinstance(paused, ev.Paused)
    assert paused.reason == "quota"
    assert paused.duration == pytest.approx(9.99)


async def test_logging_is_a_subscriber(
    fake: FakeDatasetsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The retry log line comes from the client's LoggingObserver."""
    caplog.set_level(logging.INFO, logger="nebius_datasets_async")
    fake.fail_next(1, status=500)
    async with fake.client(_sleep=SleepRecorder()) as client:
        (logging_observer,) = list(client.events.observers)
        assert isinstance(logging_observer, ev.LoggingObserver)
        await client.move(fake.dataset_ids[8], "/m")
        client.events.unsubscribe(logging_observer)
        fake.fail_next(1, status=500)
        await client.move(fake.dataset_ids[8], "/n")
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1
    assert retries[0].startswith(f"retrying PATCH /v1/datasets/{fake.dataset_ids[8]} in ")


def test_otel_module_needs_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry installed, importing nebius_datasets_async.otel says what to
    install; the rest of the package never imports it.
    """
    real_import = builtins.__import__

    def no_otel(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "nebius_datasets_async.otel", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_otel)
    with pytest.raises(ImportError, match=r"nebius-datasets-async\[otel\]"):
        importlib.import_module("nebius_datasets_async.otel")
    monkeypatch.undo()
    code = (
        "import sys, nebius_datasets_async, nebius_datasets_async.events; "
        "sys.exit(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


async def test_a_cancelled_call_still_ends(fake: FakeDatasetsServer) -> None:
    """A call whose task is cancelled mid-request ends with CallEnded(cancelled=True)."""
    seen = Recorder(ev.Sent, ev.CallEnded)
    async with FakeDatasetsServer(datasets=2, faults=Faults(latency=5.0)) as slow:
        async with slow.client(observers=[seen]) as client:
            task = asyncio.create_task(client.move(slow.dataset_ids[0], "/o"))
            await wait_until(lambda: "Sent" in seen.kinds())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    ended = seen.events[-1]
    assert isinstance(ended, ev.CallEnded)
    assert ended.cancelled
    assert isinstance(ended.error, asyncio.CancelledError)
    assert (ended.attempts, ended.status) == (1, None)


async def test_redis_flow_hands_its_local_gate_events_on() -> None:
    """RedisFlowControl.subscribe reaches its local gate: a retry asked of the budget while
    Redis is not in use is a BudgetSpent.
    """
    pytest.importorskip("redis")
    from nebius_datasets_async.redis import RedisFlowControl

    flow = RedisFlowControl("redis://127.0.0.1:1", retry_budget=7)
    seen = Recorder()
    flow.subscribe(seen)
    assert flow.retry_allowed(nebius_datasets_async.Failure.TIMEOUT) is False
    assert seen.events == [ev.BudgetSpent(10.0, 7.0, False, "timeout")]
    flow.unsubscribe(seen)
    flow.retry_allowed(nebius_datasets_async.Failure.ERROR)
    assert len(seen.events) == 1
    await flow.aclose()
