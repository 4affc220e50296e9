"""Flow control shared by a fleet of processes through Redis (the ``redis`` extra).

::

    from nebius_datasets_async import DatasetsClient
    from nebius_datasets_async.redis import RedisFlowControl

    client = DatasetsClient(flow=RedisFlowControl("redis://localhost:6379/0"))

Every client of the same API key and base URL that points at the same Redis shares one pace,
one Retry-After pause, what the server's ``x-ratelimit-*`` headers said and one retry budget,
so a fleet of workers on several machines is paced as one client (few throttles); the shared
pace is still slower to find the limit than one process's own ``FlowControl``
(``docs/SCALING.md`` has the figures). The concurrency bound stays per process.

How it works: the pace is a GCRA slot schedule kept in Redis and updated atomically by a Lua
script, **one round trip per admitted request**. Everything a process learns between two
admissions (successes, a throttle, retry budget spent, the latest quota headers) travels with
its next admission, so no signal costs a round trip of its own. The script measures what the
fleet as a whole got through, per 100 ms bucket, and sets the shared pace from it exactly as
``FlowControl`` does for one process.

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
import logging
import math
import time
from typing import Any

import attrs

from ._exceptions import APITimeoutError
from ._flow import Failure, FlowControl, FlowState, Ticket
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

# One round trip per admitted request. KEYS: the state hash, the per-100-ms success counts.
# ARGV: successes since this process's last admission, budget tokens it spent, the epoch of a
# throttle it saw (-1: none), that throttle's Retry-After (-1: none), 1 if the throttle asks
# everyone to pause, quota headers (remaining, reset; -1: none), its requests in flight,
# the key TTL in ms, the budget's capacity, the probe speed, the least rate. (Quota headers
# count this process's other requests in flight as already spent.)
# Returns: {seconds to wait, epoch, budget left, rate (0: unpaced)} as strings.
_ADMIT = """
local state, okb = KEYS[1], KEYS[2]
local oks, spent = tonumber(ARGV[1]), tonumber(ARGV[2])
local t_epoch, t_after, t_pause = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local h_left, h_reset = tonumber(ARGV[6]), tonumber(ARGV[7])
if h_left >= 0 then h_left = math.max(h_left - tonumber(ARGV[8]), 0) end
local ttl, capacity = tonumber(ARGV[9]), tonumber(ARGV[10])
local probe, min_rate = tonumber(ARGV[11]), tonumber(ARGV[12])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local f = redis.call('HMGET', state, 'rate', 'tat', 'hold', 'epoch', 'paced', 'growth',
  'throttle', 'hrate', 'huntil', 'budget', 'lastok', 'streak', 'cut', 'peak', 'peakat')
local rate, tat, hold = tonumber(f[1]) or 0, tonumber(f[2]) or 0, tonumber(f[3]) or 0
local epoch, paced, growth = tonumber(f[4]) or 0, tonumber(f[5]) or 0, tonumber(f[6]) or now
local last_throttle, hrate, huntil = tonumber(f[7]) or 0, tonumber(f[8]) or 0, tonumber(f[9]) or 0
local budget = tonumber(f[10]) or capacity
local lastok, streak = tonumber(f[11]) or 0, tonumber(f[12]) or 0
local lastcut, peak, peakat = tonumber(f[13]) or 0, tonumber(f[14]) or 0, tonumber(f[15]) or now

local bucket = math.floor(now * 10)
if oks > 0 then
  redis.call('HINCRBY', okb, bucket, oks)
  lastok = now
  streak = 0
  budget = math.min(capacity, budget + oks)
end
budget = math.max(0, budget - spent)
-- the best admitted rate, halving every minute: the pace never falls below half of it
local function admitted_since(from)
  local fields = {}
  for b = from, bucket do fields[#fields + 1] = b end
  local total = 0
  for _, v in ipairs(redis.call('HMGET', okb, unpack(fields))) do
    total = total + (tonumber(v) or 0)
  end
  return total
end
local recent = admitted_since(bucket - 4)
peak = math.max(peak * 0.5 ^ ((now - peakat) / 60), recent / 0.5)
peakat = now

if h_left >= 0 then
  if h_reset > 0 then
    if h_left <= 0 then huntil = now + h_reset; hrate = 0
    else hrate = math.max(h_left / h_reset, min_rate); huntil = 0 end
  elseif h_left <= 0 then huntil = now + 1 end
end

if t_epoch >= 0 then
  last_throttle = now
  streak = streak + 1
  local blocked = streak >= 5 and now - lastok >= 0.1 and hrate == 0
  if t_after >= 0 and (t_pause == 1 or blocked) then
    hold = math.max(hold, now + t_after)
  elseif t_epoch == epoch and hrate == 0 and now - lastcut >= 0.3 then
    local admitted = admitted_since(bucket - 2)
    local new_rate
    if admitted < 8 then
      if rate > 0 then new_rate = rate * 0.5 end
    elseif rate == 0 then new_rate = admitted / 0.3
    else new_rate = math.max(math.min(0.97 * admitted / 0.3, rate), 0.1 * rate) end
    if new_rate then
      rate = math.max(new_rate, 0.5 * peak, min_rate)
      epoch = epoch + 1
      lastcut = now
      growth = now
      tat = math.max(tat, now)
    end
  end
end

local wait = 0
local pace = rate
if hrate > 0 then pace = hrate end
local until_ = math.max(hold, huntil)
if now < until_ then
  wait = until_ - now
elseif pace > 0 then
  if hrate == 0 and now - paced < 1 then
    local dt = math.min(now - growth, 1)
    local speed = math.min(0.5, probe * 2 ^ (math.max(now - math.max(last_throttle, hold), 0)))
    if dt > 0 then rate = rate * (1 + speed * dt); pace = rate end
  end
  growth = now
  local interval = 1 / pace
  local slot = math.max(tat, now - interval)
  tat = slot + interval
  if slot > now then wait = slot - now; paced = now end
end

redis.call('HSET', state, 'rate', rate, 'tat', tat, 'hold', hold, 'epoch', epoch,
  'paced', paced, 'growth', growth, 'throttle', last_throttle, 'hrate', hrate,
  'huntil', huntil, 'budget', budget, 'lastok', lastok, 'streak', streak, 'cut', lastcut,
  'peak', peak, 'peakat', peakat)
redis.call('HDEL', okb, bucket - 20)
redis.call('PEXPIRE', state, ttl)
redis.call('PEXPIRE', okb, ttl)
return {tostring(wait), tostring(epoch), tostring(budget), tostring(rate)}
"""


@attrs.define
class _Pending:
    """What this process learnt since its last admission, sent with the next one."""

    oks: int = 0
    spent: float = 0.0
    throttle_epoch: int = -1
    retry_after: float = -1.0
    pause: bool = False
    limits: RateLimits | None = None

    def take(self) -> _Pending:
        sent = attrs.evolve(self)
        self.oks, self.spent, self.throttle_epoch = 0, 0.0, -1
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
    - ``retry_budget``: the fleet's retry budget in tokens.

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
        probe: float = 0.02,
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
        self._timeout = timeout
        self._ttl_ms = int(ttl * 1000)
        self._capacity = float(retry_budget)
        self._probe = probe
        self._pending = _Pending()
        self._budget = self._capacity
        self._rate: float | None = None
        self._down_until = -math.inf
        self._warned = False
        self.redis_calls = 0
        self.fallbacks = 0

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
        """Close the Redis connection pool if this flow created it."""
        if self._own_client:
            await self._redis.aclose()

    # -- admission ---------------------------------------------------------------------------

    async def admit(self, deadline: float | None = None) -> Ticket:
        """A place here, then a slot in the fleet's shared schedule (or the local one while
        Redis is unavailable).
        """
        if self._keys is None or time.monotonic() < self._down_until:
            return await self._local.admit(deadline)
        ticket = await self._local.admit(deadline, paced=False)
        try:
            wait, epoch = await self._shared_slot()
        except BaseException:
            self._local.cancel(ticket)
            raise
        if wait is None:  # Redis failed just now: pace locally from here on
            self._local.cancel(ticket)
            return await self._local.admit(deadline)
        if wait > 0:
            if deadline is not None and time.monotonic() + wait > deadline:
                self._local.cancel(ticket)
                raise APITimeoutError("the deadline passed while waiting to send")
            try:
                await asyncio.sleep(wait)
            except BaseException:
                self._local.cancel(ticket)
                raise
        return Ticket(epoch, ticket.admitted_at)

    async def _shared_slot(self) -> tuple[float | None, int]:
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
            left,
            reset,
            self._local.state().in_flight,
            self._ttl_ms,
            self._capacity,
            self._probe,
            _MIN_RATE,
        ]
        try:
            self.redis_calls += 1
            reply = await self._script(keys=self._keys, args=args)
        except (_RedisError, OSError, TimeoutError) as exc:
            self._fall_back(exc, sent)
            return None, 0
        wait, epoch, budget, rate = (float(x) for x in reply)
        self._budget = budget
        self._rate = rate or None
        if self._warned:
            self._warned = False
            logger.info("Redis answers again: this process rejoined the shared flow control")
        return max(wait, 0.0), int(epoch)

    def _fall_back(self, exc: BaseException, unsent: _Pending) -> None:
        self.fallbacks += 1
        self._down_until = time.monotonic() + _RETRY_REDIS
        # what could not be sent is kept for the next try (throttles are one signal anyway)
        self._pending.oks += unsent.oks
        self._pending.spent += unsent.spent
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
        if limits.remaining is not None:
            self._pending.limits = limits
        self._local.on_answer(ticket, limits)

    def on_throttle(
        self, ticket: Ticket, retry_after: float | None, limits: RateLimits, *, pause: bool = False
    ) -> None:
        """Tell the fleet (with the next admission); free the place."""
        pending = self._pending
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
        cost = 10.0 if failure is Failure.TIMEOUT else 5.0
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
