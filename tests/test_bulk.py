"""The bulk engine over a real socket: one outcome per update, order, limits, pacing, budget."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest

from nebius_datasets_async import (
    AuthenticationError,
    BulkError,
    BulkOptions,
    BulkProgress,
    DatasetUpdate,
    FlowControl,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    OutcomeStatus,
    PatchOutcome,
    RetryPolicy,
    RunStoppedError,
)
from nebius_datasets_async.testing import FakeDatasetsServer, Faults

from .conftest import client_tasks_left

FAST_RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.01)


async def collect(
    fake: FakeDatasetsServer, updates: object, **kwargs: object
) -> list[PatchOutcome]:
    client_kwargs = {k: kwargs.pop(k) for k in ("max_concurrency", "retry") if k in kwargs}
    client_kwargs.setdefault("retry", FAST_RETRY)
    async with fake.client(**client_kwargs) as client:
        return [o async for o in client.patch_many(updates, **kwargs)]  # type: ignore[arg-type]


async def test_thousands_with_faults_one_outcome_each_matching_the_server() -> None:
    """5,000 updates through 429s, 503s, resets, applied-then-500s and 404s: exactly one
    outcome per update, every applied one equal to the server's final record.
    """
    faults = Faults(
        rate_429=0.01,
        retry_after=0.01,
        rate_503=0.01,
        rate_502=0.01,
        rate_reset=0.01,
        rate_500_after_apply=0.01,
        seed=7,
    )
    async with FakeDatasetsServer(datasets=4950, faults=faults) as fake:
        ids = fake.dataset_ids
        missing = [f"missing-{i}" for i in range(50)]
        updates = [DatasetUpdate(i, folder=f"/bulk/{n % 7}") for n, i in enumerate(ids + missing)]
        outcomes = await collect(fake, updates, max_concurrency=32)
        assert len(outcomes) == len(updates)
        assert Counter(o.update for o in outcomes) == Counter(updates)
        by_status = Counter(o.status for o in outcomes)
        assert by_status[OutcomeStatus.SKIPPED] == 0
        for outcome in outcomes:
            if outcome.update.dataset_id.startswith("missing-"):
                assert outcome.status is OutcomeStatus.FAILED
                assert isinstance(outcome.error, NotFoundError)
            elif outcome.ok:
                assert outcome.dataset is not None
                record = fake.store[outcome.update.dataset_id]
                assert outcome.dataset.folder == record["folder"] == outcome.update.folder
                assert outcome.dataset.name == record["name"]
            else:
                assert outcome.error is not None
        # Faults were really injected and retried, not avoided.
        assert fake.stats.statuses[429] > 0
        assert fake.stats.statuses[503] > 0
        assert fake.stats.resets > 0
        # A connection reset before any answer is resent once at once, not counted as an
        # attempt: the server may see up to one more request per reset.
        attempts = sum(o.attempts for o in outcomes)
        assert attempts <= fake.stats.requests <= attempts + fake.stats.resets
        assert by_status[OutcomeStatus.APPLIED] >= 4900


async def test_in_flight_never_exceeds_the_limit() -> None:
    """Measured on the server: at most `concurrency` requests at once, and it is reached."""
    async with FakeDatasetsServer(datasets=200, faults=Faults(latency=0.02)) as fake:
        updates = [DatasetUpdate(i, name="n") for i in fake.dataset_ids]
        outcomes = await collect(fake, updates, max_concurrency=32, concurrency=8)
        assert all(o.ok for o in outcomes)
        assert fake.stats.max_in_flight == 8


async def test_client_limit_caps_the_run_concurrency() -> None:
    """A run asking for more than the client's max_concurrency gets the client's limit."""
    async with FakeDatasetsServer(datasets=100, faults=Faults(latency=0.02)) as fake:
        updates = [DatasetUpdate(i, name="n") for i in fake.dataset_ids]
        await collect(fake, updates, max_concurrency=5, concurrency=50)
        assert fake.stats.max_in_flight == 5


async def test_same_id_updates_apply_in_input_order_never_together() -> None:
    """Updates of one id are applied one at a time, in input order; the last one wins."""
    async with FakeDatasetsServer(datasets=10, faults=Faults(latency=0.01)) as fake:
        a, b = fake.dataset_ids[:2]
        updates = []
        for step in range(10):
            updates += [DatasetUpdate(a, name=f"a-{step}"), DatasetUpdate(b, name=f"b-{step}")]
        outcomes = await collect(fake, updates, concurrency=8)
        assert all(o.ok for o in outcomes)
        assert [r.json["name"] for r in fake.applied_requests(a)] == [f"a-{s}" for s in range(10)]
        assert fake.store[a]["name"] == "a-9"
        assert fake.store[b]["name"] == "b-9"
        assert fake.stats.max_in_flight_per_id == 1
        assert fake.stats.max_in_flight > 1  # the two ids did run side by side


async def test_async_generator_input_is_consumed_lazily() -> None:
    """An async generator is read as workers need items, never all up front."""
    async with FakeDatasetsServer(datasets=300, faults=Faults(latency=0.01)) as fake:
        produced = 0

        async def source() -> AsyncIterator[DatasetUpdate]:
            nonlocal produced
            for i in fake.dataset_ids:
                produced += 1
                yield DatasetUpdate(i, folder="/gen")

        seen_ahead = []
        async with fake.client() as client:
            async for outcome in client.patch_many(source(), concurrency=4):
                seen_ahead.append(produced - fake.stats.applied)
                assert outcome.ok
        assert produced == 300
        assert max(seen_ahead) <= 4 + 2 * 4 + 1  # workers plus the outcome queue, not 300
        assert all(r["folder"] == "/gen" for r in fake.store.values())


async def test_break_leaves_nothing_running() -> None:
    """Breaking out of the iteration cancels work in flight; no task or session is left."""
    async with FakeDatasetsServer(datasets=500, faults=Faults(latency=0.05)) as fake:
        async with fake.client() as client:
            async for _outcome in client.patch_many(
                (DatasetUpdate(i, name="x") for i in fake.dataset_ids), concurrency=16
            ):
                break
            assert await client_tasks_left() == set()
            assert client.in_flight == 0
        assert fake.stats.applied < 100


async def test_context_manager_exit_closes_at_once() -> None:
    """Leaving `async with client.patch_many(...)` early stops the run deterministically."""
    async with FakeDatasetsServer(datasets=500, faults=Faults(latency=0.05)) as fake:
        async with fake.client() as client:
            async with client.patch_many(
                [DatasetUpdate(i, name="x") for i in fake.dataset_ids], concurrency=16
            ) as run:
                async for _outcome in run:
                    break
            current = asyncio.current_task()
            pending = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
            assert not any(t.get_name().startswith("nebius-bulk") for t in pending)


async def test_cancelling_the_consumer_leaves_nothing_running() -> None:
    """Cancelling the task that iterates cancels the run and everything it started."""
    async with FakeDatasetsServer(datasets=500, faults=Faults(latency=0.05)) as fake:
        async with fake.client() as client:
            first = asyncio.Event()

            async def consume() -> None:
                async for _ in client.patch_many(
                    (DatasetUpdate(i, name="x") for i in fake.dataset_ids), concurrency=16
                ):
                    first.set()

            task = asyncio.create_task(consume())
            await first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await client_tasks_left() == set()


async def test_retry_after_delays_only_the_throttled_update() -> None:
    """A 429 with Retry-After makes its own update wait that long before its next try; the
    other updates go on meanwhile instead of the whole run pausing.
    """
    async with FakeDatasetsServer(datasets=200, faults=Faults(latency=0.005)) as fake:
        fake.fail_next(1, status=429, retry_after=0.3)
        updates = [DatasetUpdate(i, name="p") for i in fake.dataset_ids]
        outcomes = await collect(fake, updates, concurrency=16)
        assert all(o.ok for o in outcomes)
        first = fake.requests[0]
        again = [r for r in fake.requests[1:] if r.dataset_id == first.dataset_id]
        assert len(again) == 1
        assert again[0].received_at - first.received_at >= 0.3 - 0.01
        meanwhile = [
            r for r in fake.requests if first.received_at < r.received_at < again[0].received_at
        ]
        assert len(meanwhile) >= 100  # the run did not stop for the throttled update


async def test_rate_limited_server_settles_with_few_429s() -> None:
    """Against a token bucket (small burst, instant answers) the run completes with a low
    share of 429s, because the client paces itself near the server's rate.
    """
    faults = Faults(rate_limit=300, burst=10, rate_limit_retry_after=0.2)
    async with FakeDatasetsServer(datasets=900, faults=faults, record_requests=False) as fake:
        updates = [DatasetUpdate(i, name="rl") for i in fake.dataset_ids]
        outcomes = await collect(fake, updates, concurrency=64)
        assert all(o.ok for o in outcomes)
        share = fake.stats.statuses[429] / fake.stats.requests
        assert share < 0.1, fake.stats


async def test_the_gate_learns_the_servers_rate() -> None:
    """After a run against a token bucket, the client's pace is near the bucket's rate.

    100/s, not more: what the law measures is what got through, so at 300/s a CI machine
    whose cores are busy with other tests made the client itself the bottleneck (it learnt
    140/s once); at 100/s the client has room to spare even then.
    """
    faults = Faults(rate_limit=100, burst=10, rate_limit_retry_after=0.02)
    async with FakeDatasetsServer(datasets=400, faults=faults, record_requests=False) as fake:
        updates = [DatasetUpdate(i, name="rl") for i in fake.dataset_ids]
        async with fake.client(retry=FAST_RETRY) as client:
            report = await client.patch_all(updates, concurrency=64)
            state = client.flow.state()
        assert report.ok
        assert state.pacing == "measured"
        assert state.rate is not None
        assert 50 <= state.rate <= 133
        # (while measuring, the pace follows the clock: read a moment apart, they differ a bit)
        assert report.final_rate == pytest.approx(state.rate, rel=0.05)


async def test_retry_budget_ends_a_run_against_a_dead_server_quickly() -> None:
    """Every request 503: the shared budget stops retries, so requests stay near one per
    update; without the budget each update is tried max_attempts times.
    """
    async with FakeDatasetsServer(datasets=1000, faults=Faults(rate_503=1.0)) as fake:
        updates = [DatasetUpdate(i, name="dead") for i in fake.dataset_ids]
        outcomes = await collect(fake, updates, concurrency=32)
        assert len(outcomes) == 1000
        assert all(isinstance(o.error, InternalServerError) for o in outcomes)
        assert fake.stats.requests <= 1.2 * 1000
    async with FakeDatasetsServer(datasets=200, faults=Faults(rate_503=1.0)) as fake:
        updates = [DatasetUpdate(i, name="dead") for i in fake.dataset_ids]
        flow = FlowControl(retry_budget=None)
        async with fake.client(retry=FAST_RETRY, flow=flow) as client:
            await client.patch_all(updates, concurrency=32)
        assert fake.stats.requests == 4 * 200


async def test_throttling_fails_an_item_only_after_max_throttled() -> None:
    """An update answered 429 again and again fails with the last RateLimitError only after
    max_throttled retries.
    """
    async with FakeDatasetsServer(datasets=1) as fake:
        fake.fail_next(10, status=429, retry_after=0.001)
        updates = [DatasetUpdate(fake.dataset_ids[0], name="t")]
        options = BulkOptions(max_throttled=3)
        (outcome,) = await collect(fake, updates, options=options)
        assert outcome.status is OutcomeStatus.FAILED
        assert outcome.attempts == 4
        assert outcome.error is not None
        assert outcome.error.status_code == 429  # type: ignore[attr-defined]


async def test_authentication_error_stops_the_run_and_skips_the_rest() -> None:
    """A 401 stops the run: nothing new is sent, every remaining update is SKIPPED naming
    the cause, and the total is still one outcome per update.
    """
    async with FakeDatasetsServer(datasets=300) as fake:
        updates = [DatasetUpdate(i, name="x") for i in fake.dataset_ids]
        async with fake.client(api_key="revoked-key") as client:
            outcomes = [o async for o in client.patch_many(updates, concurrency=8)]
        assert len(outcomes) == 300
        failed = [o for o in outcomes if o.status is OutcomeStatus.FAILED]
        skipped = [o for o in outcomes if o.status is OutcomeStatus.SKIPPED]
        assert len(failed) + len(skipped) == 300
        assert 1 <= len(failed) <= 8
        assert all(isinstance(o.error, AuthenticationError) for o in failed)
        assert all(isinstance(o.error, RunStoppedError) for o in skipped)
        assert all(isinstance(o.error.cause, AuthenticationError) for o in skipped)  # type: ignore[union-attr]
        assert "401" in str(skipped[0].error)
        assert fake.stats.requests == len(failed)


async def test_graceful_stop_skips_the_rest() -> None:
    """run.stop() sends nothing new, lets requests in flight end and skips the rest."""
    async with FakeDatasetsServer(datasets=200, faults=Faults(latency=0.01)) as fake:
        updates = [DatasetUpdate(i, name="s") for i in fake.dataset_ids]
        async with fake.client() as client:
            run = client.patch_many(updates, concurrency=4)
            outcomes = []
            async for outcome in run:
                outcomes.append(outcome)
                if len(outcomes) == 20:
                    run.stop("enough")
        statuses = Counter(o.status for o in outcomes)
        assert len(outcomes) == 200
        assert 20 <= statuses[OutcomeStatus.APPLIED] <= 28
        assert statuses[OutcomeStatus.APPLIED] == fake.stats.applied
        assert all("enough" in str(o.error) for o in outcomes if o.status is OutcomeStatus.SKIPPED)


async def test_bad_item_in_input_raises_after_finishing_what_was_sent() -> None:
    """A non-DatasetUpdate in the input raises InvalidArgumentError, but only after the
    outcomes of everything already sent were yielded.
    """
    async with FakeDatasetsServer(datasets=20) as fake:
        items: list[object] = [DatasetUpdate(i, name="ok") for i in fake.dataset_ids[:10]]
        items.append({"dataset_id": "x"})
        outcomes: list[PatchOutcome] = []
        async with fake.client() as client:
            with pytest.raises(InvalidArgumentError, match="update number 11 is a dict"):
                async for outcome in client.patch_many(items, concurrency=2):  # type: ignore[arg-type]
                    outcomes.append(outcome)
        assert len(outcomes) == 10
        assert all(o.ok for o in outcomes)


async def test_input_that_raises_is_reported_after_the_outcomes() -> None:
    """An input iterator that fails mid-way: its error is raised after what was done."""
    async with FakeDatasetsServer(datasets=20) as fake:

        def source() -> Iterator[DatasetUpdate]:
            yield from (DatasetUpdate(i, name="ok") for i in fake.dataset_ids[:5])
            raise OSError("disk gone")

        outcomes: list[PatchOutcome] = []
        async with fake.client() as client:
            with pytest.raises(OSError, match="disk gone"):
                async for outcome in client.patch_many(source(), concurrency=2):
                    outcomes.append(outcome)
        assert [o.ok for o in outcomes] == [True] * 5


async def test_patch_all_report_and_progress() -> None:
    """patch_all counts everything; the progress hook sees the run; raise_for_failures raises."""
    async with FakeDatasetsServer(datasets=100, faults=Faults(latency=0.002)) as fake:
        updates = [DatasetUpdate(i, name="r") for i in fake.dataset_ids]
        updates.append(DatasetUpdate("ghost", name="r"))
        snapshots: list[BulkProgress] = []
        async with fake.client() as client:
            report = await client.patch_all(
                updates, progress=snapshots.append, options=BulkOptions(progress_interval=0.0)
            )
        assert (report.succeeded, report.failed, report.skipped) == (100, 1, 0)
        assert report.total == 101
        assert report.requests == fake.stats.requests == 101
        assert report.retries == 0
        assert report.elapsed > 0
        (failure,) = report.failures
        assert failure.update.dataset_id == "ghost"
        assert snapshots[-1].finished
        assert snapshots[-1].done == 101
        assert any(s.in_flight > 0 for s in snapshots)
        with pytest.raises(BulkError, match="1 failed") as info:
            report.raise_for_failures()
        assert info.value.report is report


async def test_rename_many_and_move_many() -> None:
    """The shortcuts send the right single field for every id."""
    async with FakeDatasetsServer(datasets=30) as fake:
        ids = fake.dataset_ids
        async with fake.client() as client:
            report = await client.rename_many({i: f"r-{n}" for n, i in enumerate(ids[:10])})
            assert report.ok
            report = await client.move_many(ids[10:], "/archive")
            assert report.ok
            with pytest.raises(InvalidArgumentError):
                await client.move_many(ids, "")
        assert [fake.store[i]["name"] for i in ids[:10]] == [f"r-{n}" for n in range(10)]
        assert all(fake.store[i]["folder"] == "/archive" for i in ids[10:])
        assert {tuple(r.json) for r in fake.requests} == {("name",), ("folder",)}
        assert len(fake.requests) == 30


async def test_a_run_is_iterated_once() -> None:
    """Iterating the same run twice is a programming error."""
    async with FakeDatasetsServer(datasets=2) as fake, fake.client() as client:
        run = client.patch_many([DatasetUpdate(fake.dataset_ids[0], name="x")])
        _ = [o async for o in run]
        with pytest.raises(RuntimeError, match="once"):
            aiter(run)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_throttled": -1},
        {"progress_interval": "often"},
    ],
)
def test_bulk_options_refuse_nonsense(kwargs: dict[str, object]) -> None:
    """Impossible knobs fail at construction with InvalidArgumentError, before any run."""
    with pytest.raises(InvalidArgumentError):
        BulkOptions(**kwargs)  # type: ignore[arg-type]


async def test_bad_concurrency_is_refused_before_sending() -> None:
    """concurrency=0 raises InvalidArgumentError when the run is created; nothing is sent."""
    async with FakeDatasetsServer(datasets=1) as fake, fake.client() as client:
        with pytest.raises(InvalidArgumentError):
            client.patch_many([DatasetUpdate(fake.dataset_ids[0], name="x")], concurrency=0)
        assert fake.requests == []


async def test_an_update_waiting_to_retry_gives_its_place_to_the_next() -> None:
    """Concurrency 1: the first update is throttled with Retry-After 1 s. While it waits, the
    run's one place sends the next updates (never two at once); the throttled one is applied
    after them, and no update is read before a place is free for it.
    """
    async with FakeDatasetsServer(datasets=3) as fake:
        first, second, third = fake.dataset_ids
        fake.fail_next(1, status=429, retry_after=1)
        updates = [DatasetUpdate(i, name=f"n-{i}") for i in (first, second, third)]
        done: list[str] = []
        async with fake.client() as client:
            async for outcome in client.patch_many(updates, concurrency=1):
                assert outcome.ok, outcome
                done.append(outcome.update.dataset_id)
        assert done == [second, third, first]
        assert fake.stats.max_in_flight == 1
        assert all(fake.store[i]["name"] == f"n-{i}" for i in (first, second, third))


async def test_updates_of_one_id_waiting_behind_a_retry_hold_no_place() -> None:
    """Concurrency 1, two updates of one dataset and the first throttled: the second waits
    for the first without holding the run's one place (which the first needs to retry), so
    the run ends, in input order for that dataset.
    """
    async with FakeDatasetsServer(datasets=2) as fake:
        same, other = fake.dataset_ids
        fake.fail_next(1, status=429, retry_after=0.5)
        updates = [
            DatasetUpdate(same, name="first"),
            DatasetUpdate(same, name="second"),
            DatasetUpdate(other, name="other"),
        ]
        async with fake.client() as client:
            report = await asyncio.wait_for(client.patch_all(updates, concurrency=1), 10)
        assert report.succeeded == 3
        assert fake.store[same]["name"] == "second"
        assert fake.store[other]["name"] == "other"


async def test_an_input_that_waits_for_an_outcome_does_not_stall_a_retry() -> None:
    """An async input that yields the next update only once the last one's outcome is known,
    the first update throttled (Retry-After 0.2 s), concurrency 1: the retry gets its place
    back (no worker holds one while it waits for the input), and both updates land.
    """
    async with FakeDatasetsServer(datasets=2) as fake:
        first, second = fake.dataset_ids
        fake.fail_next(1, status=429, retry_after=0.2)
        outcome_known = asyncio.Event()

        async def source() -> AsyncIterator[DatasetUpdate]:
            yield DatasetUpdate(first, name="a")
            await outcome_known.wait()
            yield DatasetUpdate(second, name="b")

        async with fake.client() as client:
            run = client.patch_many(source(), concurrency=1)

            async def consume() -> list[str]:
                done = []
                async for outcome in run:
                    assert outcome.ok, outcome
                    done.append(outcome.update.dataset_id)
                    outcome_known.set()
                return done

            assert await asyncio.wait_for(consume(), 5) == [first, second]
