"""RetryPolicy maths, and retries of single calls against the fake server over a socket."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from nebius_datasets_async import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    UnprocessableEntityError,
)
from nebius_datasets_async.testing import FakeDatasetsServer

from .conftest import SleepRecorder, client_tasks_left, wait_until


def test_backoff_is_full_jitter_capped_exponential() -> None:
    """Delay n is rand * min(max_delay, initial * 2**(n-1)): exact with injected randomness."""
    policy = RetryPolicy(initial_delay=0.5, max_delay=3.0)
    assert [policy.delay(n, None, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 3, 3]
    assert policy.delay(3, None, lambda: 0.25) == 0.5
    assert policy.delay(1, None, lambda: 0.0) == 0.0
    assert policy.delay(10_000, None, lambda: 1.0) == 3.0


def test_retry_after_is_a_floor() -> None:
    """A server-given wait is never shortened by the jitter."""
    policy = RetryPolicy(initial_delay=0.5, max_delay=20)
    assert policy.delay(1, 4.0, lambda: 1.0) == 4.0
    assert policy.delay(6, 4.0, lambda: 1.0) == 16.0


def test_never_retried_statuses_cannot_be_configured_in() -> None:
    """400/401/403/404/409/422 are never retried, whatever retry_statuses says."""
    policy = RetryPolicy(retry_statuses={404, 503})
    assert policy.retry_statuses == frozenset({503})


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"initial_delay": -1}, {"max_delay": float("inf")}, {"deadline": -2}],
)
def test_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    """Bad policy values fail at construction."""
    with pytest.raises(ValueError):  # noqa: PT011 - the attribute name is in the message
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
async def test_retryable_status_is_retried_then_succeeds(
    fake: FakeDatasetsServer, status: int
) -> None:
    """A retryable status is retried with the policy's delay and the call then succeeds. A
    429 without Retry-After is retried without a delay of its own: the gate paces it.
    """
    sleep = SleepRecorder()
    async with fake.client(_sleep=sleep, _rand=lambda: 1.0) as client:
        fake.fail_next(2, status=status)
        ds = await client.rename(fake.dataset_ids[0], "after-retries")
    assert ds.name == "after-retries"
    assert sleep.delays == ([0.0, 0.0] if status == 429 else [0.5, 1.0])
    assert len(fake.requests) == 3
    assert fake.store[fake.dataset_ids[0]]["name"] == "after-retries"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
    ],
)
async def test_client_errors_are_never_retried(
    fake: FakeDatasetsServer, status: int, cls: type[Exception]
) -> None:
    """A 4xx other than 408/429 raises at once after exactly one request."""
    sleep = SleepRecorder()
    async with fake.client(_sleep=sleep) as client:
        fake.fail_next(1, status=status)
        with pytest.raises(cls):
            await client.move(fake.dataset_ids[0], "/x")
    assert len(fake.requests) == 1
    assert sleep.delays == []


async def test_gives_up_after_max_attempts(fake: FakeDatasetsServer) -> None:
    """After max_attempts failures the last error is raised."""
    sleep = SleepRecorder()
    async with fake.client(_sleep=sleep, retry=RetryPolicy(max_attempts=3)) as client:
        fake.fail_next(5, status=503, detail="overloaded")
        with pytest.raises(InternalServerError, match="overloaded") as info:
            await client.get_dataset(fake.dataset_ids[0])
    assert info.value.status_code == 503
    assert len(fake.requests) == 3
    assert len(sleep.delays) == 2


async def test_a_busy_servers_503_is_retried_through_the_gate_without_a_backoff(
    fake: FakeDatasetsServer,
) -> None:
    """A 503 without Retry-After from a server that answered lately is a busy server (or a
    gateway refusing at random): the gate's concurrency cap paces its retry, with no backoff
    of its own (a jittered backoff per refusal made 10% random 503s cost 2.8x the run).
    A 503 from a server with no recent success is an outage: backed off and paid for.
    """
    sleep = SleepRecorder()
    async with fake.client(_sleep=sleep, _rand=lambda: 1.0) as client:
        await client.get_dataset(fake.dataset_ids[0])
        fake.fail_next(2, status=503)
        await client.rename(fake.dataset_ids[0], "busy")
    assert sleep.delays == [0.0, 0.0]
    assert len(fake.requests) == 4
    assert fake.store[fake.dataset_ids[0]]["name"] == "busy"


async def test_a_short_retry_after_is_waited_by_its_request(fake: FakeDatasetsServer) -> None:
    """A short Retry-After (a second at most, a token bucket's) delays the throttled request's
    own retry by exactly that much.
    """
    sleep = SleepRecorder()
    async with fake.client(_sleep=sleep, _rand=lambda: 0.0) as client:
        fake.fail_next(1, status=429, retry_after=0.75)
        await client.get_dataset(fake.dataset_ids[0])
    assert sleep.delays == [0.75]


async def test_a_long_retry_after_holds_every_request(fake: FakeDatasetsServer) -> None:
    """A long Retry-After (the rest of a window) is a wait for everyone: the gate holds every
    request, the throttled one included, until it ends; nothing is sent meanwhile.
    """
    async with fake.client() as client:
        fake.fail_next(1, status=429, retry_after=1.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = asyncio.ensure_future(client.get_dataset(fake.dataset_ids[0]))
        await asyncio.sleep(0.2)
        assert client.flow.state().paused_for > 1.0
        second = await client.get_dataset(fake.dataset_ids[1])
        await first
    assert loop.time() - started >= 1.5
    assert second.id == fake.dataset_ids[1]
    # the throttled request, then both after the hold
    times = [r.received_at for r in fake.requests]
    assert len(times) == 3
    assert min(times[1:]) - times[0] >= 1.5 - 0.05


async def test_retry_after_longer_than_allowed_raises_at_once(fake: FakeDatasetsServer) -> None:
    """A wait beyond max_retry_after is not slept through: RateLimitError with retry_after."""
    sleep = SleepRecorder()
    policy = RetryPolicy(max_retry_after=10)
    async with fake.client(_sleep=sleep, retry=policy) as client:
        fake.fail_next(1, status=429, retry_after=3600)
        with pytest.raises(RateLimitError) as info:
            await client.get_dataset(fake.dataset_ids[0])
    assert info.value.retry_after == 3600
    assert sleep.delays == []
    assert len(fake.requests) == 1


async def test_real_sleep_honours_retry_after(fake: FakeDatasetsServer) -> None:
    """With the real sleep, the retry reaches the server no sooner than Retry-After."""
    async with fake.client(_rand=lambda: 0.0) as client:
        fake.fail_next(1, status=429, retry_after=0.2)
        await client.get_dataset(fake.dataset_ids[0])
    first, second = fake.requests
    assert second.received_at - first.received_at >= 0.2


async def test_deadline_bounds_the_whole_call(fake: FakeDatasetsServer) -> None:
    """With a deadline, a retry that would end after it is not started."""
    sleep = SleepRecorder()
    policy = RetryPolicy(max_attempts=10, initial_delay=1.0, deadline=2.5)
    async with fake.client(_sleep=sleep, _rand=lambda: 1.0, retry=policy) as client:
        fake.fail_next(10, status=500)
        with pytest.raises(InternalServerError):
            await client.get_dataset(fake.dataset_ids[0])
    # delays 1 (total 1) then 2 (total 3 > 2.5): only the first is slept
    assert sleep.delays == [1.0]


async def test_deadline_also_limits_the_attempt(fake: FakeDatasetsServer) -> None:
    """The last attempt's timeout is cut to what is left of the deadline."""
    fake.faults = fake.faults.__class__(rate_slow=1.0, slow_delay=5.0)
    policy = RetryPolicy(max_attempts=1, deadline=0.3)
    async with fake.client(retry=policy, timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(APIConnectionError):
            await client.get_dataset(fake.dataset_ids[0])
    assert time.monotonic() - started < 2.0


async def test_cancellation_during_backoff_is_immediate(fake: FakeDatasetsServer) -> None:
    """Cancelling a call that sleeps between attempts ends it at once, leaving no task."""
    async with fake.client(retry=RetryPolicy(initial_delay=30, max_delay=30)) as client:
        fake.fail_next(1, status=503)
        task = asyncio.create_task(client.get_dataset(fake.dataset_ids[0]))
        await wait_until(lambda: len(fake.requests) == 1)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1.0
    assert await client_tasks_left() == set()


async def test_retries_are_logged_without_the_key(
    fake: FakeDatasetsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each retry is logged with attempt, delay and status; the key appears in no record."""
    caplog.set_level(logging.DEBUG, logger="nebius_datasets_async")
    async with fake.client(_sleep=SleepRecorder(), _rand=lambda: 1.0) as client:
        fake.fail_next(1, status=502)
        await client.get_dataset(fake.dataset_ids[0])
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1
    message = retries[0].getMessage()
    assert "attempt 1" in message
    assert "0.50s" in message
    assert "502" in message
    assert all(fake.api_key not in r.getMessage() for r in caplog.records)
