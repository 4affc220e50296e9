"""Flow control shared by a fleet of processes through Redis (the ``redis`` extra).

::

    from nebius_datasets_async import DatasetsClient
    from nebius_datasets_async.redis import RedisFlowControl

    client = DatasetsClient(flow=RedisFlowControl("redis://localhost:6379/0"))

Every client of the same API key and base URL that points at the same Redis shares one pace,
one Retry-After pause, what the server's ``x-ratelimit-*`` headers said and one retry budget,
so a fleet of workers on several machines is paced as one client (``docs/SCALING.md`` has the
figures). The concurrency bound stays per process.

How it works: the pace is a GCRA slot schedule kept in Redis and updated atomically by a Lua
script. Each process has one booker: whenever requests of the process wait to be sent, one
round trip books consecutive slots for all of them at once (at most one per request, far
fewer under load), none more than 50 ms (or one round trip) ahead, so a cut of the pace
reaches every process at once. Everything a process learns between two calls (successes,
throttles, retry budget spent, the latest quota headers) travels with its next call, so no
signal costs a round trip of its own, and a throttle makes the booker call at once. The
script measures what the fleet as a whole got through, per 100 ms bucket, and sets the shared
pace from it as ``FlowControl`` does for one process.

Keys live under ``nebius-datasets:{<fingerprint>}:``, where the fingerprint is a hash of the
base URL and the key (never the key itself); the braces make them one hash tag, so the design
also runs on Redis Cluster. Every key expires ``ttl`` seconds after its last use.

Redis is there for speed, never for correctness: when it is unreachable, slow (each operation
has ``timeout`` seconds, 0.25 by default) or restarted, the process paces itself with its own
``FlowControl`` within a second, logs one warning, and rejoins the fleet when Redis answers
again. No call fails and no update is lost because of Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from ._events import Events, PaceChanged
from ._exceptions import APITimeoutError
from ._flow import Failure, FlowControl, FlowState, Ticket, retry_cost
from ._protocol import RateLimits
from ._validate import check

try:
    import redis.asyncio as _redis
    from redis.exceptions import RedisError as _RedisError
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "RedisFlowControl needs the redis package: pip install 'nebius-datasets-async[redis]'"
    ) from exc

__all__ = ["RedisFlowControl"]

logger = logging.getLogger("nebius_datasets_async")

_RETRY_REDIS = 1.0  # seconds before trying Redis again after it failed
_MIN_RATE = 0.5  # requests per second: the slowest shared pace
_START_RATE = 200.0  # requests per second: the fleet's first pace, doubled while it binds
_HORIZON = 0.05  # seconds: slots are booked at most this far ahead (or one latency)
_HEADROOM = 0.95  # the shared pace, as a share of the rate measured while throttled
_SPACING = 0.002  # seconds between two admission calls of one process, at least

# One round trip books slots for every request of this process waiting at that moment.
# KEYS: the state hash; the history hash (per 100 ms bucket b: field b counts successes,
# field "r" .. b throttles, as the fleet reported them). ARGV: successes since this process's
# last call, budget tokens it spent, the epoch of a throttle it saw (-1: none), that
# throttle's Retry-After (-1: none), 1 if the throttle asks everyone to pause, throttles since
# its last call, quota headers (remaining, reset; -1: none), its requests in flight (quota
# headers count them as spent), its answer latency (s), the key TTL in ms, the budget's
# capacity, the probe speed, the least rate, the first rate, the slots wanted, how far ahead
# they may be booked (s), the headroom under the measured rate.
# Returns: {seconds to the first slot booked, seconds between slots, slots booked, epoch,
# budget left, rate, seconds before asking again (0: every slot wanted was booked)}.
#
# The maths follows FlowControl's (see its module): a GCRA slot schedule at a rate measured
# from what the fleet got through while the server throttled it. The fleet's first pace
# (ARGV[15]) doubles every few round trips while it holds requests back, so the fleet ramps
# up together instead of each process sending its own first volley; first contact halves
# what got through and searches again, up to 80% of that first measure (met soon after the
# start: it counts the burst) or on past it, slower (met after a long ramp: it averages the
# ramp); later throttles set the pace to ``headroom`` times what got through, which then
# holds for five quiet seconds before it probes upward. Slots are booked at most ``horizon``
# ahead, so a cut reaches every process within that time.
_ADMIT = """
local state, hist = KEYS[1], KEYS[2]
local oks, spent = tonumber(ARGV[1]), tonumber(ARGV[2])
local t_epoch, t_after, t_pause = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t_count = tonumber(ARGV[6])
local h_left, h_reset = tonumber(ARGV[7]), tonumber(ARGV[8])
if h_left >= 0 then h_left = math.max(h_left - tonumber(ARGV[9]), 0) end
local latency, ttl, capacity = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local probe, min_rate, start_rate = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local want, horizon, headroom = tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local f = redis.call('HMGET', state, 'rate', 'tat', 'hold', 'epoch', 'paced', 'growth',
  'throttle', 'hrate', 'huntil', 'budget', 'lastok', 'streak', 'cut', 'peak', 'peakat',
  'search', 'first', 'target')
local rate, tat, hold = tonumber(f[1]) or start_rate, tonumber(f[2]) or 0, tonumber(f[3]) or 0
local epoch, paced, growth = tonumber(f[4]) or 0, tonumber(f[5]) or 0, tonumber(f[6]) or now
local last_throttle, hrate, huntil = tonumber(f[7]) or 0, tonumber(f[8]) or 0, tonumber(f[9]) or 0
local budget = tonumber(f[10]) or capacity
local lastok, streak = tonumber(f[11]) or 0, tonumber(f[12]) or 0
local lastcut, peak, peakat = tonumber(f[13]) or 0, tonumber(f[14]) or 0, tonumber(f[15]) or now
local search, first = tonumber(f[16]) or 1, tonumber(f[17]) or 0
local target = tonumber(f[18]) or 0

local bucket = math.floor(now * 10)
if oks > 0 then
  redis.call('HINCRBY', hist, bucket, oks)
  if first == 0 then first = now end
  lastok = now
  streak = 0
  budget = math.min(capacity, budget + oks)
end
if t_count > 0 then redis.call('HINCRBY', hist, 'r' .. bucket, t_count) end
budget = math.max(0, budget - spent)

-- successes and throttles the fleet reported over the last `span` seconds, and the time
-- they cover (whole buckets, never before the fleet's first success)
local function window(span)
  local from = math.floor((now - span) * 10)
  local fields = {}
  for b = from, bucket do
    fields[#fields + 1] = b
    fields[#fields + 1] = 'r' .. b
  end
  local got, refused = 0, 0
  local values = redis.call('HMGET', hist, unpack(fields))
  for i = 1, #values, 2 do
    got = got + (tonumber(values[i]) or 0)
    refused = refused + (tonumber(values[i + 1]) or 0)
  end
  local since = from / 10
  if first > 0 then since = math.max(since, first - latency) end
  return got, refused, math.max(now - since, 0.02)
end

-- the best admitted rate, halving every minute: the pace never falls below half of it
if oks > 0 then
  local got, _, covered = window(0.5)
  peak = math.max(peak * 0.5 ^ ((now - peakat) / 60), got / math.max(covered, 0.5))
  peakat = now
end

if h_left >= 0 then
  if h_reset > 0 then
    if h_left <= 0 then huntil = now + h_reset; hrate = 0
    else hrate = math.max(h_left / h_reset, min_rate); huntil = 0 end
  elseif h_left <= 0 then huntil = now + 1 end
end

if t_epoch >= 0 then
  last_throttle = now
  streak = streak + t_count
  local blocked = streak >= 5 and now - lastok >= 0.1 and hrate == 0
  -- measure over a few round trips and at least 16 successes' worth of time, once a few
  -- round trips and 8 successes' worth of time have passed since the last cut
  local span = math.min(math.max(0.5, 3 * latency, 32 / rate), 1)
  local gap = math.max(0.1, 3 * latency, 8 / rate)
  if t_after >= 0 and (t_pause == 1 or blocked) then
    hold = math.max(hold, now + t_after)
  elseif t_epoch == epoch and hrate == 0 and now - lastcut >= gap then
    local got1, refused1 = window(1)
    -- a few throttles among many successes: refused at random, not saturated
    if search == 1 or epoch < 2 or not (got1 >= 50 and refused1 < 0.02 * got1) then
      local new_rate
      if epoch == 0 then
        span = 1  -- first contact: whatever got through lately
      elseif search == 1 then
        span = math.min(math.max(0.2, 3 * latency, 16 / rate), 1)  -- the end of the ramp
      end
      local got, _, covered = window(span)
      if got < 8 then
        new_rate = 0.5 * rate
      else
        local measured = got / covered
        if epoch == 0 then
          -- First contact: halve, then search back up to near this measure and hold
          -- there. When the limit was met soon after the start, the server's burst
          -- inflates the measure; when the fleet ramped up for a while first, the ramp
          -- deflates it: search on past it then, five times slower.
          new_rate = 0.5 * math.min(measured, rate)
          target = measured
          if now - first > 0.5 then target = -measured end
        else
          -- one cut takes at most 90% off; while searching, the limit likely lies above
          -- half the pace that met it, unless the measurement says less
          local least = 0.1 * rate
          if search == 1 then least = math.min(0.5 * rate, measured) end
          new_rate = math.max(math.min(headroom * measured, rate), least)
        end
      end
      search = 0
      if epoch == 0 then search = 1 end
      rate = math.max(new_rate, 0.5 * peak, min_rate)
      epoch = epoch + 1
      lastcut = now
      growth = now
      tat = now  -- slots are booked at most `horizon` ahead: the new pace holds at once
    end
  end
end

local lead, interval, booked, retry = 0, 0, 0, 0
local pace = rate
if hrate > 0 then pace = hrate end
local until_ = math.max(hold, huntil)
if now < until_ then
  retry = until_ - now
else
  if hrate == 0 and now - paced < 1 then
    -- the pace holds requests back: search (double every few round trips) or probe upward
    local dt = math.min(now - growth, 1)
    local quiet = math.max(now - math.max(last_throttle, hold), 0)
    if dt > 0 then
      if search == 1 then
        local step = math.max(0.3, 2 * latency)  -- the fleet's first ramp: x2 in 0.3 s
        if epoch > 0 then step = math.max(0.2, 2 * latency, 8 / rate) end
        if target < 0 and rate >= -target then step = 5 * step end
        rate = math.min(rate * 2 ^ (dt / step), 1e6)
        if target > 0 and rate >= 0.8 * target then
          -- back near what first contact measured (which counts the burst too): hold
          -- there, probe later
          rate = 0.8 * target
          search = 0
        end
      else
        -- the measured rate holds for five quiet seconds, then probes upward ever faster
        -- (the limit rose, others left, or the measurement was low)
        if quiet > 5 then rate = rate * (1 + math.min(0.5, probe * 2 ^ (quiet - 5)) * dt) end
      end
      pace = rate
    end
  end
  growth = now
  -- book up to `want` consecutive slots, none more than `horizon` seconds ahead
  interval = 1 / pace
  local slot = math.max(tat, now - interval)
  if slot - now <= horizon then
    booked = math.min(want, math.floor((now + horizon - slot) / interval) + 1)
  end
  lead = slot - now
  tat = slot + booked * interval
  if tat - interval > now then paced = now end
  if booked < want then retry = math.max(tat - now - horizon, 0.001) end
end

redis.call('HSET', state, 'rate', rate, 'tat', tat, 'hold', hold, 'epoch', epoch,
  'paced', paced, 'growth', growth, 'throttle', last_throttle, 'hrate', hrate,
  'huntil', huntil, 'budget', budget, 'lastok', lastok, 'streak', streak, 'cut', lastcut,
  'peak', peak, 'peakat', peakat, 'search', search, 'first', first,
  'target', target)
-- the history needs two seconds: forget older buckets (rarely: a sparse user skips some)
if redis.call('HLEN', hist) > 64 then
  for _, field in ipairs(redis.call('HKEYS', hist)) do
    local b = tonumber(field) or tonumber(string.sub(field, 2))
    if b < bucket - 20 then redis.call('HDEL', hist, field) end
  end
end
redis.call('PEXPIRE', state, ttl)
redis.call('PEXPIRE', hist, ttl)
return {tostring(lead), tostring(interval), booked, epoch, tostring(budget), tostring(rate),
  tostring(retry)}
"""


@attrs.define
class _Pending:
    """What this process learnt since its last admission, sent with the next one."""

    oks: int = 0
    spent: float = 0.0
    throttle_epoch: int = -1
    retry_after: float = -1.0
    pause: bool = False
    throttles: int = 0
    limits: RateLimits | None = None

    def take(self) -> _Pending:
        sent = attrs.evolve(self)
        self.oks, self.spent, self.throttle_epoch, self.throttles = 0, 0.0, -1, 0
        self.retry_after, self.pause, self.limits = -1.0, False, None
        return sent


class RedisFlowControl:
    """A flow control whose pace, pauses, learned rate, quota headers and retry budget are
    shared through Redis by every client of the same key and base URL (see the module
    docstring). Arguments:

    - ``url``: a Redis URL (``redis://host:6379/0``, ``rediss://`` for TLS), or
    - ``client``: an existing ``redis.asyncio.Redis`` (used as is, never closed);
    - ``namespace``: a prefix of the keys, to keep several fleets apart in one Redis;
    - ``max_concurrency``: requests in flight from this process (the local bound);
    - ``timeout``: seconds for one Redis operation before falling back (default 0.25);
    - ``ttl``: seconds every key lives after its last use (default 600);
    - ``retry_budget``: the fleet's retry budget in tokens;
    - ``probe``: how fast the shared pace probes upward after five seconds without a
      throttle, as a share of itself per second (default 0.01, doubling every further second).

    It works in the event loop it is first used in (a ``redis.asyncio`` connection belongs to
    one loop); a process with several loops should give each its own client and flow.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        namespace: str = "nebius-datasets",
        max_concurrency: int = 64,
        timeout: float = 0.25,
        ttl: float = 600.0,
        retry_budget: float = 500.0,
        probe: float = 0.01,
    ) -> None:
        check((url is None) != (client is None), "give a Redis url or a client, not both")
        check(isinstance(namespace, str) and namespace != "", "namespace must be a non-empty str")
        check(timeout > 0, f"timeout must be > 0: {timeout!r}")
        check(ttl >= 1, f"ttl must be at least 1 s: {ttl!r}")
        self._local = FlowControl(max_concurrency=max_concurrency, retry_budget=retry_budget)
        self._own_client = client is None
        if client is None:
            assert url is not None
            client = _redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        self._redis = client
        self._script = client.register_script(_ADMIT)
        self._namespace = namespace
        self._keys: list[str] | None = None
        self._ttl_ms = int(ttl * 1000)
        self._capacity = float(retry_budget)
        self._probe = probe
        self._pending = _Pending()
        self._budget = self._capacity
        self._rate: float | None = None
        self._latency = 0.0
        self._waiters: deque[asyncio.Future[tuple[float, int] | None]] = deque()
        self._booker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._down_until = -math.inf
        self._warned = False
        self.redis_calls = 0
        self.fallbacks = 0
        self._events = Events()  # for the shared pace; the local flow has its own

    def __repr__(self) -> str:
        shared = "shared" if self._keys is not None and not self._warned else "local"
        return f"<RedisFlowControl {self._namespace} {shared}>"

    @property
    def max_concurrency(self) -> int:
        """The most requests this process has in flight at once."""
        return self._local.max_concurrency

    def bind(self, identity: str) -> None:
        """Called by the client with a fingerprint of its base URL and key: the namespace of
        the shared state. The key itself is never seen here.
        """
        prefix = f"{self._namespace}:{{{identity}}}:"
        self._keys = [prefix + "state", prefix + "ok"]

    @property
    def keys(self) -> list[str]:
        """The Redis keys of the shared state (after ``bind``)."""
        return list(self._keys or [])

    async def aclose(self) -> None:
        """Stop booking and close the Redis connection pool if this flow created it."""
        booker = self._booker
        if booker is not None:
            booker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await booker
        if self._own_client:
            await self._redis.aclose()

    # -- events ------------------------------------------------------------------------------

    def subscribe(self, observer: Callable[[object], None]) -> None:
        """Call ``observer`` with the gate's events: this process's, and ``PaceChanged`` with
        phase ``"shared"`` when the fleet's pace read from Redis moves by a quarter or more.
        """
        self._local.subscribe(observer)
        self._events.subscribe(observer)

    def unsubscribe(self, observer: Callable[[object], None]) -> None:
        """Stop calling ``observer``."""
        self._local.unsubscribe(observer)
        self._events.unsubscribe(observer)

    # -- admission ---------------------------------------------------------------------------

    async def admit(
        self, deadline: float | None = None, *, max_wait: float | None = None
    ) -> Ticket:
        """A place here, then a slot in the fleet's shared schedule (or the local one while
        Redis is unavailable).
        """
        if self._keys is None or time.monotonic() < self._down_until:
            return await self._local.admit(deadline, max_wait=max_wait)
        ticket = await self._local.admit(deadline, max_wait=max_wait, paced=False)
        placed = time.monotonic()
        try:
            slot = await self._next_slot()
            if slot is not None:
                send_at, epoch = slot
                wait = send_at - time.monotonic()
                if wait > 0:
                    if deadline is not None and send_at > deadline:
                        raise APITimeoutError("the deadline passed while waiting to send")
                    await asyncio.sleep(wait)
        except BaseException:
            self._local.cancel(ticket)
            raise
        if slot is None:  # Redis failed just now: pace locally from here on
            self._local.cancel(ticket)
            return await self._local.admit(deadline, max_wait=max_wait)
        now = time.monotonic()  # sent now: latency excludes the wait
        return Ticket(epoch, now, waited_place=ticket.waited_place, waited_slot=now - placed)

    async def _next_slot(self) -> tuple[float, int] | None:
        """Queue for a slot booked by this process's booker: (monotonic send time, epoch), or
        ``None`` when Redis just failed.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[float, int] | None] = loop.create_future()
        self._waiters.append(waiter)
        if self._booker is None:
            self._booker = loop.create_task(self._book())
        try:
            return await waiter
        except asyncio.CancelledError:
            if not waiter.done():
                waiter.cancel()  # the booker skips it
            raise

    async def _book(self) -> None:
        """Book slots for the waiting requests, one Redis call per batch, until none waits.
        Each call books only slots within the next ``_HORIZON`` seconds, so a cut of the pace
        (or a pause) reaches every process within that time.
        """
        waiters = self._waiters
        try:
            while True:
                while waiters and waiters[0].done():
                    waiters.popleft()
                if not waiters:
                    return
                reply = await self._call_script(sum(not w.done() for w in waiters))
                if reply is None:  # fell back: every waiter paces locally
                    while waiters:
                        waiter = waiters.popleft()
                        if not waiter.done():
                            waiter.set_result(None)
                    return
                first, interval, booked, epoch, retry_in = reply
                send_at = time.monotonic() + first
                while booked > 0 and waiters:
                    waiter = waiters.popleft()
                    if not waiter.done():
                        waiter.set_result((send_at, epoch))
                        send_at += interval
                        booked -= 1
                # Requests that come meanwhile are booked together by the next call. When
                # the schedule is full, ask again once there is room (each process at its
                # own moment), or as soon as this process has a throttle to tell.
                pause = _SPACING * random.uniform(1.0, 2.0)
                if waiters and retry_in > 0:
                    horizon = max(_HORIZON, self._latency)
                    pause += retry_in + horizon * random.uniform(0.25, 0.75)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
        finally:
            self._booker = None
            if waiters:  # cancelled: nobody books for them any more
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                waiters.clear()

    async def _call_script(self, want: int) -> tuple[float, float, int, int, float] | None:
        """One admission call booking up to ``want`` slots: (seconds to the first slot,
        seconds between slots, slots booked, epoch, seconds before asking again), or ``None``
        after falling back.
        """
        assert self._keys is not None
        sent = self._pending.take()
        limits = sent.limits
        left = reset = -1.0
        if limits is not None and limits.remaining is not None:
            left = float(limits.remaining)
            reset = limits.reset if limits.reset is not None else 0.0
        args = [
            sent.oks,
            sent.spent,
            sent.throttle_epoch,
            sent.retry_after,
            int(sent.pause),
            sent.throttles,
            left,
            reset,
            self._local.state().in_flight,
            self._latency,
            self._ttl_ms,
            self._capacity,
            self._probe,
            _MIN_RATE,
            _START_RATE,
            want,
            max(_HORIZON, self._latency),
            _HEADROOM,
        ]
        try:
            self.redis_calls += 1
            reply = await self._script(keys=self._keys, args=args)
        except (_RedisError, OSError, TimeoutError) as exc:
            self._fall_back(exc, sent)
            return None
        first, interval, booked, epoch, budget, rate, retry_in = (float(x) for x in reply)
        self._budget = budget
        if self._events.active and _pace_moved(self._rate, rate):  # event: PaceChanged (shared)
            cap = self._local.state().concurrency
            self._events.emit(PaceChanged("shared", rate, self._rate, "shared", cap))
        self._rate = rate
        if self._warned:
            self._warned = False
            logger.info("Redis answers again: this process rejoined the shared flow control")
        return max(first, 0.0), interval, int(booked), int(epoch), retry_in

    def _fall_back(self, exc: BaseException, unsent: _Pending) -> None:
        self.fallbacks += 1
        self._down_until = time.monotonic() + _RETRY_REDIS
        # what could not be sent is kept for the next try (throttles are one signal anyway)
        self._pending.oks += unsent.oks
        self._pending.spent += unsent.spent
        self._pending.throttles += unsent.throttles
        if not self._warned:
            self._warned = True
            logger.warning(
                "Redis is unavailable (%s): pacing this process on its own until it answers",
                type(exc).__name__,
            )

    # -- feedback ----------------------------------------------------------------------------

    def on_answer(self, ticket: Ticket, limits: RateLimits) -> None:
        """Count the answer for the fleet; free the place."""
        self._pending.oks += 1
        self._latency += 0.1 * (time.monotonic() - ticket.admitted_at - self._latency)
        if limits.remaining is not None:
            self._pending.limits = limits
        self._local.on_answer(ticket, limits)

    def on_throttle(
        self, ticket: Ticket, retry_after: float | None, limits: RateLimits, *, pause: bool = False
    ) -> None:
        """Tell the fleet (with the next admission); free the place."""
        pending = self._pending
        pending.throttles += 1
        self._wake.set()
        if pending.throttle_epoch < 0 or pause:
            pending.throttle_epoch = ticket.epoch
            pending.retry_after = -1.0 if retry_after is None else retry_after
            pending.pause = pending.pause or pause
        if limits.remaining is not None:
            pending.limits = limits
        self._local.on_throttle(ticket, retry_after, limits, pause=pause)

    def on_failure(self, ticket: Ticket, failure: Failure) -> None:
        """Free the place; an overload cuts this process's concurrency."""
        self._local.on_failure(ticket, failure)

    def cancel(self, ticket: Ticket) -> None:
        """An admitted request was never sent."""
        self._local.cancel(ticket)

    def busy(self) -> bool:
        """Whether the server looks busy rather than down, as this process saw it."""
        return self._local.busy()

    def retry_allowed(self, failure: Failure) -> bool:
        """Pay for a retry from the fleet's budget (as last reported by Redis)."""
        if self._warned or self._keys is None:
            return self._local.retry_allowed(failure)
        cost = retry_cost(failure)
        if self._budget - self._pending.spent < cost:
            return False
        self._pending.spent += cost
        return True

    def state(self) -> FlowState:
        """This process's figures, with the fleet's pace when it is shared."""
        local = self._local.state()
        if self._warned or self._keys is None:
            return local
        return attrs.evolve(
            local,
            rate=self._rate,
            budget=self._budget,
            pacing="shared" if self._rate is not None else local.pacing,
        )


def _pace_moved(before: float | None, after: float | None) -> bool:
    """Whether a shared pace moved enough to report: from or to none, or by a quarter."""
    if before is None or after is None or before <= 0:
        return before != after
    return not (0.8 < after / before < 1.25)
