"""The bounded-concurrency engine that applies many updates: one outcome per update, always.

A fixed pool of workers pulls updates lazily from the caller's (async) iterable, so memory stays
flat however many updates there are. Each request is admitted by an ``AdaptiveLimiter`` (pacing,
pauses, concurrency cap) and its retries are paid from a ``RetryBudget`` shared by the run.
Updates for one dataset id run one at a time, in input order.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import weakref
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
)
from typing import TYPE_CHECKING, Any, Self

import attrs

from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BulkError,
    DatasetsError,
    InvalidArgumentError,
    PermissionDeniedError,
    RunStoppedError,
)
from ._limiter import AdaptiveLimiter, RetryBudget
from ._models import Dataset, DatasetUpdate
from ._protocol import build_patch

if TYPE_CHECKING:
    from ._client import DatasetsClient

__all__ = [
    "BulkOptions",
    "BulkProgress",
    "BulkReport",
    "BulkRun",
    "OutcomeStatus",
    "PatchOutcome",
    "ProgressCallback",
]

logger = logging.getLogger("nebius_datasets_async")


class OutcomeStatus(enum.StrEnum):
    """How one update ended."""

    APPLIED = "applied"
    FAILED = "failed"
    SKIPPED = "skipped"


@attrs.frozen(kw_only=True)
class PatchOutcome:
    """The result of one update of a bulk run.

    ``status`` is ``APPLIED`` (``dataset`` holds the server's answer), ``FAILED`` (``error`` is
    the library exception that ended it, after retries) or ``SKIPPED`` (never sent, or not sent
    again, because the run stopped; ``error`` is a ``RunStoppedError`` naming the cause).
    ``attempts`` counts the requests sent for it.
    """

    update: DatasetUpdate
    status: OutcomeStatus
    dataset: Dataset | None = None
    error: DatasetsError | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """Whether the update was applied."""
        return self.status is OutcomeStatus.APPLIED


def _at_least(low: float) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
            raise InvalidArgumentError(f"{attribute.name} must be a number >= {low}: {value!r}")

    return check


def _between(low: float, high: float) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not (isinstance(value, int | float) and low < value < high):
            raise InvalidArgumentError(f"{attribute.name} must be between {low} and {high}")

    return check


def _optional(
    check: Callable[[object, attrs.Attribute[Any], Any], None],
) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def optional(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return optional


@attrs.frozen(kw_only=True)
class BulkOptions:
    """Knobs of a bulk run; every default is meant to be right for most users.

    - ``max_attempts``: requests per update for failures other than throttling (defaults to the
      client's ``RetryPolicy.max_attempts``). Retries also need the shared budget.
    - ``max_throttled``: how many times one update may be answered 429 before it fails with
      ``RateLimitError``. Throttling slows the run down; it fails an item only when it persists
      far beyond what pacing can fix.
    - ``adaptive``: pace and cut concurrency on 429s (and 503s with Retry-After); on by default.
    - ``decrease``: the factor applied to the concurrency cap on each counted throttle;
      ``probe``: how fast the paced rate creeps up between throttles, as a fraction of itself
      per second (see ``AdaptiveLimiter`` for how the rate itself is set).
    - ``retry_budget``: the shared retry quota's capacity in tokens (``None``: unlimited).
    - ``stop_on_auth_error``: a 401 or 403 stops the run; the rest is skipped.
    - ``progress_interval``: least seconds between two calls of the progress callback.
    """

    max_attempts: int | None = attrs.field(default=None, validator=_optional(_at_least(1)))
    max_throttled: int = attrs.field(default=20, validator=_at_least(0))
    adaptive: bool = True
    decrease: float = attrs.field(default=0.7, validator=_between(0.0, 1.0))
    probe: float = attrs.field(default=0.002, validator=_at_least(0))
    retry_budget: float | None = attrs.field(default=500.0, validator=_optional(_at_least(0)))
    stop_on_auth_error: bool = True
    progress_interval: float = attrs.field(default=0.2, validator=_at_least(0))


@attrs.frozen(kw_only=True)
class BulkProgress:
    """A snapshot of a run's counters, for a progress bar or a metrics exporter."""

    read: int
    succeeded: int
    failed: int
    skipped: int
    in_flight: int
    requests: int
    retries: int
    throttled: int
    elapsed: float
    rate_limit: float | None
    concurrency_limit: int
    paused: bool
    finished: bool

    @property
    def done(self) -> int:
        """Updates with an outcome."""
        return self.succeeded + self.failed + self.skipped

    @property
    def throughput(self) -> float:
        """Outcomes per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[BulkProgress], None]


@attrs.frozen(kw_only=True)
class BulkReport:
    """The totals of a finished run: ``failures`` holds every failed and skipped outcome,
    ``successes`` the applied ones when asked for (``patch_all(keep_successes=True)``).
    """

    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    failures: tuple[PatchOutcome, ...] = ()
    successes: tuple[PatchOutcome, ...] = ()
    elapsed: float = 0.0
    requests: int = 0
    retries: int = 0
    throttled: int = 0

    @property
    def total(self) -> int:
        """Updates in the run."""
        return self.succeeded + self.failed + self.skipped

    @property
    def ok(self) -> bool:
        """Whether every update was applied."""
        return self.failed == 0 and self.skipped == 0

    def summary(self) -> str:
        """One line: counts, requests, retries and time."""
        return (
            f"{self.succeeded} applied, {self.failed} failed, {self.skipped} skipped of "
            f"{self.total}; {self.requests} requests, {self.retries} retries, "
            f"{self.throttled} throttled, {self.elapsed:.2f}s"
        )

    def raise_for_failures(self) -> None:
        """Raise ``BulkError`` (holding this report) if any update failed or was skipped."""
        if not self.ok:
            raise BulkError(self)


_DONE: Any = object()


class BulkRun:
    """One bulk run: an async iterator of ``PatchOutcome`` in completion order.

    Iterate it once. Use ``async with client.patch_many(...) as run:`` (or break out of a
    plain ``async for``, which closes it a moment later) to stop early: work in flight is
    cancelled and no task, connection or session is left behind. ``stop()`` ends it gracefully
    instead: nothing new is sent, requests in flight finish, and every remaining update comes
    out ``SKIPPED``. ``progress()`` reads the counters at any time.
    """

    def __init__(
        self,
        client: DatasetsClient,
        updates: Iterable[DatasetUpdate] | AsyncIterable[DatasetUpdate],
        *,
        concurrency: int | None = None,
        options: BulkOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        opts = options if options is not None else BulkOptions()
        if concurrency is None:
            concurrency = client.max_concurrency
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be an int >= 1: {concurrency!r}")
        if isinstance(updates, AsyncIterable):
            self._aiter: AsyncIterator[DatasetUpdate] | None = aiter(updates)
            self._iter: Iterator[DatasetUpdate] | None = None
        elif isinstance(updates, Iterable):
            self._iter, self._aiter = iter(updates), None
        else:
            raise InvalidArgumentError(
                f"updates must be an iterable or async iterable, not {type(updates).__name__}"
            )
        self._client = client
        self._options = opts
        self._concurrency = min(concurrency, client.max_concurrency)
        self._max_attempts = opts.max_attempts or client.retry.max_attempts
        self._on_progress = progress
        self._rand = client._rand
        self._clock = time.monotonic
        self._limiter = AdaptiveLimiter(
            max_concurrency=self._concurrency,
            clock=self._clock,
            decrease=opts.decrease,
            probe=opts.probe,
        )
        self._budget = RetryBudget(opts.retry_budget) if opts.retry_budget is not None else None
        self._source_lock = asyncio.Lock()
        self._source_done = False
        self._source_error: BaseException | None = None
        self._stop_cause: RunStoppedError | None = None
        self._stopped = asyncio.Event()
        self._busy: dict[str, deque[asyncio.Future[None]]] = {}
        self._results: asyncio.Queue[Any] = asyncio.Queue(maxsize=self._concurrency * 2)
        self._workers: list[asyncio.Task[None]] = []
        self._supervisor: list[asyncio.Task[None]] = []
        self._stream: weakref.ref[AsyncGenerator[PatchOutcome, None]] | None = None
        self._iterated = False
        self._started = 0.0
        self._finished_at: float | None = None
        self._last_progress = 0.0
        self._in_flight = 0
        # counters
        self.read = 0
        self.succeeded = 0
        self.failed = 0
        self.skipped = 0
        self.requests = 0
        self.retries = 0
        self.throttled = 0

    # -- the iterator ------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[PatchOutcome]:
        if self._iterated:
            raise RuntimeError("a BulkRun can be iterated only once")
        self._iterated = True
        stream = self._run()
        # A weak reference: after a plain `break` the loop drops the generator, and asyncio's
        # async-generator finaliser then closes it (cancelling the workers) at once.
        self._stream = weakref.ref(stream)
        return stream

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop at once: cancel the work in flight and wait until nothing is left running."""
        self._iterated = True
        stream = self._stream() if self._stream is not None else None
        if stream is not None:
            await stream.aclose()
        await self._cancel_all()  # also when the finaliser closed the stream already

    async def _cancel_all(self) -> None:
        tasks = [*self._workers, *self._supervisor]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(
        self, reason: str = "stopped by the caller", *, cause: BaseException | None = None
    ) -> None:
        """Stop gracefully: send nothing new; let requests in flight end; skip the rest.

        Every update not yet sent comes out ``SKIPPED`` with a ``RunStoppedError`` that says
        ``reason`` (and holds ``cause``, if given).
        """
        if self._stop_cause is None:
            self._stop_cause = RunStoppedError(f"run stopped: {reason}", cause=cause)
            self._stopped.set()

    async def _run(self) -> AsyncGenerator[PatchOutcome, None]:
        self._started = self._clock()
        self._workers = [
            asyncio.create_task(self._worker(), name=f"nebius-bulk-worker-{i}")
            for i in range(self._concurrency)
        ]
        supervisor = asyncio.create_task(self._supervise(), name="nebius-bulk-supervisor")
        self._supervisor = [supervisor]
        try:
            while True:
                item = await self._results.get()
                if item is _DONE:
                    break
                yield item
            await supervisor
            self._finished_at = self._clock()
            self._report_progress(force=True)
            if self._source_error is not None:
                raise self._source_error
        finally:
            await self._cancel_all()

    async def _supervise(self) -> None:
        results = await asyncio.gather(*self._workers, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                # A programming error in a worker: surface it once everything has ended.
                self._source_error = self._source_error or result
        await self._results.put(_DONE)

    # -- workers -----------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop_cause is not None

    def _source_exhausted(self) -> bool:
        return self._source_done

    async def _next_update(self) -> DatasetUpdate | None:
        """The next update from the caller's input, or ``None`` once it is exhausted."""
        if self._source_done:
            return None
        update: object
        try:
            if self._iter is not None:
                update = next(self._iter)
            else:
                async with self._source_lock:
                    if self._source_exhausted():
                        return None
                    assert self._aiter is not None
                    update = await anext(self._aiter)
        except (StopIteration, StopAsyncIteration):
            self._source_done = True
            return None
        except Exception as exc:
            # The caller's iterable failed: finish what is in flight, then raise it.
            self._source_done = True
            self._source_error = exc
            self.stop(f"the input raised {type(exc).__name__}")
            return None
        if not isinstance(update, DatasetUpdate):
            self._source_done = True
            self._source_error = InvalidArgumentError(
                f"update number {self.read + 1} is a {type(update).__name__}, not a DatasetUpdate"
            )
            self.stop("an input item is not a DatasetUpdate")
            return None
        self.read += 1
        return update

    async def _worker(self) -> None:
        while (update := await self._next_update()) is not None:
            key = update.dataset_id
            waiters = self._busy.get(key)
            if waiters is None:
                self._busy[key] = deque()
            else:  # an earlier update of this id is running: queue behind it, in order
                turn = asyncio.get_running_loop().create_future()
                waiters.append(turn)
                await turn
            try:
                outcome = await self._apply(update)
            finally:
                self._hand_on(key)
            await self._emit(outcome)

    def _hand_on(self, key: str) -> None:
        """Pass the id to the next update of it that waits, or free it."""
        waiters = self._busy[key]
        while waiters:
            turn = waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        del self._busy[key]

    async def _emit(self, outcome: PatchOutcome) -> None:
        if outcome.status is OutcomeStatus.APPLIED:
            self.succeeded += 1
        elif outcome.status is OutcomeStatus.FAILED:
            self.failed += 1
        else:
            self.skipped += 1
        await self._results.put(outcome)
        if self._on_progress is not None:
            self._report_progress()

    async def _apply(self, update: DatasetUpdate) -> PatchOutcome:
        request = build_patch(update)
        limiter, budget, client = self._limiter, self._budget, self._client
        adaptive = self._options.adaptive
        attempts = failures = throttled = 0
        while True:
            if self._stop_cause is not None:
                return PatchOutcome(
                    update=update,
                    status=OutcomeStatus.SKIPPED,
                    error=self._stop_cause,
                    attempts=attempts,
                )
            epoch = await limiter.acquire()
            if self._stopping():
                limiter.release()
                continue
            attempts += 1
            self.requests += 1
            self._in_flight += 1
            try:
                dataset = await client._attempt(request)
            except (APIStatusError, APIConnectionError) as exc:
                error: DatasetsError = exc
            except DatasetsError as exc:  # ResponseValidationError: the server's answer is bad
                if budget is not None:
                    budget.on_success()  # the server is up; the body is the problem
                return PatchOutcome(
                    update=update, status=OutcomeStatus.FAILED, error=exc, attempts=attempts
                )
            else:
                if adaptive:
                    limiter.on_success(epoch)
                if budget is not None:
                    budget.on_success()
                return PatchOutcome(
                    update=update, status=OutcomeStatus.APPLIED, dataset=dataset, attempts=attempts
                )
            finally:
                self._in_flight -= 1
                limiter.release()

            if isinstance(error, APIStatusError) and error.status_code == 429:
                throttled += 1
            else:
                failures += 1
            delay = self._retry_delay(error, epoch, failures, throttled)
            if delay is None:
                return PatchOutcome(
                    update=update, status=OutcomeStatus.FAILED, error=error, attempts=attempts
                )
            self.retries += 1
            logger.info(
                "retrying %s %s in %.2fs after attempt %d: %s",
                request.method,
                request.path,
                delay,
                attempts,
                error,
            )
            if delay > 0:
                await self._sleep_unless_stopped(delay)

    def _retry_delay(
        self, error: DatasetsError, epoch: int, failures: int, throttled: int
    ) -> float | None:
        """Seconds to wait before trying again, or ``None`` to fail the update with ``error``.

        ``failures`` and ``throttled`` count this update's failed and 429-answered attempts,
        this one included.
        """
        policy = self._client.retry
        retry_after = error.retry_after if isinstance(error, APIStatusError) else None
        status = error.status_code if isinstance(error, APIStatusError) else None
        if isinstance(error, AuthenticationError | PermissionDeniedError):
            if self._options.stop_on_auth_error:
                self.stop(f"the server refused the API key ({status})", cause=error)
            return None
        if status == 429 or (status == 503 and retry_after is not None):
            # A 503 without Retry-After is an outage, not a request to slow down: the retry
            # budget deals with it.
            self.throttled += 1
            if self._options.adaptive:
                self._limiter.on_throttle(epoch, retry_after)
        if not policy.is_retryable(error):
            return None
        if status == 429:
            # Throttling slows the run down; it fails the item only when it goes on and on.
            if throttled > self._options.max_throttled:
                return None
            # The limiter spaces requests out; the item itself waits at least what the
            # server asked for.
            return retry_after if retry_after is not None else policy.backoff(throttled, self._rand)
        if failures >= self._max_attempts:
            return None
        if self._budget is not None and not self._budget.try_spend(
            timeout=isinstance(error, APITimeoutError)
        ):
            return None
        return policy.delay(failures, retry_after, self._rand)

    async def _sleep_unless_stopped(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), delay)

    # -- progress ----------------------------------------------------------------------------

    def progress(self) -> BulkProgress:
        """The counters right now."""
        end = self._finished_at if self._finished_at is not None else self._clock()
        limiter = self._limiter
        return BulkProgress(
            read=self.read,
            succeeded=self.succeeded,
            failed=self.failed,
            skipped=self.skipped,
            in_flight=self._in_flight,
            requests=self.requests,
            retries=self.retries,
            throttled=self.throttled,
            elapsed=(end - self._started) if self._started else 0.0,
            rate_limit=limiter.rate,
            concurrency_limit=int(limiter.concurrency_cap),
            paused=self._clock() < limiter.pause_until,
            finished=self._finished_at is not None,
        )

    def _report_progress(self, *, force: bool = False) -> None:
        callback = self._on_progress
        if callback is None:
            return
        now = self._clock()
        if force or now - self._last_progress >= self._options.progress_interval:
            self._last_progress = now
            callback(self.progress())

    def report(
        self,
        failures: Iterable[PatchOutcome] = (),
        successes: Iterable[PatchOutcome] = (),
    ) -> BulkReport:
        """A ``BulkReport`` of this run's counters, with the given outcome lists."""
        progress = self.progress()
        return BulkReport(
            succeeded=self.succeeded,
            failed=self.failed,
            skipped=self.skipped,
            failures=tuple(failures),
            successes=tuple(successes),
            elapsed=progress.elapsed,
            requests=self.requests,
            retries=self.retries,
            throttled=self.throttled,
        )
