"""The flow control shared through a real Redis: one pace for a fleet, no trace of the key,
fallback when Redis fails, the command line's --redis and --shard, and the arq recipe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from nebius_datasets_async import DatasetUpdate, RateLimits
from nebius_datasets_async._cli import shard_of
from nebius_datasets_async._flow import Failure
from nebius_datasets_async._law import Law, Phase
from nebius_datasets_async.testing import FakeDatasetsServer, Faults

from .redis_server import RedisServer, external_url

redis_asyncio = pytest.importorskip("redis.asyncio")
from nebius_datasets_async.redis import RedisFlowControl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real Redis: $NEBIUS_TEST_REDIS_URL, or a redis-server started for these tests."""
    url = external_url()
    if url is not None:
        yield url
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[object]:
    client = redis_asyncio.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


def env_for(fake: FakeDatasetsServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBIUS_")}
    env.update(NEBIUS_BASE_URL=fake.base_url, NEBIUS_API_KEY=fake.api_key, **extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


class FirstBurst:
    """Issue 16's measure of a run against the fake: the share of requests refused beyond the
    first burst (the requests that reached the server before it answered its first 429: their
    senders could not know of it). Watches the fake's counters from the test's loop.
    """

    def __init__(self, fake: FakeDatasetsServer) -> None:
        self._fake = fake
        self._counts: tuple[int, int] | None = None
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        stats = self._fake.stats
        while not stats.statuses[429]:  # noqa: ASYNC110 (the fake has no event for it)
            await asyncio.sleep(0.001)
        requests = stats.requests
        await asyncio.sleep(self._fake.faults.latency)  # (answered a latency later)
        self._counts = (requests, stats.statuses[429])

    def refused_later(self) -> float:
        self._task.cancel()
        stats = self._fake.stats
        requests, refused = self._counts or (stats.requests, stats.statuses[429])
        return (stats.statuses[429] - refused) / max(stats.requests - requests, 1)


async def test_two_clients_share_one_pace_and_leave_no_trace_of_the_key(
    redis_url: str, redis: object
) -> None:
    """Two clients with their own RedisFlowControl (as two processes would) against one rate
    limit: at most 5% of the requests beyond the first burst refused (issue 16's target);
    every key has a TTL and one hash tag; no key or value holds the API key.
    """
    faults = Faults(rate_limit=200, burst=10, rate_limit_retry_after=1, latency=0.01)
    async with FakeDatasetsServer(datasets=1200, faults=faults, record_requests=False) as fake:
        burst = FirstBurst(fake)
        ids = fake.dataset_ids
        flows = [RedisFlowControl(redis_url), RedisFlowControl(redis_url)]
        async with fake.client(flow=flows[0]) as one, fake.client(flow=flows[1]) as two:
            reports = await asyncio.gather(
                one.patch_all(DatasetUpdate(i, name="one") for i in ids[:600]),
                two.patch_all(DatasetUpdate(i, name="two") for i in ids[600:]),
            )
        for flow in flows:
            await flow.aclose()
        assert all(r.ok for r in reports)
        # 1-3% here, as one FlowControl shared by both clients gets (2.2%)
        assert burst.refused_later() <= 0.05, fake.stats
        assert flows[0].keys == flows[1].keys
        # one Redis round trip books slots for every request waiting: about one per three here
        assert all(
            0 < f.redis_calls < 0.75 * r.requests for f, r in zip(flows, reports, strict=True)
        )
    keys = [k async for k in redis.scan_iter("*")]  # type: ignore[attr-defined]
    assert keys
    tags = {k.decode().split("{", 1)[1].split("}", 1)[0] for k in keys}
    assert len(tags) == 1
    secret = fake.api_key.encode()
    for key in keys:
        assert secret not in key
        assert await redis.pttl(key) > 0  # type: ignore[attr-defined]
        values = await redis.hgetall(key)  # type: ignore[attr-defined]
        assert all(secret not in k and secret not in v for k, v in values.items())


async def test_unreachable_redis_falls_back_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis down, every call still succeeds, paced locally, and one warning is logged."""
    caplog.set_level(logging.WARNING, logger="nebius_datasets_async")
    flow = RedisFlowControl("redis://127.0.0.1:9/0", timeout=0.1)
    async with FakeDatasetsServer(datasets=200) as fake:
        async with fake.client(flow=flow) as client:
            report = await client.patch_all(DatasetUpdate(i, name="x") for i in fake.dataset_ids)
            await asyncio.sleep(1.1)  # past the retry interval: Redis is tried again, fails
            await client.rename(fake.dataset_ids[0], "again")
        await flow.aclose()
    assert report.ok
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Redis is unavailable" in warnings[0].getMessage()
    assert flow.fallbacks >= 2


async def test_cancelled_callers_free_their_places_and_the_booker_stops(
    redis_url: str, redis: object
) -> None:
    """Callers cancelled while they wait for a shared slot hold nothing afterwards; the
    process's booker ends when nobody waits, and the flow keeps working.
    """
    faults = Faults(rate_limit=50, burst=5, rate_limit_retry_after=1)
    async with FakeDatasetsServer(datasets=100, faults=faults) as fake:
        flow = RedisFlowControl(redis_url, max_concurrency=64)
        async with fake.client(flow=flow) as client:
            ids = fake.dataset_ids
            tasks = [asyncio.create_task(client.rename(i, "cancelled")) for i in ids[:60]]
            await asyncio.sleep(0.3)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert any(isinstance(r, asyncio.CancelledError) for r in results)
            await asyncio.sleep(0.1)
            assert flow.state().in_flight == 0
            assert flow.state().waiting == 0
            assert flow._booker is None
            renamed = await client.rename(ids[99], "after")
        await flow.aclose()
    assert renamed.name == "after"
    assert fake.store[ids[99]]["name"] == "after"


async def test_a_stored_law_that_is_no_snapshot_is_never_run(
    redis_url: str, redis: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis holds the fleet's law as plain JSON data: a stored value that is not a snapshot
    of the law (a pickle, an unknown type) is never executed; the process warns once, starts
    the law afresh over it, and every call succeeds.
    """
    caplog.set_level(logging.WARNING, logger="nebius_datasets_async")
    async with FakeDatasetsServer(datasets=3) as fake:
        flow = RedisFlowControl(redis_url)
        async with fake.client(flow=flow) as client:
            await client.get_dataset(fake.dataset_ids[0])
            key = flow.keys[0]
            pickled = pickle.dumps(Law(max_concurrency=1))
            for bad in (pickled, json.dumps({"$": "os.system", "v": "touch /tmp/pwned"})):
                await redis.hset(key, mapping={"law": bad, "version": 40})  # type: ignore[attr-defined]
                for dataset_id in fake.dataset_ids:
                    await client.get_dataset(dataset_id)
                    await asyncio.sleep(0.11)  # each answer is proposed with the next call
                stored = await redis.hgetall(key)  # type: ignore[attr-defined]
                assert int(stored[b"version"]) > 40
                law = Law.restore(json.loads(stored[b"law"]))
                assert law.phase is Phase.OPEN
        await flow.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "the fleet's law stored in Redis is not one this version reads: starting afresh"
    ]


def fleet_of(redis_url: str, n: int) -> list[RedisFlowControl]:
    """``n`` flows of one key, as ``n`` processes would have (bound as a client binds)."""
    flows = [RedisFlowControl(redis_url) for _ in range(n)]
    for flow in flows:
        flow.bind("fleet-test")
    return flows


async def redis_clock(redis: Any) -> float:
    """Redis's clock (the fleet's) minus ours."""
    seconds, micros = await redis.time()
    return float(seconds) + float(micros) / 1e6 - time.monotonic()


async def stored(redis: Any, key: str, field: bytes, until: float = 5.0) -> float:
    """Wait until the fleet's state holds a non-zero ``field``; return it."""
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        value = float((await redis.hget(key, field)) or 0)
        if value > 0:
            return value
        await asyncio.sleep(0.002)
    raise AssertionError(f"{field!r} never stored")


class Senders:
    """Processes B and C of a fleet sending without pause (each request answered after
    10 ms, two at a time each), recording when each request left.
    """

    def __init__(self, flows: list[RedisFlowControl]) -> None:
        self.sent: list[float] = []
        self._tasks = [asyncio.create_task(self._send(flow)) for flow in flows for _ in range(2)]

    async def _send(self, flow: RedisFlowControl) -> None:
        while True:
            ticket = await flow.admit()
            self.sent.append(time.monotonic())
            await asyncio.sleep(0.01)
            flow.on_answer(ticket, RateLimits())

    def between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.sent)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_quota_headers_one_process_reads_pace_every_process_within_a_horizon(
    redis_url: str, redis: Any
) -> None:
    """Process A reads quota headers (20 a second, refilling; plenty left); from one
    booking horizon (50 ms) after the law that A proposed is stored, B and C together send at
    that pace, where they sent ten times faster before.
    """
    a, b, c = flows = fleet_of(redis_url, 3)
    senders = Senders([b, c])
    try:
        await asyncio.sleep(0.5)
        assert b.state().rate is None  # unpaced so far
        for _ in range(2):  # two readings 0.15 s apart: a reset that stays put refills
            ticket = await a.admit()
            a.on_answer(ticket, RateLimits(remaining=1000, limit=20, reset=1.0))
            await asyncio.sleep(0.15)
        await a.admit()  # A's next call proposes the law with both readings
        seen = time.monotonic()
        pace = await stored(redis, a.keys[0], b"pace")
        before = senders.between(seen - 0.6, seen - 0.1)
        await asyncio.sleep(1.2)
        after = senders.between(seen + 0.06, seen + 1.06)
    finally:
        await senders.stop()
        for flow in flows:
            await flow.aclose()
    assert pace == pytest.approx(20 / 1.0)
    assert before > 5 * pace * 0.5
    assert pace - 2 <= after <= pace + 2  # (one slot of credit, one at each edge)
    assert b.state().rate == c.state().rate == pace
    assert b.state().pacing == "shared"


async def test_a_long_retry_after_seen_by_one_process_holds_every_process(
    redis_url: str, redis: Any
) -> None:
    """Process A is told to wait 1.5 s (a 429 with Retry-After): the refusal travels at once
    and from one booking horizon after the hold is stored, B and C send nothing until it
    ends, then go on.
    """
    a, b, c = flows = fleet_of(redis_url, 3)
    senders = Senders([b, c])
    try:
        await asyncio.sleep(0.3)
        ticket = await a.admit()
        a.on_throttle(ticket, 1.5, RateLimits())
        hold = await stored(redis, a.keys[0], b"hold")
        seen = time.monotonic()
        ends = hold - await redis_clock(redis)
        await asyncio.sleep(ends - seen + 0.5)
        held = senders.between(seen + 0.06, ends - 0.005)
        resumed = senders.between(ends - 0.005, ends + 0.5)
    finally:
        await senders.stop()
        for flow in flows:
            await flow.aclose()
    assert ends - seen == pytest.approx(1.5, abs=0.1)
    assert held == 0
    assert resumed > 10


async def test_a_slot_booked_at_a_pace_since_doubled_comes_at_the_stored_pace(
    redis: Any,
) -> None:
    """The fleet's schedule, as the in-process gate's: a slot booked at one request a second
    (a closed limit's probe pace) does not hold the next once the stored pace is fifty times
    that; a cut, or a schedule another version of the script moved, keeps the slot as booked.
    """
    from nebius_datasets_async.redis import _STATE

    key = "nebius-test:slots"

    async def book(pace: float, tat: float, step: float, steptat: float) -> float:
        """The first slot booked at ``pace``, a schedule's next slot ``tat`` seconds from
        Redis's clock (booked ``step`` apart when the schedule's slot was ``steptat``)."""
        seconds, micros = await redis.time()
        now = seconds + micros / 1e6
        fields = {"pace": repr(pace), "tat": repr(now + tat), "step": repr(step)}
        fields["steptat"] = repr(now + steptat)
        await redis.hset(key, mapping=fields)
        argv = [-1, "", 0, 0, "t", 0, 1, 60.0, 0, 0, 10, 60_000]  # one slot, a minute ahead
        out = await redis.eval(_STATE, 1, key, *argv)
        assert int(out[5]) == 1
        return float(out[3]) - now  # (from the clock read above: within a few ms of it)

    # the next slot 10 s on, booked one second after the last: fifty times the pace now
    assert await book(50.0, 10.0, 1.0, 10.0) == pytest.approx(9.0 + 1 / 50, abs=1e-6)
    # a cut, or less than twice the pace: as booked
    assert await book(0.5, 10.0, 1.0, 10.0) == pytest.approx(10.0, abs=1e-6)
    assert await book(1.5, 10.0, 1.0, 10.0) == pytest.approx(10.0, abs=1e-6)
    # the schedule moved since the step was stored (another version of the script): as booked
    assert await book(50.0, 10.0, 1.0, 8.0) == pytest.approx(10.0, abs=1e-6)


async def test_conflicting_proposals_lose_and_double_count_no_event(
    redis_url: str, redis: Any
) -> None:
    """Three processes answer, fail and propose at once, so proposals conflict; each loser
    applies its events to the newer law and proposes again. In the end the stored law has
    counted every answer exactly once.
    """
    flows = fleet_of(redis_url, 3)
    answers = 0

    async def work(flow: RedisFlowControl, seed: int) -> None:
        nonlocal answers
        rng = random.Random(seed)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            ticket = await flow.admit()
            await asyncio.sleep(rng.uniform(0, 0.006))
            if rng.random() < 0.05:
                flow.on_failure(ticket, Failure.OVERLOAD)
            else:
                flow.on_answer(ticket, RateLimits())
            answers += 1

    await asyncio.gather(*(work(f, 3 * k + w) for k, f in enumerate(flows) for w in range(3)))
    await asyncio.sleep(0.15)
    for flow in flows:  # one call each, in turn: what is left is proposed without contest
        flow.cancel(await flow.admit())
    law = Law.restore(json.loads(await redis.hget(flows[0].keys[0], "law")))
    for flow in flows:
        await flow.aclose()
    assert sum(f.conflicts for f in flows) > 0
    assert law._latency_samples == answers  # every answer and overload, once
    assert law._episode_oks == answers - sum(f.state().overloads for f in flows)


def test_shards_split_a_plan_stably() -> None:
    """Every id lands in exactly one shard, the same one every time."""
    ids = [f"id-{i}" for i in range(1000)]
    shards = Counter(shard_of(i, 4) for i in ids)
    assert set(shards) == {1, 2, 3, 4}
    assert all(150 < n < 350 for n in shards.values())
    assert shard_of("4d89c87498354518b92fa02fc0ad8720", 4) == shard_of(
        "4d89c87498354518b92fa02fc0ad8720", 4
    )


async def test_sharded_cli_runs_survive_a_redis_restart(tmp_path: Path) -> None:
    """Two `bulk --redis --shard K/2` processes share one Redis that is killed and restarted
    mid-run: every update of the plan is applied exactly once in total, each process logs one
    warning, and a dry run reports its shard's count.
    """
    server = RedisServer()
    server.start()
    try:
        faults = Faults(rate_limit=150, burst=10, rate_limit_retry_after=1, latency=0.005)
        with FakeDatasetsServer(
            datasets=900, faults=faults, record_requests=False
        ).in_thread() as fake:
            plan = tmp_path / "plan.csv"
            plan.write_text("".join(f"{i},renamed-{n},\n" for n, i in enumerate(fake.dataset_ids)))
            procs = []
            for k in (1, 2):
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "nebius_datasets_async",
                        "bulk",
                        str(plan),
                        "--redis",
                        server.url,
                        "--shard",
                        f"{k}/2",
                        "--no-progress",
                        "--journal",
                        str(tmp_path / f"journal-{k}.jsonl"),
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                        env=env_for(fake),
                    )
                )
            await asyncio.sleep(1.5)
            server.stop()
            await asyncio.sleep(1.5)
            server.start()
            outputs = [await asyncio.wait_for(p.communicate(), 120) for p in procs]
            assert [p.returncode for p in procs] == [0, 0], outputs
            applied: Counter[str] = Counter()
            for k in (1, 2):
                for line in (tmp_path / f"journal-{k}.jsonl").read_text().splitlines():
                    entry = json.loads(line)
                    assert entry["status"] == "applied"
                    assert shard_of(entry["dataset_id"], 2) == k
                    applied[entry["dataset_id"]] += 1
            assert applied == Counter(fake.dataset_ids)
            assert all(
                fake.store[i]["name"] == f"renamed-{n}" for n, i in enumerate(fake.dataset_ids)
            )
            for _out, err in outputs:
                assert err.decode().count("Redis is unavailable") == 1, err.decode()
            dry = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nebius_datasets_async", "bulk", str(plan), "--dry-run",
                "--shard", "2/2", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env_for(fake),
            )  # fmt: skip
            dry_out, dry_err = await asyncio.wait_for(dry.communicate(), 60)
            expected = sum(1 for i in fake.dataset_ids if shard_of(i, 2) == 2)
            assert f"shard 2/2: {expected} update(s)" in dry_err.decode()
            assert len(dry_out.decode().splitlines()) == expected
    finally:
        server.close()


async def test_arq_workers_apply_every_job_at_the_shared_pace(
    redis_url: str, redis: object
) -> None:
    """The README's arq recipe: 1,000 jobs, two worker processes in burst mode, one Redis for
    the queue and the flow, the fake at 200 requests/s: every job succeeds, at most 5% of the
    requests beyond the first burst are answered 429, and every dataset ends as asked.
    """
    arq = pytest.importorskip("arq")
    from arq.connections import RedisSettings
    from arq.jobs import Job, JobStatus

    faults = Faults(rate_limit=200, burst=10, rate_limit_retry_after=1, latency=0.005)
    with FakeDatasetsServer(
        datasets=1000, faults=faults, record_requests=False
    ).in_thread() as fake:
        burst = FirstBurst(fake)
        pool = await arq.create_pool(RedisSettings.from_dsn(redis_url))
        try:
            jobs = [
                await pool.enqueue_job("update_dataset", i, name=f"arq-{n}", folder="/arq")
                for n, i in enumerate(fake.dataset_ids)
            ]
            env = env_for(fake, REDIS_URL=redis_url)
            workers = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "arq",
                    "examples.arq_worker.WorkerSettings",
                    "--burst",
                    cwd=ROOT,
                    env=env,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
                for _ in range(2)
            ]
            errs = [await asyncio.wait_for(w.communicate(), 120) for w in workers]
            assert [w.returncode for w in workers] == [0, 0], errs
            results = []
            for job in jobs:
                assert job is not None
                assert await Job(job.job_id, pool).status() is JobStatus.complete
                results.append(await job.result(timeout=5))
        finally:
            await pool.aclose()
        assert [r["name"] for r in results] == [f"arq-{n}" for n in range(1000)]
        assert all(fake.store[i]["folder"] == "/arq" for i in fake.dataset_ids)
        print("REFUSED-LATER", burst.refused_later(), fake.stats.statuses)
        assert burst.refused_later() <= 0.05, fake.stats
