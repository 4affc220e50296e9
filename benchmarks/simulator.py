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
import random
import selectors
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nebius_datasets_async import (  # noqa: E402
    DatasetsClient,
    DatasetsError,
    DatasetUpdate,
    FlowControl,
    Request,
    Response,
    RetryPolicy,
)
from nebius_datasets_async.testing import MockTransport, make_dataset  # noqa: E402

# -- virtual time -------------------------------------------------------------------------------


class _Selector(selectors.BaseSelector):
    """A selector with nothing to select: waiting moves the virtual clock instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("the simulation is stuck: every task waits and no timer is set")
        self._loop.now += max(timeout, 0.0)
        return []

    def get_map(self) -> Any:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: when every task waits, the clock jumps to the next
    timer. ``loop.time()`` is the virtual clock, so ``asyncio.sleep``, ``wait_for`` and the
    client's deadlines all run on it.
    """

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_Selector(self))

    def time(self) -> float:
        return self.now


def run_virtual(main: Callable[[], Any]) -> Any:
    """Run the coroutine function ``main`` on a new virtual-time loop."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


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
    """One scenario: a server, how many updates, in which shape, by how many clients."""

    name: str
    limit: Limit
    updates: int
    shape: str = "bulk"  # "bulk" (patch_all) or "calls" (a task per single call)
    clients: int = 1
    latency: float = 0.02
    noise_429: float = 0.0
    noise_503: float = 0.0
    noise_retry_after: float | None = None
    deadline: float | None = None  # RetryPolicy(deadline=...) of the single calls
    offered: float | None = None  # calls arrive at this rate (calls shape) instead of at once
    seed: int = 0


@attrs.define
class Result:
    cell: Cell
    wall: float
    requests: int
    refused: int
    refused_after: int
    sent_after: int
    succeeded: int
    failed: int
    latencies: list[float]
    cpu: float

    @property
    def ideal(self) -> float:
        """N/R: the least time the limit allows (the latency-bound time when unlimited)."""
        lim = self.cell.limit
        if lim.kind == "none":
            return 0.0
        return self.cell.updates / lim.rate

    @property
    def ratio(self) -> float:
        return self.wall / self.ideal if self.ideal > 0 else math.nan

    @property
    def refused_share(self) -> float:
        """Refused share of the requests sent after the first burst (or window)."""
        return self.refused_after / self.sent_after if self.sent_after else 0.0


async def _run_cell(cell: Cell) -> Result:
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

    clients = [
        DatasetsClient(
            api_key="sim-key",
            transport=MockTransport(handle),
            flow=FlowControl(clock=loop.time),
            retry=RetryPolicy(deadline=cell.deadline),
        )
        for _ in range(cell.clients)
    ]
    share = [
        cell.updates // cell.clients + (i < cell.updates % cell.clients)
        for i in range(cell.clients)
    ]
    latencies: list[float] = []
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
            latencies.append(loop.time() - started)

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
    log = server.log
    refused = sum(1 for _, s in log if s != 200)
    # the first burst (or window): what was sent before the first refusal was answered
    first = next((t for t, s in log if s != 200), math.inf)
    if cell.limit.kind in ("fixed", "sliding"):
        cut = max(first, cell.limit.window)
    else:
        cut = first + cell.latency
    after = [(t, s) for t, s in log if t > cut]
    return Result(
        cell=cell,
        wall=wall,
        requests=len(log),
        refused=refused,
        refused_after=sum(1 for _, s in after if s != 200),
        sent_after=len(after),
        succeeded=succeeded,
        failed=failed,
        latencies=latencies,
        cpu=cpu,
    )


def run_cell(cell: Cell) -> Result:
    """Run one cell on a fresh virtual-time loop."""
    return run_virtual(lambda: _run_cell(cell))  # type: ignore[no-any-return]


# -- the table ----------------------------------------------------------------------------------

RATES = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


def _n_for(rate: float, seconds: float = 60.0, least: int = 40, most: int = 20_000) -> int:
    return int(min(most, max(least, rate * seconds)))


def limited_cells(rates: Iterable[float] = RATES) -> list[Cell]:
    """Token buckets, fixed and sliding windows, with Retry-After absent, 1 s, or the rest of
    the window; with and without quota headers.
    """
    cells = []
    for r in rates:
        n = _n_for(r)
        burst = max(1, min(50, int(r)))
        for ra in (None, 1.0, "rest"):
            label = {None: "no RA", 1.0: "RA 1", "rest": "RA rest"}[ra]  # type: ignore[index]
            cells.append(
                Cell(f"bucket {r}/s {label}", Limit("bucket", r, burst, retry_after=ra), n)
            )
        window = 60.0 if r <= 20 else 10.0
        for kind in ("fixed", "sliding"):
            for ra in (None, "rest"):
                label = "no RA" if ra is None else "RA rest"
                lim = Limit(kind, r, window=window, retry_after=ra)
                cells.append(Cell(f"{kind} {r}/s {label}", lim, max(n, int(2.5 * r * window))))
            lim = Limit(kind, r, window=window, retry_after="rest", headers=True)
            cells.append(Cell(f"{kind} {r}/s headers", lim, max(n, int(2.5 * r * window))))
        cells.append(Cell(f"bucket {r}/s headers", Limit("bucket", r, burst, headers=True), n))
    return cells


def noise_cells() -> list[Cell]:
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
                )
            )
        cells.append(
            Cell(f"random 503 {share:.0%}", Limit("none"), 2000, latency=0.05, noise_503=share)
        )
    return cells


def change_cells() -> list[Cell]:
    return [
        Cell("drop 100->10/s", Limit("bucket", 100, 10, changes=((10.0, 0.1),)), 1200),
        Cell("drop 500->50/s", Limit("bucket", 500, 50, changes=((5.0, 0.1),)), 4000),
        Cell("rise 10->100/s", Limit("bucket", 10, 10, changes=((10.0, 10.0),)), 2100),
        Cell("rise 1->10/s", Limit("bucket", 1, 5, changes=((20.0, 10.0),)), 300),
    ]


def shape_cells() -> list[Cell]:
    cells = []
    for clients in (1, 2, 4, 8):
        for r in (5, 50, 200):
            cells.append(
                Cell(
                    f"{clients} clients {r}/s",
                    Limit("bucket", r, 10),
                    _n_for(r, 30),
                    clients=clients,
                )
            )
    cells.append(Cell("50 calls, 1/s burst 10", Limit("bucket", 1, 10), 50, shape="calls"))
    cells.append(Cell("300 calls, 100/s", Limit("bucket", 100, 10), 300, shape="calls"))
    cells.append(Cell("RA 30 on 1/s", Limit("fixed", 1, window=60, retry_after="rest"), 150))
    return cells


def all_cells() -> list[Cell]:
    return limited_cells() + noise_cells() + change_cells() + shape_cells()


def quick_cells() -> list[Cell]:
    return limited_cells((1, 20, 500)) + noise_cells()[:4] + change_cells()[:1] + shape_cells()[-3:]


def baseline_wall(cell: Cell) -> float:
    """The same cell with no refusals at all (for the random-refusal targets)."""
    clean = attrs.evolve(cell, noise_429=0.0, noise_503=0.0)
    return run_cell(clean).wall


def describe(result: Result, base: float | None = None) -> str:
    c = result.cell
    lat = sorted(result.latencies)
    p50 = lat[len(lat) // 2] if lat else math.nan
    ratio = result.wall / base if base else result.ratio
    return (
        f"| {c.name} | {c.updates} | {result.wall:.1f} | {ratio:.2f} | "
        f"{100 * result.refused / max(result.requests, 1):.1f}% | "
        f"{100 * result.refused_share:.1f}% | "
        f"{result.failed} | {p50:.2f} | {result.cpu:.2f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cells = quick_cells() if args.quick else all_cells()
    if args.only:
        cells = [c for c in cells if any(w in c.name for w in args.only.split(","))]
    lines = [
        "| cell | N | wall s | wall/(N/R) | refused | refused after first | failed | p50 s "
        "| cpu s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for cell in cells:
        result = run_cell(cell)
        base = baseline_wall(cell) if cell.limit.kind == "none" else None
        line = describe(result, base)
        lines.append(line)
        print(line, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
