"""Flow control shared by a fleet of processes through Redis (the ``redis`` extra).

::

    from nebius_datasets_async import DatasetsClient
    from nebius_datasets_async.redis import RedisFlowControl

    client = DatasetsClient(flow=RedisFlowControl("redis://localhost:6379/0"))

Every client of the same API key and base URL that points at the same Redis shares one pace,
one pause, what the server's ``x-ratelimit-*`` headers said and one retry budget, so a fleet
of workers on several machines is paced as one client (``docs/redis.md``). The concurrency
bound stays per process.

How it works: the fleet follows the one law (``_law.Law``, ``docs/flow-control.md``), whose
whole state Redis keeps as a JSON snapshot with a version number. Redis decides nothing; a
small Lua script does only what must be atomic there:

- **replace the law only if nobody changed it since it was read** (compare-and-set on the
  version). Each process keeps the last snapshot it saw and the events it has not committed
  yet (sends, answers, refusals, quota headers, holds; timestamped on the fleet's clock). About
  every 100 ms (at once after a refusal or a hold) its next call applies them to its copy of
  the law and proposes the result with the pace and the hold the law gives now; on a conflict
  it loads the snapshot the script returns, applies its events again and proposes again at
  once. Events are dropped only once committed, so none is lost or counted twice;
- **book slots** at the stored pace, honouring the stored hold: each process has one booker;
  whenever requests of the process wait, one call books consecutive slots for all of them, none
  more than 50 ms (or one round trip) ahead, so a cut or a pause reaches every process within
  that time;
- **count** the retry budget.

One clock for the fleet: Redis's ``TIME``, as each call returns it; each process keeps the
offset to its own monotonic clock from its fastest recent call.

Keys live under ``nebius-datasets:{<fingerprint>}:``, where the fingerprint is a hash of the
base URL and the key (never the key itself); the braces make them one hash tag, so the design
also runs on Redis Cluster. Every key expires ``ttl`` seconds after its last use. Redis holds
only JSON data: restoring a snapshot builds the law's own types and nothing else.

Redis is there for speed, never for correctness: when it is unreachable, slow (each operation
has ``timeout`` seconds, 0.25 by default) or restarted, the process paces itself with its own
``FlowControl`` within a second, logs one warning, and rejoins the fleet when Redis answers
again. No call fails and no update is lost because of Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from ._events import Events, PaceChanged
from ._exceptions import APITimeoutError, RateLimitError
from ._flow import Failure, FlowControl, FlowState, Ticket, retry_cost
from ._law import BUDGET_REFUND, MIN_RATE, PROBE, Law, Refusal
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
_HORIZON = 0.05  # seconds: slots are booked at most this far ahead (or one latency)
_SPACING = 0.002  # seconds between two calls of one process, at least
_PROPOSE_EVERY = 0.1  # seconds: a process's events wait at most this long to be proposed ...
_PROPOSE_SOONEST = 0.02  # ... and at least this long, unless a refusal or a hold must travel
_PACE_MOVED = 0.03  # ... or the law's pace moved by this share since the one stored
_CAS_TRIES = 3  # proposals in a row after conflicts, at most, before the next call
_CLOCK_FRESH = 5.0  # seconds: the clock offset comes from the fastest call this recent

# The fleet's state is one hash: ``version``, ``law`` (the law's JSON snapshot), ``by`` (the
# proposal that wrote it), ``pace`` (requests/s, 0: unpaced) and ``hold`` (nothing leaves
# before it) as the law gave them, ``tat`` (the slot schedule: the next slot), ``step`` (the
# interval this script last booked at) and ``steptat`` (the ``tat`` it left then: a ``tat``
# moved since, by another version of the script, has no known step), ``budget``. Times are
# Redis's.
# ARGV: [1] the version a proposal is based on (-1: none), [2] its snapshot, [3] its pace,
# [4] its hold, [5] its id, [6] the version the caller holds, [7] slots wanted, [8] how far
# ahead they may be booked (s), [9] budget tokens spent, [10] tokens given back, [11] the
# budget's capacity, [12] the TTL in ms.
# Returns {time, version, committed (1/0), first slot, seconds between slots, slots booked,
# hold, pace, budget, the snapshot and its writer ('' unless the caller's version is stale)}.
_STATE = """
local key = KEYS[1]
local base, known = tonumber(ARGV[1]), tonumber(ARGV[6])
local want, horizon, capacity = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[11])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local f = redis.call('HMGET', key, 'version', 'pace', 'hold', 'tat', 'budget', 'step', 'steptat')
local version = tonumber(f[1]) or 0
local pace, hold = tonumber(f[2]) or 0, tonumber(f[3]) or 0
local tat, budget = tonumber(f[4]) or 0, tonumber(f[5]) or capacity
local step = tonumber(f[6]) or 0
if tonumber(f[7]) ~= tat then step = 0 end
local committed = 0
if base >= 0 and base == version then
  version = version + 1
  pace, hold = tonumber(ARGV[3]), tonumber(ARGV[4])
  redis.call('HSET', key, 'version', version, 'law', ARGV[2], 'pace', ARGV[3],
    'hold', ARGV[4], 'by', ARGV[5])
  committed = 1
end
budget = math.max(0, math.min(capacity, budget + tonumber(ARGV[10])) - tonumber(ARGV[9]))
local first, interval, booked = now, 0, 0
if now >= hold and want > 0 then
  if pace <= 0 then
    booked = want
  else
    interval = 1 / pace
    local nxt = tat
    if interval <= 0.5 * step then
      -- the pace at least doubled since the next slot was booked (a closed limit's probe
      -- passed): it comes one interval at this pace after the last one
      nxt, step = tat - step + interval, interval
    end
    first = math.max(nxt, now - interval)
    if first - now <= horizon then
      booked = math.min(want, math.floor((now + horizon - first) / interval) + 1)
    end
    tat = first + booked * interval
    if booked > 0 then step = interval end
  end
end
local function n(x) return string.format('%.17g', x) end
redis.call('HSET', key, 'tat', n(tat), 'step', n(step), 'steptat', n(tat), 'budget', n(budget))
redis.call('PEXPIRE', key, ARGV[12])
local law, by = '', ''
if committed == 0 and known ~= version then
  local g = redis.call('HMGET', key, 'law', 'by')
  law, by = g[1] or '', g[2] or ''
end
return {n(now), version, committed, n(first), n(interval), booked, n(hold), n(pace), n(budget),
  law, by}
"""

#: An event for the fleet's law: the transition and its arguments (times on the fleet's clock),
#: exactly the calls ``FlowControl`` makes on its own law.
_Event = tuple[Callable[..., None], tuple[Any, ...]]


@attrs.frozen(kw_only=True)
class _Proposal:
    """A new version of the fleet's law: the snapshot, the pace and hold it gives now, and how
    many of the pending events it holds.
    """

    id: str
    base: int
    text: str
    pace: float
    hold: float
    events: int
    law: Law


@attrs.frozen(kw_only=True)
class _Reply:
    """One call's answer, times on the fleet's (Redis's) clock."""

    now: float
    version: int
    committed: bool
    first: float
    interval: float
    booked: int
    hold: float
    pace: float
    budget: float
    law: str
    by: str

    @classmethod
    def parse(cls, raw: list[Any]) -> _Reply:
        def text(value: Any) -> str:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

        now, version, committed, first, interval, booked, hold, pace, budget, law, by = raw
        return cls(
            now=float(now), version=int(version), committed=bool(int(committed)),
            first=float(first), interval=float(interval), booked=int(booked),
            hold=float(hold), pace=float(pace), budget=float(budget), law=text(law), by=text(by),
        )  # fmt: skip


class _FleetLaw:
    """This process's view of the fleet's law: the last version it saw in Redis, the events
    it has not committed yet, and its own copy of the law with them applied (what the law
    decides once they are committed). No I/O: the booker carries proposals and replies.
    """

    def __init__(self, make_law: Callable[[float], Law]) -> None:
        self.version = 0  # the version last seen (0: nothing stored yet)
        self._text = ""  # its snapshot ("": none)
        self._make_law = make_law
        self.events: list[_Event] = []
        # that version with the first `_applied` events applied (None: restore on demand)
        self._law: Law | None = None
        self._applied = 0
        self._urgent = 0  # the events up to here hold a refusal or a hold: propose at once
        self._id = secrets.token_hex(4)
        self._seq = 0
        self._doubt: tuple[str, int] | None = None  # a proposal whose call failed: id, events
        self._proposed_at = -math.inf
        self.cuts = 0  # the law's cuts as last seen (a ticket's epoch)
        self.proposals = 0
        self.conflicts = 0
        self.bad_snapshots = 0

    def record(self, fn: Callable[..., None], *args: Any, urgent: bool = False) -> None:
        self.events.append((fn, args))
        if urgent:
            self._urgent = len(self.events)

    @property
    def urgent(self) -> bool:
        return self._urgent > 0

    def due(self, now: float, at: float, pace: float, hold: float) -> bool:
        """Whether the next call should propose: a refusal or a hold to tell, the law's pace
        or hold (with this process's events) moved from the stored ``pace`` and ``hold``, or
        events waiting for ``_PROPOSE_EVERY``. ``now``: the fleet's clock; ``at``: ours.
        """
        if not self.events:
            return False
        if self._urgent > 0 or at - self._proposed_at >= _PROPOSE_EVERY:
            return True
        law = self._current(now)
        if law.judging:
            return True  # a first contact: the fleet's answers of a round trip judge it
        if at - self._proposed_at < _PROPOSE_SOONEST:
            return False
        wait = law.wait_for_hold(now)
        new_hold = now + wait if wait > 0 else 0.0
        new_pace = law.pace(now) or 0.0
        if (new_hold > now or hold > now) and abs(new_hold - hold) > 0.001:
            return True
        return abs(new_pace - pace) > _PACE_MOVED * max(pace, new_pace)

    def propose(self, now: float, at: float) -> _Proposal:
        """The law seen with the pending events applied: its snapshot, and the pace and hold
        it gives at ``now`` (the fleet's clock). ``at``: this process's clock.
        """
        law = self._current(now)
        self._law = None  # proposed as it is: if it is not committed, restore the version seen
        wait = law.wait_for_hold(now)  # (first: it may count a window's reset)
        pace = law.pace(now)
        self._seq += 1
        self._proposed_at = at
        self.proposals += 1
        return _Proposal(
            id=f"{self._id}:{self._seq}",
            base=self.version,
            text=json.dumps(law.snapshot(), separators=(",", ":")),
            pace=pace or 0.0,
            hold=now + wait if wait > 0 else 0.0,
            events=len(self.events),
            law=law,
        )

    def committed(self, proposal: _Proposal, version: int) -> None:
        """The proposal is the fleet's law now: its events are done."""
        self.version, self._text = version, proposal.text
        self._law, self._applied = proposal.law, proposal.events
        self.cuts = proposal.law.cuts
        self._drop(proposal.events)

    def seen(self, reply: _Reply) -> None:
        """A reply that did not commit: a newer version (if any) replaces the one seen."""
        if self._doubt is not None:
            doubt, self._doubt = self._doubt, None
            if reply.by == doubt[0]:
                self._drop(doubt[1])  # the call that failed did commit them
        if not reply.committed and reply.version != self.version:
            self.version, self._text, self._law = reply.version, reply.law, None

    def conflict(self) -> None:
        self.conflicts += 1

    def lost(self, proposal: _Proposal) -> None:
        """The call carrying ``proposal`` failed: it may or may not have been committed."""
        self._doubt = (proposal.id, proposal.events)

    def _drop(self, count: int) -> None:
        del self.events[:count]
        self._urgent = max(0, self._urgent - count)
        self._applied = max(0, self._applied - count)

    def _current(self, now: float) -> Law:
        """The version seen with every pending event applied."""
        law = self._law
        if law is None:
            law, self._applied = self._restore(now), 0
        events = self.events
        try:
            for fn, args in events[self._applied :]:
                fn(law, *args)
        except Exception:
            if not self._text:
                raise
            self._bad_snapshot()  # stored data that restores but does not work: start afresh
            self._text = ""
            law = self._restore(now)
            for fn, args in events:
                fn(law, *args)
        self._law, self._applied = law, len(events)
        return law

    def _restore(self, now: float) -> Law:
        if self._text:
            try:
                law = Law.restore(json.loads(self._text))
            except ValueError:
                self._bad_snapshot()
            else:
                self.cuts = law.cuts
                return law
        return self._make_law(min([now, *(args[0] for _, args in self.events[:1])]))

    def _bad_snapshot(self) -> None:
        self.bad_snapshots += 1
        if self.bad_snapshots == 1:
            logger.warning(
                "the fleet's law stored in Redis is not one this version reads: starting afresh"
            )


class _Waiter:
    """A request of this process waiting for a slot in the fleet's schedule."""

    __slots__ = ("deadline", "future", "max_wait", "skipped")

    def __init__(
        self,
        future: asyncio.Future[tuple[float, bool] | None],
        deadline: float | None,
        max_wait: float | None,
    ) -> None:
        self.future = future
        self.deadline = deadline
        self.max_wait = max_wait
        self.skipped = False  # a call booked none for it: the pace holds it back


class RedisFlowControl:
    """A flow control whose law (pace, pauses, quota headers) and retry budget are shared
    through Redis by every client of the same key and base URL (see the module docstring).
    Arguments:

    - ``url``: a Redis URL (``redis://host:6379/0``, ``rediss://`` for TLS), or
    - ``client``: an existing ``redis.asyncio.Redis`` (used as is, never closed);
    - ``namespace``: a prefix of the keys, to keep several fleets apart in one Redis;
    - ``max_concurrency``: requests in flight from this process (the local bound);
    - ``timeout``: seconds for one Redis operation before falling back (default 0.25);
    - ``ttl``: seconds every key lives after its last use (default 600);
    - ``retry_budget``: the fleet's retry budget in tokens;
    - ``probe``: how fast a binding pace first creeps up, as a share of itself per second
      (the law's, ``FlowControl``'s default).

    It works in the event loop it is first used in (a ``redis.asyncio`` connection belongs to
    one loop); a process with several loops should give each its own client and flow.
    ``redis_calls``, ``proposals`` and ``conflicts`` count this process's calls, proposed
    versions of the law and proposals that lost a compare-and-set.
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
        probe: float = PROBE,
    ) -> None:
        check((url is None) != (client is None), "give a Redis url or a client, not both")
        check(isinstance(namespace, str) and namespace != "", "namespace must be a non-empty str")
        check(timeout > 0, f"timeout must be > 0: {timeout!r}")
        check(ttl >= 1, f"ttl must be at least 1 s: {ttl!r}")
        self._local = FlowControl(
            max_concurrency=max_concurrency, retry_budget=retry_budget, probe=probe
        )
        self._own_client = client is None
        if client is None:
            assert url is not None
            client = _redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        self._redis = client
        self._script = client.register_script(_STATE)
        self._namespace = namespace
        self._keys: list[str] | None = None
        self._ttl_ms = int(ttl * 1000)
        self._capacity = float(retry_budget)

        def make_law(now: float) -> Law:
            return Law(max_concurrency=max_concurrency, min_rate=MIN_RATE, probe=probe, now=now)

        self._fleet = _FleetLaw(make_law)
        self._offset: float | None = None  # the fleet's clock minus time.monotonic()
        self._rtt = math.inf  # the round trip the offset was measured over ...
        self._rtt_at = -math.inf  # ... and when
        self._spent = 0.0  # retry budget spent since the last call
        self._refunds = 0.0  # ... and given back
        self._budget = self._capacity
        self._rate: float | None = None
        self._stored = (0.0, 0.0)  # the pace and hold stored, as last read
        self._latency = 0.0
        self._waiters: deque[_Waiter] = deque()
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

    @property
    def proposals(self) -> int:
        """Versions of the fleet's law this process proposed."""
        return self._fleet.proposals

    @property
    def conflicts(self) -> int:
        """Proposals that found the law changed by another process (and were made again)."""
        return self._fleet.conflicts

    def bind(self, identity: str) -> None:
        """Called by the client with a fingerprint of its base URL and key: the namespace of
        the shared state. The key itself is never seen here.
        """
        self._keys = [f"{self._namespace}:{{{identity}}}:law"]

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
        Redis is unavailable). Raises ``RateLimitError`` at once when the fleet holds every
        request longer than ``max_wait`` (or past ``deadline``).
        """
        if self._keys is None or time.monotonic() < self._down_until:
            return await self._local.admit(deadline, max_wait=max_wait)
        ticket = await self._local.admit(deadline, max_wait=max_wait, paced=False)
        placed = time.monotonic()
        try:
            slot = await self._next_slot(deadline, max_wait)
            if slot is not None:
                send_at = slot[0]
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
        if self._offset is not None:
            at = now + self._offset
            if slot[1]:
                self._fleet.record(Law.bound, at)
            self._fleet.record(Law.sent, at)
        waited = now - placed
        return Ticket(self._fleet.cuts, now, waited_place=ticket.waited_place, waited_slot=waited)

    async def _next_slot(
        self, deadline: float | None, max_wait: float | None
    ) -> tuple[float, bool] | None:
        """Queue for a slot booked by this process's booker: (monotonic send time, whether the
        pace held it back), or ``None`` when Redis just failed.
        """
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), deadline, max_wait)
        self._waiters.append(waiter)
        self._start_booker()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if not waiter.future.done():
                waiter.future.cancel()  # the booker skips it
            if all(w.future.done() for w in self._waiters):
                self._wake.set()  # nobody waits: the booker may stop
            raise

    def _start_booker(self) -> None:
        if self._booker is None:
            self._booker = asyncio.get_running_loop().create_task(self._book())

    async def _book(self) -> None:
        """Book slots for the waiting requests, one Redis call per batch, until none waits
        and nothing urgent is left to tell. Each call books only slots within the next
        ``_HORIZON`` seconds, so a cut of the pace (or a pause) reaches every process within
        that time.
        """
        waiters = self._waiters
        try:
            while True:
                while waiters and waiters[0].future.done():
                    waiters.popleft()
                if not waiters and not self._fleet.urgent:
                    return
                want = sum(not w.future.done() for w in waiters)
                reply = await self._call(want)
                if reply is None:  # fell back: every waiter paces locally
                    while waiters:
                        waiter = waiters.popleft()
                        if not waiter.future.done():
                            waiter.future.set_result(None)
                    return
                assert self._offset is not None
                now = time.monotonic()
                held = reply.hold - self._offset - now
                if held > 0:
                    self._fail_held(now, held)
                send_at, booked = reply.first - self._offset, reply.booked
                while booked > 0 and waiters:
                    waiter = waiters.popleft()
                    if not waiter.future.done():
                        bound = waiter.skipped or reply.first > reply.now
                        waiter.future.set_result((send_at, bound))
                        send_at += reply.interval
                        booked -= 1
                for waiter in waiters:
                    waiter.skipped = True
                # Requests that come meanwhile are booked together by the next call. When
                # the schedule is full (or held), ask again once there is room (each process
                # at its own moment), or as soon as this process has a refusal to tell.
                pause = _SPACING * random.uniform(1.0, 2.0)
                if waiters and held > 0:  # ask as the hold ends
                    pause += held
                elif waiters and reply.booked < want:  # ask once half a horizon is free
                    horizon = max(_HORIZON, self._latency)
                    pause += max(send_at - now - horizon, 0.001)
                    pause += horizon * random.uniform(0.25, 0.75)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
        finally:
            self._booker = None
            if waiters:  # cancelled: nobody books for them any more
                for waiter in waiters:
                    if not waiter.future.done():
                        waiter.future.set_result(None)
                waiters.clear()

    def _fail_held(self, now: float, held: float) -> None:
        """The fleet holds everyone for ``held`` seconds: callers who cannot wait that long
        fail now, saying when to retry (as ``FlowControl`` does).
        """
        for waiter in list(self._waiters):
            too_long = waiter.max_wait is not None and held > waiter.max_wait + 1e-6
            past = waiter.deadline is not None and now + held > waiter.deadline + 1e-6
            if (too_long or past) and not waiter.future.done():
                self._waiters.remove(waiter)
                why = "longer than max_retry_after" if too_long else "past the call's deadline"
                waiter.future.set_exception(
                    RateLimitError(
                        f"the fleet holds every request {held:.1f} s, {why}",
                        status_code=429,
                        detail=f"every request waits {held:.1f} s (shared)",
                        retry_after=held,
                    )
                )

    async def _call(self, want: int) -> _Reply | None:
        """One call booking up to ``want`` slots and, when due, proposing the fleet's law
        with this process's events (again at once, on the newer version, after a conflict):
        the booking's reply, or ``None`` after falling back.
        """
        assert self._keys is not None
        fleet = self._fleet
        proposal = None
        at = time.monotonic()
        stored = self._stored
        if self._offset is not None and fleet.due(at + self._offset, at, *stored):
            proposal = fleet.propose(at + self._offset, at)
        spent, refunds = self._spent, self._refunds
        self._spent = self._refunds = 0.0
        booking: _Reply | None = None
        for _ in range(_CAS_TRIES):
            args = [
                proposal.base if proposal is not None else -1,
                proposal.text if proposal is not None else "",
                proposal.pace if proposal is not None else 0.0,
                proposal.hold if proposal is not None else 0.0,
                proposal.id if proposal is not None else "",
                fleet.version,
                want if booking is None else 0,
                max(_HORIZON, self._latency),
                spent,
                refunds,
                self._capacity,
                self._ttl_ms,
            ]
            try:
                self.redis_calls += 1
                before = time.monotonic()
                raw = await self._script(keys=self._keys, args=args)
                after = time.monotonic()
            except (_RedisError, OSError, TimeoutError) as exc:
                if proposal is not None:
                    fleet.lost(proposal)
                self._spent += spent
                self._refunds += refunds
                self._fall_back(exc)
                return None
            spent = refunds = 0.0
            reply = _Reply.parse(raw)
            self._clock(before, after, reply.now)
            booking = booking or reply
            if proposal is not None and reply.committed:
                fleet.committed(proposal, reply.version)
                booking = attrs.evolve(booking, pace=reply.pace, hold=reply.hold)
                break
            fleet.seen(reply)
            if proposal is None:
                break
            fleet.conflict()  # another process changed the law since: apply the events anew
            at, offset = time.monotonic(), self._offset
            assert offset is not None
            proposal = fleet.propose(at + offset, at)
        assert booking is not None
        self._stored = (booking.pace, booking.hold)
        self._budget = booking.budget
        rate = booking.pace or None
        if self._events.active and _pace_moved(self._rate, rate):  # event: PaceChanged (shared)
            cap = self._local.state().concurrency
            self._events.emit(PaceChanged("shared", rate, self._rate, "shared", cap))
        self._rate = rate
        if self._warned:
            self._warned = False
            logger.info("Redis answers again: this process rejoined the shared flow control")
        return booking

    def _clock(self, before: float, after: float, redis_now: float) -> None:
        """The fleet's clock is Redis's: keep its offset to ours from the fastest recent call
        (Redis read its clock within that round trip).
        """
        rtt = after - before
        if rtt <= self._rtt or after - self._rtt_at > _CLOCK_FRESH or self._offset is None:
            self._offset = redis_now - (before + after) / 2
            self._rtt, self._rtt_at = rtt, after

    def _fall_back(self, exc: BaseException) -> None:
        self.fallbacks += 1
        self._down_until = time.monotonic() + _RETRY_REDIS
        if not self._warned:
            self._warned = True
            logger.warning(
                "Redis is unavailable (%s): pacing this process on its own until it answers",
                type(exc).__name__,
            )

    # -- feedback ----------------------------------------------------------------------------

    def _fleet_time(self, ticket: Ticket) -> tuple[float, float] | None:
        """(now, the ticket's send time) on the fleet's clock, or ``None`` while this process
        is not part of the fleet (Redis unavailable).
        """
        offset = self._offset
        if offset is None or self._warned or self._keys is None:
            return None
        return time.monotonic() + offset, ticket.admitted_at + offset

    def on_answer(self, ticket: Ticket, limits: RateLimits) -> None:
        """Tell the fleet's law (with the next proposal); free the place."""
        times = self._fleet_time(ticket)
        if times is not None:
            now, sent_at = times
            self._refunds += BUDGET_REFUND
            self._latency += 0.1 * (now - sent_at - self._latency)
            self._fleet.record(Law.answered, now, sent_at)
            if limits.remaining is not None:
                in_flight = self._local.state().in_flight - 1
                self._fleet.record(Law.read_limits, now, limits, in_flight)
        self._local.on_answer(ticket, limits)

    def on_throttle(
        self, ticket: Ticket, retry_after: float | None, limits: RateLimits, *, pause: bool = False
    ) -> None:
        """Tell the fleet's law at once (the booker calls now); free the place."""
        times = self._fleet_time(ticket)
        if times is not None:
            now, sent_at = times
            fleet = self._fleet
            if limits.remaining is not None:
                in_flight = self._local.state().in_flight - 1
                fleet.record(Law.read_limits, now, limits, in_flight, True)  # (refused)
            if pause and retry_after is not None:
                fleet.record(Law.hold_all, now, retry_after)
            fleet.record(Law.refused, now, sent_at, Refusal.THROTTLE, retry_after, urgent=True)
            self._wake.set()
            with contextlib.suppress(RuntimeError):  # (no running loop: the next admission)
                self._start_booker()
        self._local.on_throttle(ticket, retry_after, limits, pause=pause)

    def on_failure(self, ticket: Ticket, failure: Failure) -> None:
        """Free the place; an overload cuts this process's concurrency and tells the fleet."""
        if failure is Failure.OVERLOAD:
            times = self._fleet_time(ticket)
            if times is not None:
                self._fleet.record(Law.refused, *times, Refusal.BUSY, None)
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
        if self._budget - self._spent < cost:
            return False
        self._spent += cost
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
