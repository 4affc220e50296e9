"""One gate per client: single calls and bulk runs share one flow control, across tasks,
event loops and threads; rate limits as token buckets and as windows with or without headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from nebius_datasets_async import (
    APITimeoutError,
    ClientClosedError,
    DatasetsClient,
    DatasetsError,
    DatasetUpdate,
    EventLoopError,
    FlowControl,
    PermissionDeniedError,
    RateLimitError,
    Request,
    Response,
    RetryPolicy,
)
from nebius_datasets_async.testing import (
    FakeDatasetsServer,
    Faults,
    MockTransport,
    json_response,
    make_dataset,
)

FAST_RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.01)


async def test_single_calls_from_many_tasks_share_one_pace() -> None:
    """Tasks making single calls through one client against a token bucket: the gate paces
    them all, so none fails and few requests are answered 429.
    """
    faults = Faults(rate_limit=150, burst=10, rate_limit_retry_after=1, latency=0.005)
    async with FakeDatasetsServer(datasets=600, faults=faults, record_requests=False) as fake:
        ids = fake.dataset_ids
        async with fake.client() as client:

            async def task(k: int) -> None:
                for j in range(3):
                    await client.rename(ids[k * 3 + j], f"t{k}-{j}")

            results = await asyncio.gather(*(task(k) for k in range(200)), return_exceptions=True)
        assert [r for r in results if r is not None] == []
        share = fake.stats.statuses[429] / fake.stats.requests
        assert share <= 0.08, fake.stats
        assert fake.stats.applied == 600


async def test_bulk_run_and_single_calls_share_the_gate() -> None:
    """A bulk run and concurrent single calls on one client: a 429 seen by one slows the
    other; every update lands and few requests are throttled.
    """
    faults = Faults(rate_limit=300, burst=20, rate_limit_retry_after=1, latency=0.005)
    async with FakeDatasetsServer(datasets=800, faults=faults, record_requests=False) as fake:
        ids = fake.dataset_ids
        async with fake.client(retry=FAST_RETRY) as client:
            bulk = asyncio.ensure_future(
                client.patch_all(DatasetUpdate(i, name="bulk") for i in ids[:600])
            )
            singles = await asyncio.gather(*(client.move(i, "/single") for i in ids[600:]))
            report = await bulk
        assert report.ok, report.summary()
        assert all(ds.folder == "/single" for ds in singles)
        assert all(fake.store[i]["name"] == "bulk" for i in ids[:600])
        assert fake.stats.statuses[429] / fake.stats.requests <= 0.08, fake.stats


async def test_a_bulk_runs_concurrency_is_a_share_of_the_clients() -> None:
    """A run asking for more workers than the client allows never has more in flight than
    the client's bound, even beside another run.
    """
    async with FakeDatasetsServer(datasets=200, faults=Faults(latency=0.01)) as fake:
        async with fake.client(max_concurrency=8) as client:
            ids = fake.dataset_ids
            a = client.patch_all((DatasetUpdate(i, name="a") for i in ids[:100]), concurrency=64)
            b = client.patch_all((DatasetUpdate(i, name="b") for i in ids[100:]), concurrency=64)
            reports = await asyncio.gather(a, b)
        assert all(r.ok for r in reports)
        assert fake.stats.max_in_flight <= 8


async def test_two_clients_can_share_one_flow_control() -> None:
    """Clients given the same FlowControl are bound together."""
    flow = FlowControl(max_concurrency=4)
    async with FakeDatasetsServer(datasets=40, faults=Faults(latency=0.01)) as fake:
        async with fake.client(flow=flow) as one, fake.client(flow=flow) as two:
            ids = fake.dataset_ids
            await asyncio.gather(
                *(one.rename(i, "one") for i in ids[:20]), *(two.rename(i, "two") for i in ids[20:])
            )
        assert fake.stats.max_in_flight <= 4
        assert flow.state().requests == 40


@pytest.mark.parametrize("kind", ["fixed", "sliding"])
async def test_window_limit_with_headers_is_paced_by_them(kind: str) -> None:
    """With x-ratelimit-* headers the gate spreads what remains over the time to the reset:
    nearly no 429s and no probing.
    """
    faults = Faults(window_limit=60, window=1.0, window_kind=kind, limit_headers=True)
    async with FakeDatasetsServer(datasets=150, faults=faults, record_requests=False) as fake:
        async with fake.client(retry=FAST_RETRY) as client:
            report = await client.patch_all(DatasetUpdate(i, name="w") for i in fake.dataset_ids)
            state = client.flow.state()
        assert report.ok, report.summary()
        assert fake.stats.statuses[429] <= 3, fake.stats
        assert state.pacing == "headers"


@pytest.mark.parametrize("kind", ["fixed", "sliding"])
async def test_window_limit_without_headers_pauses_when_refused(kind: str) -> None:
    """Without headers, a used-up window (everything refused) pauses the gate for the
    Retry-After instead of hammering; every update lands.
    """
    faults = Faults(window_limit=60, window=1.0, window_kind=kind)
    async with FakeDatasetsServer(datasets=150, faults=faults, record_requests=False) as fake:
        async with fake.client(retry=FAST_RETRY) as client:
            report = await client.patch_all(DatasetUpdate(i, name="w") for i in fake.dataset_ids)
        assert report.ok, report.summary()
        assert fake.stats.statuses[429] <= 0.5 * fake.stats.requests, fake.stats


async def test_deadline_counts_the_wait_for_a_place() -> None:
    """Calls queued behind a full client give up when their deadline passes while waiting,
    with APITimeoutError, instead of waiting their turn first.
    """
    policy = RetryPolicy(deadline=0.3)
    async with FakeDatasetsServer(datasets=6, faults=Faults(latency=0.25)) as fake:
        async with fake.client(max_concurrency=1, retry=policy) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            results = await asyncio.gather(
                *(client.get_dataset(i) for i in fake.dataset_ids), return_exceptions=True
            )
            took = loop.time() - started
    kinds = Counter(type(r).__name__ for r in results)
    assert kinds["Dataset"] == 1
    assert kinds["APITimeoutError"] == 5
    assert all(isinstance(r, APITimeoutError) for r in results[1:])
    assert took < 1.0


async def test_a_403_fails_its_update_only() -> None:
    """One dataset the key may not touch fails alone; the run goes on."""
    async with FakeDatasetsServer(datasets=50) as fake:
        fake.fail_next(1, status=403, detail="not yours")
        async with fake.client() as client:
            report = await client.patch_all(
                (DatasetUpdate(i, name="x") for i in fake.dataset_ids), concurrency=1
            )
        assert (report.succeeded, report.failed, report.skipped) == (49, 1, 0)
        assert isinstance(report.failures[0].error, PermissionDeniedError)


async def test_403s_for_many_datasets_in_a_row_stop_the_run() -> None:
    """403s for several different datasets with no success between them mean the key is
    refused: the run stops and skips the rest.
    """
    async with FakeDatasetsServer(datasets=50) as fake:
        fake.fail_next(5, status=403, detail="forbidden")
        async with fake.client() as client:
            report = await client.patch_all(
                (DatasetUpdate(i, name="x") for i in fake.dataset_ids), concurrency=1
            )
        assert (report.succeeded, report.failed, report.skipped) == (0, 5, 45)
        assert fake.stats.requests == 5


async def test_throttles_do_not_use_up_single_call_attempts() -> None:
    """A single call answered 429 more often than max_attempts still succeeds: throttles
    count against max_throttled, which ends it once exceeded.
    """
    async with FakeDatasetsServer(datasets=1) as fake:
        async with fake.client(retry=RetryPolicy(max_attempts=2, max_throttled=5)) as client:
            fake.fail_next(4, status=429, retry_after=0.001)
            ds = await client.rename(fake.dataset_ids[0], "eventually")
            assert ds.name == "eventually"
            fake.fail_next(7, status=429, retry_after=0.001)
            with pytest.raises(RateLimitError):
                await client.rename(fake.dataset_ids[0], "never")


async def test_every_admitted_request_gives_its_place_back() -> None:
    """Whatever way requests end (answers, 4xx, 5xx, throttles, resets, timeouts, bad bodies),
    the gate holds no place afterwards and admitted as many as the server received.
    """
    faults = Faults(
        rate_429=0.05,
        retry_after=0.001,
        rate_500=0.05,
        rate_503=0.05,
        rate_reset=0.05,
        rate_slow=0.02,
        slow_delay=0.3,
        rate_malformed=0.05,
        seed=3,
    )
    async with FakeDatasetsServer(datasets=300, faults=faults) as fake:
        async with fake.client(timeout=0.1, retry=FAST_RETRY) as client:
            ids = [*fake.dataset_ids, "missing-1", "missing-2"]
            await client.patch_all(DatasetUpdate(i, name="x") for i in ids)
            state = client.flow.state()
        assert state.in_flight == 0
        assert state.waiting == 0
        assert state.requests <= fake.stats.requests <= state.requests + fake.stats.resets


async def test_closed_client_raises_client_closed_error() -> None:
    """A call after aclose() raises ClientClosedError (a DatasetsError), not a raw error."""
    async with FakeDatasetsServer(datasets=1) as fake:
        client = fake.client()
        await client.get_dataset(fake.dataset_ids[0])
        await client.aclose()
        with pytest.raises(ClientClosedError):
            await client.get_dataset(fake.dataset_ids[0])


def test_a_callers_session_used_from_another_loop_says_what_to_do() -> None:
    """A caller's aiohttp session is bound to its loop: another loop gets EventLoopError."""
    import aiohttp

    async def make() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    loop = asyncio.new_event_loop()
    session = loop.run_until_complete(make())
    client = DatasetsClient(api_key="k", base_url="http://127.0.0.1:9", session=session)

    async def call() -> None:
        await client.get_dataset("x")

    try:
        with pytest.raises(EventLoopError, match="another event loop"):
            asyncio.run(call())
    finally:
        loop.run_until_complete(session.close())
        loop.close()


SCRIPT = """
import asyncio, sys, threading
from nebius_datasets_async import DatasetsClient
from nebius_datasets_async.testing import FakeDatasetsServer

with FakeDatasetsServer(datasets=40).in_thread() as fake:
    # a module-level client: no event loop is running here
    client = DatasetsClient(api_key=fake.api_key, base_url=fake.base_url)
    ids = fake.dataset_ids

    async def job(n):
        await client.rename(ids[n], f"job-{n}")

    for n in range(3):  # one asyncio.run per job, as Celery or RQ tasks do
        asyncio.run(job(n))

    errors = []

    def worker(k):
        async def calls():
            for j in range(5):
                await client.move(ids[10 + k * 5 + j], f"/thread-{k}")
        try:
            asyncio.run(calls())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    async def loop_kept_open():
        await client.get_dataset(ids[0])

    # a loop that is still open when the client closes from another loop
    kept = asyncio.new_event_loop()
    runner = threading.Thread(target=kept.run_forever)
    runner.start()
    asyncio.run_coroutine_threadsafe(loop_kept_open(), kept).result(30)
    asyncio.run(client.aclose())
    kept.call_soon_threadsafe(kept.stop)
    runner.join(30)
    kept.run_until_complete(kept.shutdown_asyncgens())
    kept.close()

    assert not errors, errors
    assert [fake.store[ids[n]]["name"] for n in range(3)] == ["job-0", "job-1", "job-2"]
    assert all(fake.store[ids[10 + k * 5 + j]]["folder"] == f"/thread-{k}"
               for k in range(4) for j in range(5))
print("ok")
"""


def test_one_client_across_asyncio_run_jobs_threads_and_loops_under_dev_mode(
    tmp_path: Path,
) -> None:
    """One client made at module level serves asyncio.run per job and threads with their own
    loops, and closes from yet another loop, with nothing on stderr under `python -X dev`.
    """
    script = tmp_path / "loops.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBIUS_")}
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert proc.stderr == ""


async def test_callers_that_give_up_leave_no_slot_behind() -> None:
    """Calls offered at twice a 20/s limit, each with a 2 s deadline: a caller that gives up
    while waiting for its pacing slot gives the slot back, so the schedule never runs ahead of
    the callers still waiting and the limit stays in use (goodput >= 75% of it). Before, every
    abandoned slot stayed booked and after a few seconds no request was sent at all.
    """
    faults = Faults(rate_limit=20, burst=5, rate_limit_retry_after=1)
    async with FakeDatasetsServer(datasets=240, faults=faults, record_requests=False) as fake:
        ids = fake.dataset_ids
        done: list[int] = []
        async with fake.client(retry=RetryPolicy(deadline=2.0)) as client:

            async def call(i: int) -> None:
                await asyncio.sleep(i / 40)
                with contextlib.suppress(DatasetsError):
                    await client.rename(ids[i], f"g{i}")
                    done.append(i)

            await asyncio.gather(*(call(i) for i in range(240)))  # 6 s offered at 40/s
        # the calls offered in the last 3 s: the limit admits about 60 of them
        late = [i for i in done if i >= 120]
        assert len(late) >= 0.75 * 20 * 3, (len(late), fake.stats)
        assert sum(1 for r in fake.store.values() if r["name"].startswith("g")) == len(done)


@pytest.mark.parametrize(
    ("answers", "why"),
    [
        ([(503, {"Retry-After": "3600"})], "a 503 asking everyone to wait an hour"),
        ([(429, {"Retry-After": "86400"})] * 5, "five 429s asking for a day"),
        (
            [(200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "24h"})],
            "a quota spent until tomorrow",
        ),
    ],
)
async def test_a_hold_longer_than_max_retry_after_fails_later_calls_at_once(
    answers: list[tuple[int, dict[str, str]]], why: str
) -> None:
    """When the gate must hold everyone longer than the caller allows (``max_retry_after``),
    later calls fail at once with ``RateLimitError`` saying when to try again, instead of
    hanging silently for the hour or the day.
    """
    script = iter(answers)

    def handler(request: Request) -> Response:
        status, headers = next(script, (200, {}))
        payload = make_dataset(0) if status == 200 else {"detail": "slow down"}
        return json_response(status, payload, headers=headers)

    client = DatasetsClient(api_key="k", transport=MockTransport(handler))
    async with client:
        for _ in answers:
            with contextlib.suppress(DatasetsError):
                await client.get_dataset("a")
        started = asyncio.get_running_loop().time()
        with pytest.raises(RateLimitError) as caught:
            await asyncio.wait_for(client.get_dataset("b"), 5)
        assert asyncio.get_running_loop().time() - started < 1.0, why
        assert caught.value.retry_after is not None
        assert caught.value.retry_after > client.retry.max_retry_after, why
