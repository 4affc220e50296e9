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

The table is written as Markdown with a heat map (PNG, matplotlib when installed) of
wall/(N/R) and of the refused share per cell. ``tests/test_simulator.py`` runs a subset of the
cells and asserts the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
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
        """Refused share of the requests that arrived after ``start``."""
        after = [s for t, s in self.log if t >= start]
        return sum(1 for s in after if s != 200) / len(after) if after else 0.0

    @property
    def first_burst_end(self) -> float:
        """The end of the first burst (or window): requests sent before the client could know
        of the first refusal, or the whole first window.
        """
        first = next((t for t, s in self.log if s != 200), math.inf)
        if self.cell.limit.kind in ("fixed", "sliding"):
            return max(first, self.cell.limit.window)
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

    async def handle(request: Request) -> Response:
        await asyncio.sleep(half)
        response = server.answer(loop.time())
        await asyncio.sleep(half)
        return response

    make_flow = flow_factory or FlowControl
    clients = [
        DatasetsClient(
            api_key="sim-key",
            transport=MockTransport(handle),
            flow=make_flow(clock=loop.time),
            retry=RetryPolicy(deadline=cell.deadline),
        )
        for _ in range(cell.clients)
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
    )


def run_cell(cell: Cell, flow_factory: Callable[..., Any] | None = None) -> Result:
    """Run one cell on a fresh virtual-time loop (``flow_factory(clock=...)`` makes each
    client's flow control; the package's ``FlowControl`` by default).
    """
    return run_virtual(lambda: _run_cell(cell, flow_factory))  # type: ignore[no-any-return]


def run_elsewhere(revision: str, names: list[str]) -> dict[str, str]:
    """Run the named cells against the package as it was at git ``revision`` (a temporary
    worktree imported in a subprocess), so two versions are compared side by side in one
    table. Returns each cell's table row.
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
                [sys.executable, __file__, "--rows", "--exact", "--only", "\t".join(names)],
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


def verdict(result: Result, base: Result | None = None) -> tuple[bool, str]:
    """Whether a cell meets its target (issue 16's), and the figure it is judged by."""
    cell, lim = result.cell, result.cell.limit
    refused = result.refused_share
    if cell.target == "limited":
        slack = lim.window if lim.kind in ("fixed", "sliding") else 2.0
        bound = 1.15 * result.ideal + slack
        ok = refused <= 0.05 and result.wall <= bound and result.failed == 0
        return ok, f"wall {result.wall:.1f} <= {bound:.1f}, refused {refused:.1%} <= 5%"
    if cell.target == "headers":
        bound = result.ideal + 2.0
        if lim.kind == "fixed":  # spent as each window opens: the last window need not pass
            bound = max(0.0, math.ceil(cell.updates / (lim.rate * lim.window)) - 1) * lim.window
            bound += 2.0
        ok = refused <= 0.01 and result.wall <= bound and result.failed == 0
        return ok, f"wall {result.wall:.1f} <= {bound:.1f}, refused {refused:.1%} <= 1%"
    if cell.target == "long-wait":
        wait = lim.window
        bound = result.ideal + wait
        ok = result.wall <= bound and result.failed == 0 and refused <= 0.05
        return (
            ok,
            f"wall {result.wall:.1f} <= N/R + {wait:.0f} = {bound:.1f}, refused {refused:.1%}",
        )
    if cell.target == "noise":
        assert base is not None
        longest = cell.noise_retry_after or 0.0
        bound = 1.5 * base.wall + longest
        ok = result.wall <= bound and result.failed == 0
        return ok, f"wall {result.wall:.2f} <= 1.5 x {base.wall:.2f} + {longest:g} = {bound:.2f}"
    if cell.target == "drop":
        at = lim.changes[0][0]
        share = result.refused_from(at + 3.0)
        return share <= 0.05, f"refused from 3 s after the drop {share:.1%} <= 5%"
    if cell.target == "rise":
        at, factor = lim.changes[0]
        new = lim.rate * factor
        reached = next(
            (t for t in range(int(at), int(at) + 30) if result.goodput(t, t + 1) >= 0.8 * new),
            None,
        )
        took = math.inf if reached is None else reached + 1 - at
        return took <= 10, f"80% of the new limit after {took:.0f} s <= 10 s"
    if cell.target == "give-up":
        end = cell.updates / (cell.offered or 1.0)
        good = result.goodput(end / 2, end)
        return good >= 0.75 * lim.rate, f"goodput {good:.1f}/s >= 75% of {lim.rate:g}/s"
    if cell.target == "service":
        p50, p99 = result.latency_quantile(0.5), result.latency_quantile(0.99)
        ok = p50 <= 2 * cell.latency and p99 < 1.5 and result.failed == 0
        return ok, f"p50 {p50 * 1000:.0f} ms <= {2000 * cell.latency:.0f} ms, p99 {p99:.2f} s"
    return True, ""


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


def all_cells() -> list[Cell]:
    return limited_cells() + noise_cells() + change_cells() + shape_cells()


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a representative subset")
    parser.add_argument("--only", default="", help="cells whose name contains one of these")
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    parser.add_argument(
        "--baseline", metavar="REV", help="also run the package as of this git revision"
    )
    parser.add_argument(
        "--exact", action="store_true", help="--only names whole cells, tab-separated"
    )
    parser.add_argument("--rows", action="store_true", help="print the rows only")
    args = parser.parse_args(argv)
    cells = quick_cells() if args.quick else all_cells()
    if args.only and args.exact:
        wanted = set(args.only.split("\t"))
        cells = [c for c in cells if c.name in wanted]
    elif args.only:
        cells = [c for c in cells if any(w in c.name for w in args.only.split(","))]
    started = time.perf_counter()
    rows = []
    met = 0
    for cell in cells:
        result = run_cell(cell)
        base = baseline(cell)
        met += verdict(result, base)[0]
        rows.append(describe(result, base))
        if args.rows or not args.baseline:
            print(rows[-1], flush=True)
    summary = f"{met} of {len(cells)} cells meet their target"
    lines = [*HEADER, *rows, "", summary]
    if args.baseline:
        before = run_elsewhere(args.baseline, [c.name for c in cells])
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
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
