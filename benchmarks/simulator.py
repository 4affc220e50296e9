"""The regime simulator: the client's real code against server models, on virtual time.

Each cell runs real ``DatasetsClient``s (their ``FlowControl`` and retry loop, unchanged) in an
event loop whose clock only moves when every task waits: a sleep of 30 s costs nothing, so a
run of 600 updates at 1 request/s takes a fraction of a second. The transport is a function
that waits half the latency, asks a server model whether it admits the request now, and waits
the other half. Server models: token bucket, fixed and sliding window (with or without
``x-ratelimit-*`` headers, ``Retry-After`` absent, short, or the rest of the window), random
refusals (429 with or without ``Retry-After``, 503 without), limits that change mid-run, no
limit at all; one to eight clients share one limit, as a bulk run or as many tasks making
single calls.

    .venv/bin/python benchmarks/simulator.py              # the full table (a few minutes)
    .venv/bin/python benchmarks/simulator.py --quick      # a representative subset
    .venv/bin/python benchmarks/simulator.py --only bucket --out /tmp/sim.md
    .venv/bin/python benchmarks/simulator.py --only "bucket 20/s RA 1" --exact \
        --jitter 0.5 --updates 200 --seeds 40 --baseline HEAD~1   # spread over 40 draws
    .venv/bin/python benchmarks/simulator.py --out benchmarks/SIMULATOR.md \
        --svg benchmarks/simulator.svg                    # what RESULTS.md shows

The table is written as Markdown (``--out``) and as a picture (``--svg``, plain SVG text, no
plotting library): heat maps of wall/(N/R) and of the refused share per cell, each figure
coloured by how far it is from its target. ``tests/test_simulator.py`` runs a subset of the
cells and asserts the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import math
import os
import random
import re
import statistics
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
# NEBIUS_SIM_PACKAGE: import the package from another checkout (``--baseline`` uses it)
sys.path.insert(0, os.environ.get("NEBIUS_SIM_PACKAGE", str(ROOT)))

from nebius_datasets_async import (  # noqa: E402
    DatasetsClient,
    DatasetsError,
    DatasetUpdate,
    Failure,
    FlowControl,
    Request,
    Response,
    RetryPolicy,
)
from nebius_datasets_async.testing import (  # noqa: E402
    MockTransport,
    make_dataset,
    run_virtual,
)

# -- server models ------------------------------------------------------------------------------

DEFAULT_CONCURRENCY = FlowControl().max_concurrency
_OK_BODY = json.dumps(make_dataset(0)).encode()
_HEADERS_JSON = {"content-type": "application/json"}


@attrs.define
class Limit:
    """A server's request limit.

    ``kind``: ``"bucket"`` (a token bucket of ``rate``/s holding ``burst``), ``"fixed"`` or
    ``"sliding"`` (``rate * window`` requests per ``window`` seconds), or ``"none"``.
    ``retry_after``: what a refusal says: ``None`` (no header), a number of seconds, or
    ``"rest"`` (the seconds until a request would be admitted again, rounded up).
    ``headers``: send ``x-ratelimit-limit/remaining/reset-requests``.
    ``changes``: ``(time, factor)`` pairs: from that time on the rate is ``factor`` times the
    first one.
    """

    kind: str = "bucket"
    rate: float = 100.0
    burst: int = 10
    window: float = 60.0
    retry_after: float | str | None = 1.0
    headers: bool = False
    changes: tuple[tuple[float, float], ...] = ()


class Server:
    """A server model: the limit, random refusals and latency; counts what it answered."""

    def __init__(
        self,
        limit: Limit,
        *,
        noise_429: float = 0.0,
        noise_503: float = 0.0,
        noise_retry_after: float | None = None,
        latency: float = 0.02,
        seed: int = 0,
    ) -> None:
        self.limit = limit
        self.noise_429 = noise_429
        self.noise_503 = noise_503
        self.noise_retry_after = noise_retry_after
        self.latency = latency
        self._rng = random.Random(seed)
        self._rate = limit.rate
        self._tokens = float(limit.burst)
        self._refilled = 0.0
        self._window_start = 0.0
        self._window_count = 0
        self._times: deque[float] = deque()
        #: (arrival time, status) of every request
        self.log: list[tuple[float, int]] = []

    def rate_at(self, now: float) -> float:
        rate = self.limit.rate
        for at, factor in self.limit.changes:
            if now >= at:
                rate = self.limit.rate * factor
        return rate

    def answer(self, now: float) -> Response:
        status, headers = self._decide(now)
        self.log.append((now, status))
        if status == 200:
            return Response(200, {**_HEADERS_JSON, **headers}, _OK_BODY)
        detail = b'{"detail":"Rate limit exceeded"}' if status == 429 else b"Service Unavailable"
        return Response(status, headers, detail)

    def _decide(self, now: float) -> tuple[int, dict[str, str]]:
        admitted, wait, headers = self._admit(now)
        if not admitted:
            ra = self.limit.retry_after
            out = dict(headers)
            if ra == "rest":
                out["retry-after"] = str(max(1, math.ceil(wait - 1e-9)))
            elif ra is not None:
                out["retry-after"] = _number(float(ra))
            return 429, out
        x = self._rng.random()
        if x < self.noise_429:
            out = dict(headers)
            if self.noise_retry_after is not None:
                out["retry-after"] = _number(self.noise_retry_after)
            return 429, out
        if x < self.noise_429 + self.noise_503:
            return 503, {"content-type": "text/plain; charset=utf-8"}
        return 200, headers

    def _admit(self, now: float) -> tuple[bool, float, dict[str, str]]:
        lim = self.limit
        rate = self.rate_at(now)
        if lim.kind == "none":
            return True, 0.0, {}
        if lim.kind == "bucket":
            burst = float(lim.burst)
            self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            ok = self._tokens >= 1.0
            if ok:
                self._tokens -= 1.0
            wait = (1.0 - self._tokens) / rate if not ok else 0.0
            reset = (burst - self._tokens) / rate
            return ok, wait, self._headers(lim.burst, int(self._tokens), reset)
        quota = max(1, round(rate * lim.window))
        if lim.kind == "fixed":
            if now - self._window_start >= lim.window:
                self._window_start += lim.window * ((now - self._window_start) // lim.window)
                self._window_count = 0
            ok = self._window_count < quota
            self._window_count += ok
            reset = self._window_start + lim.window - now
            return ok, reset, self._headers(quota, quota - self._window_count, reset)
        times = self._times
        while times and times[0] <= now - lim.window:
            times.popleft()
        ok = len(times) < quota
        if ok:
            times.append(now)
        wait = times[0] + lim.window - now if times else 0.0
        reset = times[-1] + lim.window - now if times else 0.0
        return ok, wait, self._headers(quota, quota - len(times), reset)

    def _headers(self, limit: int, remaining: int, reset: float) -> dict[str, str]:
        if not self.limit.headers:
            return {}
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(max(remaining, 0)),
            "x-ratelimit-reset-requests": f"{max(reset, 0.0):.3f}s",
        }


def _number(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


# -- a cell -------------------------------------------------------------------------------------


@attrs.define
class Cell:
    """One scenario: a server, how many updates, in which shape, by how many clients, and which
    target it is judged by (``target``: see ``verdict``).
    """

    name: str
    limit: Limit
    updates: int
    shape: str = "bulk"  # "bulk" (patch_all) or "calls" (a task per single call)
    clients: int = 1
    latency: float = 0.02
    noise_429: float = 0.0
    noise_503: float = 0.0
    noise_retry_after: float | None = None
    deadline: float | None = None  # RetryPolicy(deadline=...) of every call
    offered: float | None = None  # calls arrive at this rate (calls shape) instead of at once
    target: str = "limited"
    seed: int = 0
    #: each half of a round trip varies at random by up to this share of itself either way
    #: (as on real sockets, where a burst's answers come back spread, not all at one instant)
    jitter: float = 0.0


@attrs.define
class Result:
    cell: Cell
    wall: float
    #: (arrival time at the server, status) of every request
    log: list[tuple[float, int]]
    succeeded: int
    failed: int
    #: (start, latency) of every successful single call
    calls: list[tuple[float, float]]
    cpu: float
    #: When a request sent the moment the client learnt of the first refusal arrived, on the
    #: log's clock (``None``: one latency after the first refusal; on virtual time without
    #: jitter the answer takes exactly the latency, a real round trip takes longer).
    first_known: float | None = None
    #: The log's indexes of requests admitted before their client learnt of any refusal (in the
    #: first burst even if they arrive the instant the first refusal is known).
    unaware: frozenset[int] = frozenset()

    @property
    def requests(self) -> int:
        return len(self.log)

    @property
    def refused(self) -> int:
        return sum(1 for _, s in self.log if s != 200)

    @property
    def ideal(self) -> float:
        """N/R: the least time the limit allows, following its changes (0 when unlimited)."""
        lim = self.cell.limit
        if lim.kind == "none":
            return 0.0
        left, t = float(self.cell.updates), 0.0
        points = [*sorted(lim.changes), (math.inf, 0.0)]
        rate = lim.rate
        for at, factor in points:
            if left <= rate * (at - t):
                return t + left / rate
            left -= rate * (at - t)
            t, rate = at, lim.rate * factor
        return t

    @property
    def ratio(self) -> float:
        return self.wall / self.ideal if self.ideal > 0 else math.nan

    def refused_from(self, start: float) -> float:
        """Refused share of the requests that arrived after ``start`` (at ``start`` itself,
        those their client sent knowing of a refusal: the others left with the first burst).
        """
        after = [
            s
            for i, (t, s) in enumerate(self.log)
            if t > start + 1e-9 or (t >= start - 1e-9 and i not in self.unaware)
        ]
        return sum(1 for s in after if s != 200) / len(after) if after else 0.0

    @property
    def first_burst_end(self) -> float:
        """The end of the first burst (or window): requests sent before the client could know
        of the first refusal, or the whole first window.
        """
        first = next((t for t, s in self.log if s != 200), math.inf)
        if self.cell.limit.kind in ("fixed", "sliding"):
            return max(first, self.cell.limit.window)
        if self.first_known is not None:
            return self.first_known
        return first + self.cell.latency

    @property
    def refused_share(self) -> float:
        """Refused share of the requests sent after the first burst (or window)."""
        return self.refused_from(self.first_burst_end)

    def goodput(self, start: float, end: float) -> float:
        """Successes per second that arrived between ``start`` and ``end``."""
        n = sum(1 for t, s in self.log if start <= t < end and s == 200)
        return n / (end - start) if end > start else 0.0

    def latency_quantile(self, q: float) -> float:
        lat = sorted(latency for _, latency in self.calls)
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else math.nan


async def _run_cell(cell: Cell, flow_factory: Callable[..., Any] | None = None) -> Result:
    loop = asyncio.get_running_loop()
    random.seed(cell.seed)
    server = Server(
        cell.limit,
        noise_429=cell.noise_429,
        noise_503=cell.noise_503,
        noise_retry_after=cell.noise_retry_after,
        latency=cell.latency,
        seed=cell.seed,
    )
    half = cell.latency / 2
    lags = random.Random(cell.seed + 1)

    def lag() -> float:
        return half * (1.0 + cell.jitter * (2.0 * lags.random() - 1.0)) if cell.jitter else half

    known: list[float] = []  # when a client first learnt of a refusal
    # the log's indexes of requests their client admitted before it learnt of any refusal:
    # the first burst, even if they arrive with the first one known (the same instant)
    unaware: set[int] = set()

    def handler(flow: Any) -> Callable[[Request], Awaitable[Response]]:
        sent = 0
        admitted: int | None = None  # admissions before the client learnt of a refusal

        def learns(method: Callable[..., None], *kinds: Failure) -> Callable[..., None]:
            def learn(ticket: Any, *args: Any, **kwargs: Any) -> None:
                nonlocal admitted
                refusal = not kinds or args[0] in kinds  # (a failure: a busy server's 503 only)
                if refusal and admitted is None:
                    admitted = flow.state().requests
                    known.append(loop.time())
                method(ticket, *args, **kwargs)

            return learn

        flow.on_throttle = learns(flow.on_throttle)
        flow.on_failure = learns(flow.on_failure, Failure.OVERLOAD)

        async def handle(request: Request) -> Response:
            nonlocal sent
            sent += 1  # (requests leave in the order they were admitted)
            knew = admitted is not None and sent > admitted
            await asyncio.sleep(lag())
            if not knew:
                unaware.add(len(server.log))
            response = server.answer(loop.time())
            await asyncio.sleep(lag())
            return response

        return handle

    make_flow = flow_factory or FlowControl
    flows = [make_flow(clock=loop.time) for _ in range(cell.clients)]
    clients = [
        DatasetsClient(
            api_key="sim-key",
            transport=MockTransport(handler(flow)),
            flow=flow,
            retry=RetryPolicy(deadline=cell.deadline),
        )
        for flow in flows
    ]
    share = [
        cell.updates // cell.clients + (i < cell.updates % cell.clients)
        for i in range(cell.clients)
    ]
    calls: list[tuple[float, float]] = []
    failed = 0
    succeeded = 0

    async def one_call(client: DatasetsClient, i: int, at: float) -> None:
        nonlocal failed, succeeded
        if at > 0:
            await asyncio.sleep(at)
        started = loop.time()
        try:
            await client.rename(f"ds-{i}", f"name-{i}")
        except DatasetsError:
            failed += 1
        else:
            succeeded += 1
            calls.append((started, loop.time() - started))

    async def bulk(client: DatasetsClient, offset: int, n: int) -> None:
        nonlocal failed, succeeded
        updates = (DatasetUpdate(dataset_id=f"ds-{offset + i}", name="x") for i in range(n))
        report = await client.patch_all(updates)
        failed += report.failed + report.skipped
        succeeded += report.succeeded

    cpu = time.process_time()
    start = loop.time()
    jobs = []
    offset = 0
    for client, n in zip(clients, share, strict=True):
        if cell.shape == "bulk":
            jobs.append(bulk(client, offset, n))
        else:
            gap = 0.0 if cell.offered is None else 1.0 / cell.offered
            jobs.extend(one_call(client, offset + i, (offset + i) * gap) for i in range(n))
        offset += n
    await asyncio.gather(*jobs)
    wall = loop.time() - start
    cpu = time.process_time() - cpu
    for client in clients:
        await client.aclose()
    return Result(
        cell=cell,
        wall=wall,
        log=server.log,
        succeeded=succeeded,
        failed=failed,
        calls=calls,
        cpu=cpu,
        # (a request sent then arrived half a latency later, as socket_sample.py counts it)
        first_known=min(known) + half if known else None,
        unaware=frozenset(unaware),
    )


def run_cell(cell: Cell, flow_factory: Callable[..., Any] | None = None) -> Result:
    """Run one cell on a fresh virtual-time loop (``flow_factory(clock=...)`` makes each
    client's flow control; the package's ``FlowControl`` by default).
    """
    return run_virtual(lambda: _run_cell(cell, flow_factory))  # type: ignore[no-any-return]


def run_elsewhere(revision: str, names: list[str], flags: Iterable[str] = ()) -> dict[str, str]:
    """Run the named cells against the package as it was at git ``revision`` (a temporary
    worktree imported in a subprocess), so two versions are compared side by side in one
    table; ``flags``: how to vary them (``--latency``, ``--jitter``, ``--updates``,
    ``--seeds``), as on this side. Returns each cell's table row.
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sim-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(tree), revision],
            cwd=ROOT,
            check=True,
        )
        try:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--rows",
                    "--exact",
                    "--only",
                    "\t".join(names),
                    *flags,
                ],
                env={**os.environ, "NEBIUS_SIM_PACKAGE": str(tree)},
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    rows = {}
    for line in out.splitlines():
        if line.startswith("| "):
            rows[line.split(" | ", 2)[0][2:]] = line
    return rows


# -- targets ------------------------------------------------------------------------------------


@attrs.frozen
class Check:
    """One figure a target bounds: ``value`` at most ``bound`` (below it, if ``strict``; at
    least ``bound``, if ``least``). ``figure`` names it (``"wall"``, ``"refused"``, ``"failed"``
    or what else the target judges); ``shown`` is the value as the picture prints it.
    """

    figure: str
    value: float
    bound: float
    shown: str = ""
    least: bool = False
    strict: bool = False

    @property
    def ok(self) -> bool:
        if self.least:
            return self.value >= self.bound
        return self.value < self.bound if self.strict else self.value <= self.bound

    @property
    def excess(self) -> float:
        """How far from the target: the value over its bound (the bound over the value, if
        ``least``); at most 1 when met (barring a strict bound met exactly).
        """
        num, den = (self.bound, self.value) if self.least else (self.value, self.bound)
        if den <= 0:
            return 0.0 if num <= 0 else math.inf
        return num / den


def judge(result: Result, base: Result | None = None) -> tuple[list[Check], str]:
    """The figures a cell's target (issue 16's) bounds, and the line that says how they did."""
    cell, lim = result.cell, result.cell.limit
    refused = result.refused_share
    failed = Check("failed", result.failed, 0, shown=f"{result.failed} failed")

    def refused_at_most(limit: float) -> Check:
        return Check("refused", refused, limit, shown=f"{refused:.1%}")

    if cell.target == "limited":
        slack = lim.window if lim.kind in ("fixed", "sliding") else 2.0
        bound = 1.15 * result.ideal + slack
        checks = [Check("wall", result.wall, bound), refused_at_most(0.05), failed]
        return checks, f"wall {result.wall:.1f} <= {bound:.1f}, refused {refused:.1%} <= 5%"
    if cell.target == "headers":
        bound = result.ideal + 2.0
        if lim.kind == "fixed":  # spent as each window opens: the last window need not pass
            quota = lim.rate * lim.window
            windows = max(1, math.ceil(cell.updates / quota))
            # (as fast as the default concurrency lets the last window's quota leave)
            last = cell.updates - (windows - 1) * quota
            bound = (windows - 1) * lim.window + 2.0 + last * cell.latency / DEFAULT_CONCURRENCY
        checks = [Check("wall", result.wall, bound), refused_at_most(0.01), failed]
        return checks, f"wall {result.wall:.1f} <= {bound:.1f}, refused {refused:.1%} <= 1%"
    if cell.target == "long-wait":
        wait = lim.window
        bound = result.ideal + wait
        checks = [Check("wall", result.wall, bound), refused_at_most(0.05), failed]
        why = f"wall {result.wall:.1f} <= N/R + {wait:.0f} = {bound:.1f}, refused {refused:.1%}"
        return checks, why
    if cell.target == "noise":
        assert base is not None
        longest = cell.noise_retry_after or 0.0
        bound = 1.5 * base.wall + longest
        why = f"wall {result.wall:.2f} <= 1.5 x {base.wall:.2f} + {longest:g} = {bound:.2f}"
        return [Check("wall", result.wall, bound), failed], why
    if cell.target == "drop":
        at = lim.changes[0][0]
        share = result.refused_from(at + 3.0)
        check = Check("after the drop", share, 0.05, shown=f"{share:.1%} refused")
        return [check], f"refused from 3 s after the drop {share:.1%} <= 5%"
    if cell.target == "rise":
        at, factor = lim.changes[0]
        new = lim.rate * factor
        reached = next(
            (t for t in range(int(at), int(at) + 30) if result.goodput(t, t + 1) >= 0.8 * new),
            None,
        )
        took = math.inf if reached is None else reached + 1 - at
        check = Check("time to 80%", took, 10, shown=f"80% in {took:.0f} s")
        return [check], f"80% of the new limit after {took:.0f} s <= 10 s"
    if cell.target == "give-up":
        end = cell.updates / (cell.offered or 1.0)
        good = result.goodput(end / 2, end)
        check = Check("goodput", good, 0.75 * lim.rate, shown=f"{good:.1f}/s", least=True)
        return [check], f"goodput {good:.1f}/s >= 75% of {lim.rate:g}/s"
    if cell.target == "service":
        p50, p99 = result.latency_quantile(0.5), result.latency_quantile(0.99)
        checks = [
            Check("p50", p50, 2 * cell.latency, shown=f"p50 {p50 * 1000:.0f} ms"),
            Check("p99", p99, 1.5, shown=f"p99 {p99:.2f} s", strict=True),
            failed,
        ]
        why = f"p50 {p50 * 1000:.0f} ms <= {2000 * cell.latency:.0f} ms, p99 {p99:.2f} s"
        return checks, why
    return [], ""


def verdict(result: Result, base: Result | None = None) -> tuple[bool, str]:
    """Whether a cell meets its target (issue 16's), and the figure it is judged by."""
    checks, why = judge(result, base)
    return all(c.ok for c in checks), why


# -- the table ----------------------------------------------------------------------------------

RATES = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


def _n_for(rate: float, seconds: float = 60.0, least: int = 40, most: int = 20_000) -> int:
    return int(min(most, max(least, rate * seconds)))


def limited_cells(rates: Iterable[float] = RATES) -> list[Cell]:
    """Token buckets, fixed and sliding windows (per minute up to 20/s, per 10 s above), with
    ``Retry-After`` absent, 1 s, or the rest of the window; with and without quota headers.
    """
    cells = []
    for r in rates:
        n = _n_for(r)
        burst = max(1, min(50, int(r)))
        for ra, label in ((None, "no RA"), (1.0, "RA 1"), ("rest", "RA rest")):
            lim = Limit("bucket", r, burst, retry_after=ra)
            cells.append(Cell(f"bucket {r}/s {label}", lim, n))
        lim = Limit("bucket", r, burst, retry_after=1.0, headers=True)
        cells.append(Cell(f"bucket {r}/s headers", lim, n, target="headers"))
        window = 60.0 if r <= 20 else 10.0
        for kind in ("fixed", "sliding"):
            n_w = max(n, int(2.5 * r * window))
            for ra, label in ((None, "no RA"), ("rest", "RA rest")):
                lim = Limit(kind, r, window=window, retry_after=ra)
                cells.append(Cell(f"{kind} {r}/s {label}", lim, n_w))
            lim = Limit(kind, r, window=window, retry_after="rest", headers=True)
            cells.append(Cell(f"{kind} {r}/s headers", lim, n_w, target="headers"))
    return cells


def noise_cells() -> list[Cell]:
    """No limit at all; a share of requests refused at random (429 with Retry-After 0, 1 or
    none; 503 without), against the same run with no refusals.
    """
    cells = []
    for share in (0.02, 0.05, 0.1):
        for ra, label in ((0.0, "RA 0"), (1.0, "RA 1"), (None, "no RA")):
            cells.append(
                Cell(
                    f"random 429 {share:.0%} {label}",
                    Limit("none"),
                    2000,
                    latency=0.05,
                    noise_429=share,
                    noise_retry_after=ra,
                    target="noise",
                )
            )
        cells.append(
            Cell(
                f"random 503 {share:.0%}",
                Limit("none"),
                2000,
                latency=0.05,
                noise_503=share,
                target="noise",
            )
        )
    return cells


def change_cells() -> list[Cell]:
    """Limits that drop or rise tenfold mid-run (no headers)."""
    return [
        Cell(
            "drop 100->10/s", Limit("bucket", 100, 10, changes=((10.0, 0.1),)), 1300, target="drop"
        ),
        Cell(
            "drop 500->50/s", Limit("bucket", 500, 50, changes=((5.0, 0.1),)), 4000, target="drop"
        ),
        Cell("drop 20->2/s", Limit("bucket", 20, 10, changes=((20.0, 0.1),)), 480, target="drop"),
        Cell(
            "rise 10->100/s", Limit("bucket", 10, 10, changes=((10.0, 10.0),)), 2100, target="rise"
        ),
        Cell(
            "rise 50->500/s", Limit("bucket", 50, 20, changes=((10.0, 10.0),)), 8000, target="rise"
        ),
        Cell("rise 1->10/s", Limit("bucket", 1, 5, changes=((30.0, 10.0),)), 330, target="rise"),
    ]


def shape_cells() -> list[Cell]:
    """Several clients sharing one limit; single calls; callers that give up; long waits."""
    cells = []
    for clients in (2, 4, 8):
        for r in (5, 50, 200):
            lim = Limit("bucket", r, 10)
            cells.append(Cell(f"{clients} clients {r}/s", lim, _n_for(r), clients=clients))
    cells.append(Cell("50 calls 1/s burst 10", Limit("bucket", 1, 10), 50, shape="calls"))
    cells.append(Cell("300 calls 100/s", Limit("bucket", 100, 10), 300, shape="calls"))
    cells.append(
        Cell(
            "give up: 2x offered, 2 s deadline",
            Limit("bucket", 20, 5),
            600,
            shape="calls",
            offered=40,
            deadline=2.0,
            target="give-up",
        )
    )
    cells.append(
        Cell(
            "service 1% random 429",
            Limit("none"),
            6000,
            shape="calls",
            offered=200,
            latency=0.05,
            noise_429=0.01,
            noise_retry_after=0.0,
            target="service",
        )
    )
    for window in (30.0, 60.0):
        lim = Limit("fixed", 1, window=window, retry_after="rest")
        cells.append(Cell(f"per-minute, RA {window:.0f}", lim, 150, target="long-wait"))
    return cells


def jitter_cells() -> list[Cell]:
    """Token buckets whose round trips vary by up to half either way, as on real sockets (a
    burst's answers come back spread over time, so first contact may see a round trip of
    nothing but refusals): the real-socket sample's buckets, run with four seeds each.
    """
    cells = []
    for r, ra, label in ((5, None, "no RA"), (20, 1.0, "RA 1"), (50, None, "no RA")):
        for seed in range(4):
            lim = Limit("bucket", r, r, retry_after=ra)
            name = f"bucket {r}/s {label}, latency ±50% #{seed}"
            cells.append(Cell(name, lim, _n_for(r), jitter=0.5, seed=seed))
    return cells


def all_cells() -> list[Cell]:
    return limited_cells() + noise_cells() + change_cells() + shape_cells() + jitter_cells()


def quick_cells() -> list[Cell]:
    return limited_cells((1, 20, 500)) + noise_cells()[:4] + change_cells()[:1] + shape_cells()[-5:]


def baseline(cell: Cell, flow_factory: Callable[..., Any] | None = None) -> Result | None:
    """The same cell with no refusals at all (the random-refusal targets compare with it)."""
    if cell.target != "noise":
        return None
    return run_cell(attrs.evolve(cell, noise_429=0.0, noise_503=0.0), flow_factory)


HEADER = (
    "| cell | N | wall s | wall/(N/R) | refused | after first burst | failed | target |",
    "|---|---|---|---|---|---|---|---|",
)


def describe(result: Result, base: Result | None = None) -> str:
    c = result.cell
    ok, why = verdict(result, base)
    ratio = result.wall / base.wall if base is not None else result.ratio
    return (
        f"| {c.name} | {c.updates} | {result.wall:.1f} | {ratio:.2f} | "
        f"{result.refused / max(result.requests, 1):.1%} | {result.refused_share:.1%} | "
        f"{result.failed} | {'met' if ok else '**missed**'}: {why} |"
    )


# -- the picture --------------------------------------------------------------------------------

_GRID_NAME = re.compile(r"^(bucket|fixed|sliding) ([0-9.]+)/s (.+)$")
_MET = ((0xC7, 0xE9, 0xC0), (0x23, 0x8B, 0x45))  # from just met to far below the bound
_MISSED = ((0xFC, 0xBB, 0xA1), (0xA5, 0x0F, 0x15))  # from just over to 4x the bound or more
_UNJUDGED = "#eeeeee"
_FONT = "font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"


def _shade(excess: float | None) -> tuple[str, str]:
    """Fill and text colour for a figure at ``excess`` times its bound (``None``: not judged).
    Met: greens, the deeper the further below the bound (full at half of it); missed: reds,
    the deeper the further over it (full at 4x).
    """
    if excess is None or math.isnan(excess):
        return _UNJUDGED, "#333333"
    if excess <= 1.0:
        t, (lo, hi) = min(1.0, (1.0 - excess) / 0.5), _MET
    else:
        t, (lo, hi) = min(1.0, math.log2(excess) / 2.0), _MISSED
    rgb = (round(a + (b - a) * t) for a, b in zip(lo, hi, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*rgb), ("#ffffff" if t > 0.55 else "#1a1a1a")


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


class _Svg:
    """Hand-written SVG, element by element (no plotting library)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(
        self,
        x: float,
        y: float,
        s: str,
        *,
        size: int = 12,
        anchor: str = "start",
        weight: str = "normal",
        fill: str = "#1a1a1a",
    ) -> None:
        extra = f'x="{x:g}" y="{y:g}"'  # only what differs from the defaults set on <svg>
        extra += f' font-size="{size}"' if size != 12 else ""
        extra += f' text-anchor="{anchor}"' if anchor != "start" else ""
        extra += f' font-weight="{weight}"' if weight != "normal" else ""
        extra += f' fill="{fill}"' if fill != "#1a1a1a" else ""
        self.parts.append(f"<text {extra}>{_esc(s)}</text>")

    def cell(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        value: str,
        excess: float | None,
        *,
        name: str,
        panel: str,
        figure: str,
        title: str,
    ) -> None:
        """One judged figure: a coloured box with its value printed in it, grouped with the
        cell's name (``data-cell``) so a reader (or a test) can find every result.
        """
        fill, ink = _shade(excess)
        missed = excess is not None and excess > 1.0
        self.parts.append(
            f'<g data-cell="{_esc(name)}" data-panel="{_esc(panel)}" data-figure="{figure}">'
            f"<title>{_esc(title)}</title>"
            f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" fill="{fill}" '
            'stroke="#fff"/>'
        )
        self.text(
            x + w / 2,
            y + h / 2 + 4,
            value,
            size=11,
            anchor="middle",
            weight="bold" if missed else "normal",
            fill=ink,
        )
        self.parts.append("</g>")

    def render(self, width: float, height: float) -> str:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" style="{_FONT}" font-size="12" '
            'fill="#1a1a1a">'
            f'<rect width="100%" height="100%" fill="#ffffff"/>'
        )
        return "\n".join([head, *self.parts, "</svg>"]) + "\n"


def _figure(checks: list[Check], figure: str) -> float | None:
    found = [c.excess for c in checks if c.figure == figure]
    return max(found) if found else None


def _ratio_text(result: Result, base: Result | None) -> str:
    ratio = result.wall / base.wall if base is not None else result.ratio
    return "-" if math.isnan(ratio) else f"{ratio:.2f}"


def heatmap_svg(judged: Iterable[tuple[Result, Result | None]]) -> str:
    """The table as a picture: heat maps of wall/(N/R) and of the refused share after the first
    burst, one row per server model and ``Retry-After`` variant, one column per rate; the other
    cells in small panels. Each figure is coloured by how far it is from its bound in the
    cell's target (``judge``) and printed in its box.
    """
    rows: list[tuple[Result, Result | None, list[Check], str, bool]] = []
    for result, base in judged:
        checks, why = judge(result, base)
        rows.append((result, base, checks, why, all(c.ok for c in checks)))
    grid: dict[tuple[str, float], int] = {}
    variants: list[str] = []
    rates: set[float] = set()
    others: dict[str, list[int]] = {}
    for i, (result, *_) in enumerate(rows):
        match = _GRID_NAME.match(result.cell.name)
        if match:
            variant = f"{match[1]} {match[3]}"
            if variant not in variants:
                variants.append(variant)
            rate = float(match[2])
            rates.add(rate)
            grid[variant, rate] = i
        else:
            others.setdefault(_panel_of(result.cell), []).append(i)
    columns = sorted(rates)

    svg = _Svg()
    margin, label_w, cell_w, cell_h = 10.0, 128.0, 56.0, 22.0
    width = max(830.0, 2 * margin + label_w + cell_w * len(columns))
    met = sum(ok for *_, ok in rows)
    svg.text(
        margin,
        22,
        "Regime simulator: the client's real code against server models, on virtual time",
        size=15,
        weight="bold",
    )
    svg.text(
        margin,
        40,
        f"{met} of {len(rows)} cells meet their target. Each box: the figure, "
        "coloured by how far it is from its bound in the cell's target (bold: missed).",
        size=11,
        fill="#444444",
    )
    y = _legend(svg, margin, 52)
    for line in (
        "Bounds (issue 16): wall <= 1.15 N/R + 2 s (windows: + one window) and refused <= 5%; "
        "with quota headers wall <= N/R + 2 s",
        "(fixed windows: until the last window opens + 2 s) and refused <= 1%; no update may "
        "fail. N/R: the least time the limit allows.",
    ):
        y += 14
        svg.text(margin, y, line, size=11, fill="#444444")
    y += 8

    maps = (
        ("wall", "wall / (N/R): time taken over the least the limit allows", _ratio_text),
        (
            "refused",
            "refused share of the requests sent after the first burst (or window)",
            lambda r, b: f"{r.refused_share:.1%}",
        ),
    )
    for figure, title, show in maps:
        if not grid:
            break
        y += 18
        svg.text(margin, y, title, size=13, weight="bold")
        y += 8
        for j, rate in enumerate(columns):
            x = margin + label_w + j * cell_w + cell_w / 2
            svg.text(x, y + 14, f"{_number(rate)}/s", size=11, anchor="middle", fill="#444444")
        y += 20
        for variant in variants:
            svg.text(margin + label_w - 6, y + cell_h / 2 + 4, variant, size=11, anchor="end")
            for j, rate in enumerate(columns):
                x = margin + label_w + j * cell_w
                if (variant, rate) not in grid:
                    continue
                result, base, checks, why, ok = rows[grid[variant, rate]]
                svg.cell(
                    x,
                    y,
                    cell_w,
                    cell_h,
                    show(result, base),
                    _figure(checks, figure),
                    name=result.cell.name,
                    panel=figure,
                    figure=figure,
                    title=f"{result.cell.name}: {'met' if ok else 'missed'}: {why}",
                )
            y += cell_h
        y += 6

    # the other cells: two columns of panels, each panel going to the shorter column
    y += 14
    row_h, col_ws = 20.0, (56.0, 56.0, 136.0)
    sides: list[list[str]] = [[], []]
    lengths = [0, 0]
    for panel, indices in others.items():
        side = 0 if lengths[0] <= lengths[1] else 1
        sides[side].append(panel)
        lengths[side] += len(indices) + 3
    name_ws = [
        max((6.0 * len(rows[i][0].cell.name) + 8 for p in panels for i in others[p]), default=0)
        for panels in sides
    ]
    tops = [y, y]
    for side, panels in enumerate(sides):
        x0 = margin + (name_ws[0] + sum(col_ws) + 12 if side else 0.0)
        name_w = name_ws[side]
        for panel in panels:
            py = tops[side]
            svg.text(x0, py + 12, panel, size=12, weight="bold")
            py += 18
            xs = [x0 + name_w + sum(col_ws[:k]) for k in range(len(col_ws))]
            for x, w, head in zip(xs, col_ws, ("wall/(N/R)", "refused", "target"), strict=True):
                svg.text(x + w / 2, py + 12, head, size=10, anchor="middle", fill="#444444")
            py += 16
            for i in others[panel]:
                result, base, checks, why, ok = rows[i]
                name = result.cell.name
                svg.text(x0 + name_w - 6, py + row_h / 2 + 4, name, size=11, anchor="end")
                own = [c for c in checks if c.figure not in ("wall", "refused", "failed")]
                own += [c for c in checks if c.figure == "failed" and not c.ok]
                target = ", ".join(c.shown for c in own) or ("met" if ok else "missed")
                boxes = (
                    ("wall", _ratio_text(result, base), _figure(checks, "wall")),
                    ("refused", f"{result.refused_share:.1%}", _figure(checks, "refused")),
                    ("target", target, max((c.excess for c in checks), default=None)),
                )
                for x, w, (figure, value, excess) in zip(xs, col_ws, boxes, strict=True):
                    svg.cell(
                        x,
                        py,
                        w,
                        row_h,
                        value,
                        excess,
                        name=name,
                        panel=panel,
                        figure=figure,
                        title=f"{name}: {'met' if ok else 'missed'}: {why}",
                    )
                py += row_h
            tops[side] = py + 14
    width = max(width, margin + name_ws[0] + name_ws[1] + 2 * sum(col_ws) + 12 + margin)
    height = max(tops) + 6
    svg.text(
        margin,
        height + 4,
        "Random refusals: wall over the same run without them. "
        "Opened on its own, a box shows its cell's target on hover; SIMULATOR.md has the table.",
        size=10,
        fill="#666666",
    )
    return svg.render(width, height + 14)


def _panel_of(cell: Cell) -> str:
    if cell.target == "noise":
        return "Random refusals, no limit"
    if cell.target in ("drop", "rise"):
        return "Limits that change tenfold mid-run"
    return "Several clients, single calls, long windows"


def _legend(svg: _Svg, x: float, y: float) -> float:
    """Swatches from far below the bound to far over it; returns the y below the legend."""
    steps = (0.3, 0.6, 0.8, 0.95, 1.1, 1.5, 2.5, 4.0)
    labels = ("<=0.5x", "0.6x", "0.8x", "0.95x", "1.1x", "1.5x", "2.5x", ">=4x")
    svg.text(x, y + 15, "figure / its bound:", size=11, fill="#444444")
    x0, w = x + 112, 52.0
    for k, (excess, label) in enumerate(zip(steps, labels, strict=True)):
        fill, ink = _shade(excess)
        svg.parts.append(
            f'<rect x="{x0 + k * w:.1f}" y="{y:.1f}" width="{w:.1f}" height="20" fill="{fill}"/>'
        )
        svg.text(x0 + k * w + w / 2, y + 14, label, size=10, anchor="middle", fill=ink)
    end = x0 + len(steps) * w
    svg.text(x0 + 2 * w, y + 34, "met", size=10, anchor="middle", fill="#238b45")
    svg.text(x0 + 6 * w, y + 34, "missed", size=10, anchor="middle", fill="#a50f15")
    svg.parts.append(
        f'<rect x="{end + 14:.1f}" y="{y:.1f}" width="{w:.1f}" height="20" fill="{_UNJUDGED}"/>'
    )
    svg.text(end + 14 + w + 6, y + 14, "not judged on this figure", size=10, fill="#444444")
    return y + 38


def seed_summaries(names: list[str], rows: list[str], seeds: int) -> list[str]:
    """For each cell run with ``seeds`` seeds (``rows`` in that order): the median (min-max)
    of wall/(N/R) and of the refused share after the first burst, and how many met the target.
    """

    def spread(values: list[float], fmt: str) -> str:
        ordered = sorted(values)
        mid = statistics.median(ordered)
        return f"{mid:{fmt}} ({ordered[0]:{fmt}}-{ordered[-1]:{fmt}})"

    out = []
    for i, name in enumerate(names):
        cols = [row.split(" | ") for row in rows[i * seeds : (i + 1) * seeds]]
        cols = [c for c in cols if len(c) > 7]
        if not cols:
            out.append(f"- {name}: no rows")
            continue
        ratios = [float(c[3]) for c in cols]
        refused = [float(c[5].rstrip("%")) for c in cols]
        met = sum(c[7].startswith("met:") for c in cols)
        out.append(
            f"- {name}, {len(cols)} seeds: wall/(N/R) {spread(ratios, '.2f')}; refused after the"
            f" first burst {spread(refused, '.1f')}%; met {met} of {len(cols)}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a representative subset")
    parser.add_argument("--only", default="", help="cells whose name contains one of these")
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    parser.add_argument("--svg", type=Path, help="write the heat maps (an SVG picture) here")
    parser.add_argument(
        "--baseline", metavar="REV", help="also run the package as of this git revision"
    )
    parser.add_argument(
        "--exact", action="store_true", help="--only names whole cells, tab-separated"
    )
    parser.add_argument("--rows", action="store_true", help="print the rows only")
    parser.add_argument(
        "--latency",
        type=float,
        metavar="SECONDS",
        help="run every cell (and its baseline) at this round-trip latency instead of its own",
    )
    parser.add_argument(
        "--jitter",
        type=float,
        metavar="SHARE",
        help="vary each half of every round trip at random by up to this share either way",
    )
    parser.add_argument(
        "--updates", type=int, metavar="N", help="run every cell with N updates instead"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        metavar="K",
        help="run every cell K times (seeds 0 to K-1, named '#seed') and summarise each",
    )
    args = parser.parse_args(argv)
    if args.jitter is not None and not 0.0 <= args.jitter < 1.0:
        parser.error("--jitter is a share of each half round trip: at least 0, under 1")
    if any(n is not None and n < 1 for n in (args.seeds, args.updates)):
        parser.error("--seeds and --updates take a positive number")
    cells = quick_cells() if args.quick else all_cells()
    if args.only and args.exact:
        wanted = set(args.only.split("\t"))
        cells = [c for c in cells if c.name in wanted]
    elif args.only:
        cells = [c for c in cells if any(w in c.name for w in args.only.split(","))]
    names = [c.name for c in cells]
    flags: list[str] = []
    if args.latency is not None:
        cells = [attrs.evolve(c, latency=args.latency) for c in cells]
        flags += ["--latency", repr(args.latency)]
    if args.jitter is not None:
        cells = [attrs.evolve(c, jitter=args.jitter) for c in cells]
        flags += ["--jitter", repr(args.jitter)]
    if args.updates is not None:
        cells = [attrs.evolve(c, updates=args.updates) for c in cells]
        flags += ["--updates", str(args.updates)]
    if args.seeds:
        cells = [
            attrs.evolve(c, name=f"{c.name} #{seed}", seed=seed)
            for c in cells
            for seed in range(args.seeds)
        ]
        flags += ["--seeds", str(args.seeds)]
    started = time.perf_counter()
    rows = []
    judged: list[tuple[Result, Result | None]] = []
    met = 0
    for cell in cells:
        result = run_cell(cell)
        base = baseline(cell)
        judged.append((result, base))
        met += verdict(result, base)[0]
        rows.append(describe(result, base))
        if args.rows or not args.baseline:
            print(rows[-1], flush=True)
    summary = f"{met} of {len(cells)} cells meet their target"
    if args.latency is not None:
        summary += f" (every cell at {args.latency * 1000:.0f} ms round trip)"
    lines = [*HEADER, *rows, "", summary]
    before: dict[str, str] = {}
    if args.baseline:
        before = run_elsewhere(args.baseline, names, flags)
        met_before = sum("| met:" in row for row in before.values())
        lines = [
            "| cell | N | wall s | wall/(N/R) | refused | after first burst | failed | target "
            f"| {args.baseline}: wall/(N/R) | refused after first burst | target |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for cell, row in zip(cells, rows, strict=True):
            old = before.get(cell.name, "").split(" | ")
            extra = " | ".join((old[3], old[5], old[7].rstrip(" |"))) if len(old) > 7 else "-"
            lines.append(f"{row} {extra} |")
        lines += ["", summary, f"{args.baseline}: {met_before} of {len(cells)}"]
        print("\n".join(lines))
    elif not args.rows:
        print(summary)
    if args.seeds and not args.rows:
        summaries = seed_summaries(names, rows, args.seeds)
        if args.baseline:
            old = [before.get(c.name, "") for c in cells]
            summaries += ["", f"{args.baseline}:", *seed_summaries(names, old, args.seeds)]
        print("\n".join(["", *summaries]))
        lines += ["", *summaries]
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    if args.svg:
        args.svg.write_text(heatmap_svg(judged))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
