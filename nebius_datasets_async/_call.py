"""The one retry loop: gate -> transport -> protocol -> decide -> wait, for every request.

Single calls and bulk runs both go through ``Caller.call``; the only difference is the
``CallContext`` a bulk run passes (its policy, shared counters and stop signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import attrs

from ._events import (
    Admitted,
    Answered,
    CallEnded,
    CallInfo,
    CallStarted,
    Events,
    Failed,
    Retrying,
    RunInfo,
    Sent,
    Throttled,
)
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    DatasetsError,
    RunStoppedError,
)
from ._flow import Failure, Flow, Ticket
from ._law import LONG_WAIT
from ._models import Dataset
from ._protocol import (
    RateLimits,
    Request,
    Response,
    decode_dataset,
    error_from_response,
    parse_rate_limits,
    request_id,
)
from ._retry import RetryPolicy
from ._transport import Transport

__all__ = ["CallContext", "CallStats", "Caller", "StopSignal"]

Sleep = Callable[[float], Awaitable[None]]


@attrs.define(slots=True)
class CallStats:
    """Counters the retry loop keeps up to date, live, for every call it is handed to:
    requests sent, retries, answers that were throttles, requests in flight.
    """

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    in_flight: int = 0


class StopSignal:
    """Tells calls that watch it to stop: no new attempt starts and waits between attempts end
    at once; the call raises ``RunStoppedError``. Bound to the event loop it is first used in.
    """

    def __init__(self) -> None:
        #: The error stopped calls raise, once ``stop()`` was called.
        self.reason: RunStoppedError | None = None
        self._event: asyncio.Event | None = None

    def stop(self, reason: RunStoppedError) -> None:
        """Stop (the first reason given wins)."""
        if self.reason is None:
            self.reason = reason
            if self._event is not None:
                self._event.set()

    async def sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if stopped meanwhile."""
        if self.reason is not None:
            return
        if self._event is None:
            self._event = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), delay)


@attrs.define(slots=True, kw_only=True)
class CallContext:
    """How one call runs, for engines built on the client (the bulk run is one):

    - ``policy``: a ``RetryPolicy`` instead of the client's;
    - ``stats``: counters shared by many calls, updated live;
    - ``stop``: a ``StopSignal`` that ends the call between attempts;
    - ``run``: the bulk run the call belongs to, named in its events;
    - ``share``: a semaphore bounding how many of the engine's calls hold a place in the
      gate or a request in flight at once (taken for each attempt, given back while the call
      waits to retry); ``waiting``: called when the call is about to wait before retrying,
      its place given back.

    After the call, ``attempts`` and ``throttled`` hold what this call did.
    """

    policy: RetryPolicy | None = None
    stats: CallStats | None = None
    stop: StopSignal | None = None
    run: RunInfo | None = None
    share: asyncio.Semaphore | None = None
    waiting: Callable[[], None] | None = None
    attempts: int = 0
    throttled: int = 0


class _Watch:
    """What the events of one observed call need beyond the call's own state."""

    __slots__ = ("info", "status", "waited")

    def __init__(self, info: CallInfo) -> None:
        self.info = info
        self.waited = 0.0
        self.status: int | None = None


class Caller:
    """Runs requests with retries through a flow control and a transport, and tells
    ``events`` what happens (see ``_events``); with no subscriber that costs a few attribute
    checks per call.
    """

    def __init__(
        self,
        *,
        transport: Transport,
        flow: Flow,
        policy: RetryPolicy,
        timeout: float,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        events: Events | None = None,
    ) -> None:
        self.events = events if events is not None else Events()
        self.transport = transport
        self.flow = flow
        self.policy = policy
        self.timeout = timeout
        self._sleep = sleep
        self._rand = rand

    def call(self, request: Request, context: CallContext | None = None) -> Awaitable[Dataset]:
        """Send ``request`` until it succeeds or the policy gives up; return the Dataset.

        Raises the last attempt's error (an ``APIStatusError``, ``APIConnectionError`` or
        ``ResponseValidationError``), ``APITimeoutError`` when the deadline passes before the
        first attempt could be sent, or the stop signal's ``RunStoppedError``.
        """
        if self.events.calls:
            return self._observed(request, context)
        return self._call(request, context, None)

    async def _observed(self, request: Request, context: CallContext | None) -> Dataset:
        """``_call`` between ``CallStarted`` and ``CallEnded``."""
        events = self.events
        ctx = context if context is not None else CallContext()
        clock = asyncio.get_running_loop().time
        started = clock()
        watch = _Watch(
            CallInfo(method=request.method, path=request.path, started=started, run=ctx.run)
        )
        events.emit(CallStarted(watch.info))
        error: BaseException | None = None
        try:
            return await self._call(request, ctx, watch)
        except BaseException as exc:
            error = exc
            raise
        finally:
            events.emit(
                CallEnded(
                    watch.info,
                    ctx.attempts,
                    clock() - started,
                    watch.waited,
                    watch.status,
                    error,
                    isinstance(error, asyncio.CancelledError),
                )
            )

    def _info(self, request: Request, ctx: CallContext, watch: _Watch | None) -> CallInfo:
        """The call's info for an event, made now when no per-call subscriber made it."""
        if watch is not None:
            return watch.info
        return CallInfo(
            method=request.method,
            path=request.path,
            started=asyncio.get_running_loop().time(),
            run=ctx.run,
        )

    async def _call(
        self, request: Request, context: CallContext | None, watch: _Watch | None
    ) -> Dataset:
        events = self.events
        ctx = context if context is not None else CallContext()
        policy = ctx.policy or self.policy
        stats, stop, flow, share = ctx.stats, ctx.stop, self.flow, ctx.share
        # A sleep injected for tests returns at once; `skipped` adds the time it should have
        # taken, so that deadlines count it all the same.
        skipped = 0.0
        clock = asyncio.get_running_loop().time  # time.monotonic, or a simulation's clock
        deadline = None if policy.deadline is None else clock() + policy.deadline
        failures = 0
        error: DatasetsError | None = None
        while True:
            if stop is not None and stop.reason is not None:
                raise stop.reason
            # An engine's share of places (a bulk run's concurrency): held from admission
            # to the answer, not while the call waits to retry, so a call sleeping through a
            # Retry-After or a backoff does not hold up the engine's other calls.
            if share is not None:
                try:
                    await self._take_share(share, None if deadline is None else deadline - skipped)
                except APITimeoutError:
                    if error is not None:
                        raise error from None  # the last attempt's error says more
                    raise
            try:
                try:
                    ticket = await flow.admit(
                        None if deadline is None else deadline - skipped,
                        max_wait=policy.max_retry_after,
                    )
                except APITimeoutError:
                    if error is not None:
                        raise error from None  # the last attempt's error says more
                    raise
                if stop is not None and stop.reason is not None:
                    flow.cancel(ticket)
                    raise stop.reason
                ctx.attempts += 1
                attempt = ctx.attempts
                outgoing = request
                if watch is not None:  # events: Admitted, Sent
                    watch.waited += ticket.waited_place + ticket.waited_slot
                    events.emit(
                        Admitted(watch.info, attempt, ticket.waited_place, ticket.waited_slot)
                    )
                    extra: dict[str, str] = {}
                    events.emit(Sent(watch.info, attempt, extra))
                    if extra:
                        outgoing = attrs.evolve(request, headers=extra)
                timeout = self.timeout
                if deadline is not None:
                    timeout = min(timeout, max(deadline - skipped - clock(), 0.001))
                if stats is not None:
                    stats.requests += 1
                    stats.in_flight += 1
                # The attempt's latency, on the loop's clock (a flow's own clock, such as the
                # fleet's monotonic one, may run apart from the loop's: uvloop's is cached).
                sent_at = clock()
                try:
                    response = await self.transport.send(outgoing, timeout)
                except APIConnectionError as exc:
                    error = exc
                    lost = Failure.TIMEOUT if isinstance(exc, APITimeoutError) else Failure.ERROR
                    flow.on_failure(ticket, lost)
                    failure: Failure | None = lost
                    if events.active:  # event: Failed (no answer)
                        events.emit(
                            Failed(
                                self._info(request, ctx, watch),
                                attempt,
                                lost.value,
                                None,
                                clock() - sent_at,
                                exc,
                            )
                        )
                except BaseException:
                    flow.cancel(ticket)
                    raise
                else:
                    limits = parse_rate_limits(response.headers)
                    if watch is not None:  # event: Answered
                        watch.status = response.status
                        events.emit(
                            Answered(
                                watch.info,
                                attempt,
                                response.status,
                                clock() - sent_at,
                                request_id(response.headers),
                            )
                        )
                    if 200 <= response.status < 300:
                        flow.on_answer(ticket, limits)
                        return decode_dataset(request, response)
                    error, failure = self._settle_error(ticket, request, response, limits)
                    if events.active:  # events: Throttled, Failed (an error answer)
                        info = self._info(request, ctx, watch)
                        if failure is None:
                            events.emit(
                                Throttled(info, attempt, response.status, error.retry_after)
                            )
                        else:
                            events.emit(
                                Failed(
                                    info,
                                    attempt,
                                    failure.value,
                                    response.status,
                                    clock() - sent_at,
                                    error,
                                )
                            )
                finally:
                    if stats is not None:
                        stats.in_flight -= 1
            finally:
                if share is not None:
                    share.release()

            if not policy.is_retryable(error):
                raise error
            retry_after = error.retry_after if isinstance(error, APIStatusError) else None
            if failure is Failure.OVERLOAD and flow.busy():
                failure = None  # a busy server, not a dead one: paced like a throttle
            if failure is None:  # a throttle: paced by the gate, waited out by this request
                ctx.throttled += 1
                if stats is not None:
                    stats.throttled += 1
                if ctx.throttled > policy.max_throttled:
                    raise error
                # The gate paces every request (a busy server's 503 cuts how many go at once)
                # and holds everyone through a long Retry-After; a short one concerns this
                # request only.
                short = retry_after is not None and retry_after <= LONG_WAIT
                delay = retry_after if retry_after is not None and short else 0.0
            else:
                failures += 1
                if failures >= policy.max_attempts or not flow.retry_allowed(failure):
                    raise error
                delay = policy.delay(failures, retry_after, self._rand)
            if deadline is not None and clock() + skipped + delay >= deadline:
                raise error
            if stats is not None:
                stats.retries += 1
            if events.active:  # event: Retrying (the log line is a subscriber)
                events.emit(Retrying(self._info(request, ctx, watch), attempt, delay, error))
            if ctx.waiting is not None:
                ctx.waiting()
            started = clock()
            if stop is not None and self._sleep is asyncio.sleep:
                await stop.sleep(delay)
            else:
                await self._sleep(delay)
            skipped += max(0.0, delay - (clock() - started))

    @staticmethod
    async def _take_share(share: asyncio.Semaphore, deadline: float | None) -> None:
        """Wait for a place in the engine's share, at most until ``deadline`` (loop time)."""
        if deadline is None:
            await share.acquire()
            return
        try:
            async with asyncio.timeout_at(deadline):
                await share.acquire()
        except TimeoutError:
            raise APITimeoutError("the deadline passed while waiting to send") from None

    def _settle_error(
        self, ticket: Ticket, request: Request, response: Response, limits: RateLimits
    ) -> tuple[APIStatusError, Failure | None]:
        """Report an error answer to the flow; return its exception and how it failed
        (``None``: a throttle). Raises at once for an error that is the request's own (4xx).
        """
        flow = self.flow
        status = response.status
        error = error_from_response(request, response)
        if status == 429 or (status == 503 and error.retry_after is not None):
            flow.on_throttle(ticket, error.retry_after, limits, pause=status == 503)
            return error, None
        if status == 503:
            flow.on_failure(ticket, Failure.OVERLOAD)
            return error, Failure.OVERLOAD
        if status >= 500 or status == 408:
            flow.on_failure(ticket, Failure.ERROR)
            return error, Failure.ERROR
        flow.on_answer(ticket, limits)  # the server is fine; the request was refused
        raise error
