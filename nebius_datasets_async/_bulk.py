"""The bounded-concurrency engine that applies many updates: one outcome per update, always.

A bulk run is built from small parts on the client's public call path (``apply`` with a
``CallContext``): ``_Source`` reads the caller's (async) iterable lazily, so memory stays flat
however many updates there are; ``_IdOrder`` runs the updates of one dataset id one at a time,
in input order; a fixed pool of workers turns each update into a ``PatchOutcome``, at most the
run's ``concurrency`` of them holding a place in the client's flow control or a request in
flight at once (a call that waits to retry gives its place to another worker meanwhile).
Pacing, pauses and the retry budget belong to the client's flow control, shared with every
other call of the client.
"""

from __future__ import annotations

import asyncio
import enum
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
from typing import Any, Protocol, Self

import attrs

from ._call import CallContext, CallStats, StopSignal
from ._events import BulkProgress, Events, RunFinished, RunInfo, RunProgress, RunStarted
from ._exceptions import (
    APIStatusError,
    AuthenticationError,
    BulkError,
    DatasetsError,
    InvalidArgumentError,
    PermissionDeniedError,
    RunStoppedError,
)
from ._flow import Flow
from ._models import Dataset, DatasetUpdate
from ._retry import RetryPolicy
from ._validate import at_least, integer, optional

__all__ = [
    "BulkOptions",
    "BulkProgress",
    "BulkReport",
    "BulkRun",
    "OutcomeStatus",
    "PatchOutcome",
    "ProgressCallback",
]


class Applier(Protocol):
    """What a bulk run needs from a client: ``DatasetsClient`` is one."""

    @property
    def retry(self) -> RetryPolicy: ...

    @property
    def flow(self) -> Flow: ...

    async def apply(
        self, update: DatasetUpdate, *, context: CallContext | None = None
    ) -> Dataset: ...


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


@attrs.frozen(kw_only=True)
class BulkOptions:
    """Knobs of a bulk run; every default is meant to be right for most users. Pacing, the
    concurrency bound and the retry budget are the client's (its ``FlowControl``), shared with
    every other call.

    - ``max_attempts``: requests per update for failures other than throttling (defaults to the
      client's ``RetryPolicy.max_attempts``). Retries also need the flow's retry budget.
    - ``max_throttled``: how many times one update may be answered 429 before it fails with
      ``RateLimitError`` (defaults to the client's ``RetryPolicy.max_throttled``).
    - ``stop_on_auth_error``: a 401 (the key is refused) stops the run, as do 403s for several
      different datasets in a row with no success between them (the key may touch none); the
      rest is skipped. A single 403 fails only its own update.
    - ``progress_interval``: least seconds between two calls of the progress callback.
    """

    max_attempts: int | None = attrs.field(default=None, validator=optional(integer(1)))
    max_throttled: int | None = attrs.field(default=None, validator=optional(integer(0)))
    stop_on_auth_error: bool = True
    progress_interval: float = attrs.field(default=0.2, validator=at_least(0))


ProgressCallback = Callable[[BulkProgress], None]


class ProgressReporter:
    """A bulk run's ``progress`` callback as a subscriber of the run's events: called with
    each ``RunProgress`` snapshot and with the final one (``RunFinished``).
    """

    interests = (RunProgress, RunFinished)

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback

    def __repr__(self) -> str:
        return f"<ProgressReporter {self.callback!r}>"

    def __call__(self, event: RunProgress | RunFinished) -> None:
        self.callback(event.progress)


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
    #: The client's paced rate when the run ended (requests per second), if any.
    final_rate: float | None = None

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
#: 403s for this many different datasets in a row, with no success between: the key is refused.
FORBIDDEN_STREAK = 5
#: Workers per place of a run's concurrency, at most: a call waiting to retry (a Retry-After,
#: a backoff) gives its place back, and a spare worker's update takes it meanwhile.
WORKERS_PER_PLACE = 4


class _Source:
    """The caller's updates, read lazily by many workers; a bad item or a failing iterable
    ends the reading and is kept in ``error``.
    """

    def __init__(self, updates: Iterable[DatasetUpdate] | AsyncIterable[DatasetUpdate]) -> None:
        self._iter: Iterator[DatasetUpdate] | None = None
        self._aiter: AsyncIterator[DatasetUpdate] | None = None
        if isinstance(updates, AsyncIterable):
            self._aiter = aiter(updates)
        elif isinstance(updates, Iterable):
            self._iter = iter(updates)
        else:
            raise InvalidArgumentError(
                f"updates must be an iterable or async iterable, not {type(updates).__name__}"
            )
        self._lock = asyncio.Lock()
        self.done = False
        self.error: BaseException | None = None
        self.read = 0

    def _finished(self) -> bool:
        return self.done

    async def next(self) -> DatasetUpdate | None:
        """The next update, or ``None`` once the input is exhausted (or failed)."""
        if self.done:
            return None
        item: object
        try:
            if self._iter is not None:
                item = next(self._iter)
            else:
                async with self._lock:
                    if self._finished():  # another worker hit the end while this one waited
                        return None
                    assert self._aiter is not None
                    item = await anext(self._aiter)
        except (StopIteration, StopAsyncIteration):
            self.done = True
            return None
        except Exception as exc:
            self.done, self.error = True, exc
            return None
        if not isinstance(item, DatasetUpdate):
            self.done = True
            self.error = InvalidArgumentError(
                f"update number {self.read + 1} is a {type(item).__name__}, not a DatasetUpdate"
            )
            return None
        self.read += 1
        return item


class _IdOrder:
    """Lets the updates of one dataset id run one at a time, in the order they were read."""

    def __init__(self) -> None:
        self._busy: dict[str, deque[asyncio.Future[None]]] = {}

    async def acquire(self, key: str) -> None:
        waiters = self._busy.get(key)
        if waiters is None:
            self._busy[key] = deque()
            return
        turn = asyncio.get_running_loop().create_future()
        waiters.append(turn)
        await turn

    def release(self, key: str) -> None:
        """Pass the id to the next update of it that waits, or free it."""
        waiters = self._busy[key]
        while waiters:
            turn = waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        del self._busy[key]


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
        client: Applier,
        updates: Iterable[DatasetUpdate] | AsyncIterable[DatasetUpdate],
        *,
        concurrency: int | None = None,
        options: BulkOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        opts = options if options is not None else BulkOptions()
        flow = client.flow
        if concurrency is None:
            concurrency = flow.max_concurrency
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be an int >= 1: {concurrency!r}")
        self._source = _Source(updates)
        self._client = client
        self._flow = flow
        self._options = opts
        policy = client.retry
        self._policy = attrs.evolve(
            policy,
            max_attempts=opts.max_attempts or policy.max_attempts,
            max_throttled=(
                policy.max_throttled if opts.max_throttled is None else opts.max_throttled
            ),
        )
        self._concurrency = min(concurrency, flow.max_concurrency)
        # The run's subscribers: its progress callback, then the client's.
        self._events = Events([] if progress is None else [ProgressReporter(progress)])
        client_events = getattr(client, "events", None)  # DatasetsClient's event stream
        if isinstance(client_events, Events) and client_events.active:
            self._events.subscribe(client_events.emit)
        self._info: RunInfo | None = None
        self._clock = time.monotonic
        self._order = _IdOrder()
        self._signal = StopSignal()
        self._stats = CallStats()
        self._forbidden: set[str] = set()
        self._results: asyncio.Queue[Any] = asyncio.Queue(maxsize=self._concurrency * 2)
        self._workers: list[asyncio.Task[None]] = []
        self._share: asyncio.Semaphore | None = None  # the run's places (made in its loop)
        self._live = 0  # workers running
        self._supervisor: list[asyncio.Task[None]] = []
        self._stream: weakref.ref[AsyncGenerator[PatchOutcome, None]] | None = None
        self._iterated = False
        self._sink: Callable[[PatchOutcome], None] | None = None  # collect(): no stream
        self._worker_error: BaseException | None = None
        self._started = 0.0
        self._finished_at: float | None = None
        self._last_progress = 0.0
        self.succeeded = 0
        self.failed = 0
        self.skipped = 0

    # -- counters ----------------------------------------------------------------------------

    @property
    def read(self) -> int:
        """Updates read from the input so far."""
        return self._source.read

    @property
    def requests(self) -> int:
        """Requests sent so far."""
        return self._stats.requests

    @property
    def retries(self) -> int:
        """Retries so far."""
        return self._stats.retries

    @property
    def throttled(self) -> int:
        """Answers that asked to slow down so far: 429s, and 503s from a busy server."""
        return self._stats.throttled

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
        self._signal.stop(RunStoppedError(f"run stopped: {reason}", cause=cause))

    async def collect(self, *, keep_successes: bool = False) -> BulkReport:
        """Run to the end without streaming the outcomes and return the ``BulkReport`` (every
        failed and skipped outcome; the applied ones too with ``keep_successes``). What
        ``patch_all`` does; use it instead of iterating, not as well.
        """
        if self._iterated:
            raise RuntimeError("a BulkRun can be iterated only once")
        self._iterated = True
        failures: list[PatchOutcome] = []
        successes: list[PatchOutcome] = []

        def sink(outcome: PatchOutcome) -> None:
            if outcome.status is not OutcomeStatus.APPLIED:
                failures.append(outcome)
            elif keep_successes:
                successes.append(outcome)

        self._sink = sink
        self._start()
        ended = False
        try:
            await self._supervise()
            ended = True
            self._end()
        finally:
            await self._cancel_all()
            if not ended:
                self._finished_at = self._clock()
                self._finish(RunStoppedError("the run was closed before its end"))
        return self.report(failures, successes)

    def _start(self) -> None:
        """Start the workers (and tell the subscribers)."""
        self._started = self._clock()
        self._info = RunInfo(concurrency=self._concurrency, started=self._started)
        if self._events.active:  # event: RunStarted
            self._events.emit(RunStarted(self._info))
        self._share = asyncio.Semaphore(self._concurrency)
        for _ in range(self._concurrency):
            self._add_worker()

    def _add_worker(self) -> None:
        self._live += 1
        name = f"nebius-bulk-worker-{len(self._workers)}"
        self._workers.append(asyncio.create_task(self._worker(), name=name))

    def _spare(self) -> None:
        """A call gave its place back to wait before retrying: let another worker use it
        (at most ``WORKERS_PER_PLACE`` workers per place, and only while there is input).
        """
        if (
            self._live < self._concurrency * WORKERS_PER_PLACE
            and not self._source.done
            and self._signal.reason is None
        ):
            self._add_worker()

    def _end(self) -> None:
        """Every worker ended: finish the run; raise what ended the input or a worker."""
        self._finished_at = self._clock()
        error = self._source.error or self._worker_error
        self._finish(error)
        if error is not None:
            raise error

    async def _run(self) -> AsyncGenerator[PatchOutcome, None]:
        self._start()
        ended = False
        supervisor = asyncio.create_task(self._supervise(), name="nebius-bulk-supervisor")
        self._supervisor = [supervisor]
        try:
            while True:
                item = await self._results.get()
                if item is _DONE:
                    break
                yield item
            await supervisor
            ended = True
            self._end()
        finally:
            await self._cancel_all()
            if not ended:  # closed or cancelled before the end
                self._finished_at = self._clock()
                self._finish(RunStoppedError("the run was closed before its end"))

    def _finish(self, error: BaseException | None) -> None:
        if self._events.active and self._info is not None:  # event: RunFinished
            self._events.emit(RunFinished(self._info, self.progress(), error))

    async def _supervise(self) -> None:
        waited = 0
        while waited < len(self._workers):  # workers added meanwhile are waited for too
            batch = self._workers[waited:]
            waited = len(self._workers)
            for result in await asyncio.gather(*batch, return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    # A programming error in a worker: surface it once everything has ended.
                    self._worker_error = self._worker_error or result
        if self._sink is None:
            await self._results.put(_DONE)

    # -- workers -----------------------------------------------------------------------------

    async def _worker(self) -> None:
        try:
            await self._work()
        finally:
            self._live -= 1

    async def _work(self) -> None:
        source, order = self._source, self._order
        while (update := await source.next()) is not None:
            key = update.dataset_id
            await order.acquire(key)  # an earlier update of this id runs: after it
            context = self._context()
            try:
                # the call takes one of the run's places for each attempt (and gives it back
                # while it waits to retry)
                outcome = await self._apply(update, context)
            finally:
                order.release(key)
            await self._emit(outcome)
        if source.error is not None:
            # The input failed: finish what is in flight, skip the rest, then raise it.
            self.stop(f"the input raised {type(source.error).__name__}", cause=source.error)

    async def _emit(self, outcome: PatchOutcome) -> None:
        if outcome.status is OutcomeStatus.APPLIED:
            self.succeeded += 1
        elif outcome.status is OutcomeStatus.FAILED:
            self.failed += 1
        else:
            self.skipped += 1
        sink = self._sink
        if sink is not None:
            sink(outcome)
        else:
            await self._results.put(outcome)
        if self._events.active:
            self._report_progress()

    def _context(self) -> CallContext:
        return CallContext(
            policy=self._policy,
            stats=self._stats,
            stop=self._signal,
            run=self._info,
            share=self._share,
            waiting=self._spare,
        )

    async def _apply(self, update: DatasetUpdate, context: CallContext) -> PatchOutcome:
        try:
            dataset = await self._client.apply(update, context=context)
        except RunStoppedError as exc:
            return PatchOutcome(
                update=update, status=OutcomeStatus.SKIPPED, error=exc, attempts=context.attempts
            )
        except DatasetsError as exc:
            self._check_refusal(update, exc)
            return PatchOutcome(
                update=update, status=OutcomeStatus.FAILED, error=exc, attempts=context.attempts
            )
        if self._forbidden:
            self._forbidden.clear()
        return PatchOutcome(
            update=update,
            status=OutcomeStatus.APPLIED,
            dataset=dataset,
            attempts=context.attempts,
        )

    def _check_refusal(self, update: DatasetUpdate, error: DatasetsError) -> None:
        """Stop the run when the key itself is refused: a 401, or 403s for several different
        datasets in a row with no success between them.
        """
        if not self._options.stop_on_auth_error or not isinstance(error, APIStatusError):
            return
        if isinstance(error, AuthenticationError):
            self.stop("the server refused the API key (401)", cause=error)
        elif isinstance(error, PermissionDeniedError):
            self._forbidden.add(update.dataset_id)
            if len(self._forbidden) >= FORBIDDEN_STREAK:
                self.stop(
                    f"the server refused {FORBIDDEN_STREAK} different datasets in a row (403): "
                    "the key may not change datasets",
                    cause=error,
                )

    # -- progress ----------------------------------------------------------------------------

    def progress(self) -> BulkProgress:
        """The counters right now."""
        end = self._finished_at if self._finished_at is not None else self._clock()
        flow = self._flow.state()
        stats = self._stats
        return BulkProgress(
            read=self._source.read,
            succeeded=self.succeeded,
            failed=self.failed,
            skipped=self.skipped,
            in_flight=stats.in_flight,
            requests=stats.requests,
            retries=stats.retries,
            throttled=stats.throttled,
            elapsed=(end - self._started) if self._started else 0.0,
            rate_limit=flow.rate,
            concurrency_limit=flow.concurrency,
            paused=flow.paused_for > 0,
            finished=self._finished_at is not None,
        )

    def _report_progress(self) -> None:
        now = self._clock()
        if now - self._last_progress >= self._options.progress_interval and self._info:
            self._last_progress = now
            self._events.emit(RunProgress(self._info, self.progress()))  # event: RunProgress

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
            requests=progress.requests,
            retries=progress.retries,
            throttled=progress.throttled,
            final_rate=progress.rate_limit,
        )
