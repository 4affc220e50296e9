"""A sample of the simulator's cells on real sockets, side by side with the simulator.

Each cell runs twice with the same updates, server model, client defaults and shape: once in
the regime simulator (``simulator.run_cell``: virtual time, a server model in the same
process) and once against the package's fake API (``FakeDatasetsServer``, started by
``server.py``) in its own process pinned to CPU 1, the client in its own process pinned to
CPU 0, as ``run.py`` does. The model's latency is a round trip: the fake waits half of it
before it counts a request (``Faults.latency``) and half after (``Faults.answer_delay``), as
the model does. Both sides are judged by the simulator's own figures and targets
(``simulator.Result`` and ``judge``): an observer on the client logs each request's status
at the time it left plus half the latency (when the fake counts it), and when the first
refusal came back (on virtual time that is exactly a latency after the request was counted;
on a socket a round trip takes a few milliseconds more).

    .venv/bin/python benchmarks/socket_sample.py        # 8 cells, 3 socket runs each (~4.5 min)
    .venv/bin/python benchmarks/socket_sample.py --reps 1 --only bucket

Cells the fake cannot express are left out: windows without ``Retry-After`` (the fake's
windows always send the rest of the window) and a token bucket's ``Retry-After`` of the rest
of its wait (``faults_for`` says so). N is smaller than in the simulator's table (each socket
run takes 20 s at most), and the same on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import simulator as sim  # noqa: E402

from nebius_datasets_async import DatasetsClient, DatasetsError, DatasetUpdate, RetryPolicy  # noqa: E402
from nebius_datasets_async.events import Answered, Failed  # noqa: E402
from nebius_datasets_async.testing import fake_dataset_id  # noqa: E402

Limit, Cell = sim.Limit, sim.Cell

#: The sample. Names say where N or a time differs from the simulator's table
#: (``simulator.all_cells()``); the rest of each cell is the table's.
CELLS = [
    # a slow token bucket, no Retry-After: the gentle start and the search for the rate
    Cell("bucket 5/s no RA (N 60)", Limit("bucket", 5, 5, retry_after=None), 60),
    Cell("bucket 50/s no RA (N 500)", Limit("bucket", 50, 50, retry_after=None), 500),
    # Retry-After: 1, waited by the refused request only
    Cell("bucket 20/s RA 1 (N 200)", Limit("bucket", 20, 20, retry_after=1.0), 200),
    # quota headers of a fixed window: two windows' worth
    Cell(
        "fixed 50/s headers (N 1000)",
        Limit("fixed", 50, window=10.0, retry_after="rest", headers=True),
        1000,
        target="headers",
    ),
    # a sliding window without headers (the fake always sends the rest of the window)
    Cell(
        "sliding 50/s RA rest (N 1000)",
        Limit("sliding", 50, window=10.0, retry_after="rest"),
        1000,
    ),
    # no limit, 5% refused at random with Retry-After: 0 (noise, not a limit)
    Cell(
        "random 429 5% RA 0",
        Limit("none"),
        2000,
        latency=0.05,
        noise_429=0.05,
        noise_retry_after=0.0,
        target="noise",
    ),
    # a limit that drops tenfold mid-run, changed in the fake while it serves
    Cell(
        "drop 100->10/s at 5 s (N 600)",
        Limit("bucket", 100, 10, changes=((5.0, 0.1),)),
        600,
        target="drop",
    ),
    # many tasks making one call each through one client
    Cell("300 calls 100/s", Limit("bucket", 100, 10), 300, shape="calls"),
]


def faults_for(cell: Cell) -> tuple[dict[str, Any], list[tuple[float, dict[str, Any]]]]:
    """The fake's ``Faults`` fields for a cell's server model, and its changes over time.
    Raises ``ValueError`` for a model the fake cannot express.
    """
    lim = cell.limit
    # the model's latency is a round trip: the request counted halfway, the answer back after
    half = cell.latency / 2
    faults: dict[str, Any] = {"latency": half, "answer_delay": half, "limit_headers": lim.headers}
    if cell.noise_503:
        faults.update(rate_503=cell.noise_503)
    if cell.noise_429:
        faults.update(rate_429=cell.noise_429, retry_after=cell.noise_retry_after)
    changes: list[tuple[float, dict[str, Any]]] = []
    if lim.kind == "bucket":
        if lim.retry_after == "rest":
            raise ValueError("the fake's bucket sends a fixed Retry-After, not the rest")
        faults.update(rate_limit=lim.rate, burst=lim.burst, rate_limit_retry_after=lim.retry_after)
        changes = [(at, {"rate_limit": lim.rate * factor}) for at, factor in lim.changes]
    elif lim.kind in ("fixed", "sliding"):
        if lim.retry_after != "rest" or lim.changes:
            raise ValueError("the fake's windows always send the rest of the window")
        quota = max(1, round(lim.rate * lim.window))
        faults.update(window_limit=quota, window=lim.window, window_kind=lim.kind)
    elif lim.kind != "none":
        raise ValueError(f"no such limit: {lim.kind}")
    return faults, changes


# -- the client, in its own process -------------------------------------------------------------


class _AnswerLog:
    """Every attempt's (arrival, status), the arrival being when the request left plus half
    the model's latency (when the model's server counts it, on the run's clock; 0 for no
    answer at all), and when the first refusal reached the client.
    """

    interests = (Answered, Failed)

    def __init__(self, start: float, half: float) -> None:
        self.start = start
        self.half = half
        self.log: list[tuple[float, int]] = []
        self.first_refusal: float | None = None

    def __call__(self, event: Any) -> None:
        if not isinstance(event, Answered) and event.status is not None:
            return  # a Failed with a status was Answered already
        now = time.monotonic() - self.start
        status = event.status or 0
        self.log.append((now - event.latency + self.half, status))
        if status != 200 and self.first_refusal is None:
            self.first_refusal = now


async def run_socket(cell: Cell, base_url: str, api_key: str) -> dict[str, Any]:
    """The simulator's ``_run_cell`` on a real socket: the same updates in the same shape, by
    clients with the same settings (the defaults, and the cell's deadline).
    """
    loop = asyncio.get_running_loop()
    random.seed(cell.seed)
    start = loop.time()
    answers = _AnswerLog(start, cell.latency / 2)
    clients = [
        DatasetsClient(
            api_key=api_key,
            base_url=base_url,
            retry=RetryPolicy(deadline=cell.deadline),
            observers=[answers],
        )
        for _ in range(cell.clients)
    ]
    share = [
        cell.updates // cell.clients + (i < cell.updates % cell.clients)
        for i in range(cell.clients)
    ]
    calls: list[tuple[float, float]] = []
    failed = succeeded = 0

    async def one_call(client: DatasetsClient, i: int, at: float) -> None:
        nonlocal failed, succeeded
        if at > 0:
            await asyncio.sleep(at)
        started = loop.time()
        try:
            await client.rename(fake_dataset_id(i), f"name-{i}")
        except DatasetsError:
            failed += 1
        else:
            succeeded += 1
            calls.append((started - start, loop.time() - started))

    async def bulk(client: DatasetsClient, offset: int, n: int) -> None:
        nonlocal failed, succeeded
        updates = (
            DatasetUpdate(dataset_id=fake_dataset_id(offset + i), name="x") for i in range(n)
        )
        report = await client.patch_all(updates)
        failed += report.failed + report.skipped
        succeeded += report.succeeded

    cpu = time.process_time()
    jobs = []
    offset = 0
    for client, n in zip(clients, share, strict=True):
        if cell.shape == "bulk":
            jobs.append(bulk(client, offset, n))
        else:
            gap = 0.0 if cell.offered is None else 1.0 / cell.offered
            jobs.extend(one_call(client, offset + i, (offset + i) * gap) for i in range(n))
        offset += n
    try:
        await asyncio.gather(*jobs)
        wall = loop.time() - start
    finally:
        for client in clients:
            await client.aclose()
    first = answers.first_refusal
    return {
        "start": start,
        "wall": wall,
        "log": sorted(answers.log),
        # a request sent as the first refusal came back arrived half a latency later
        "first_known": None if first is None else first + cell.latency / 2,
        "succeeded": succeeded,
        "failed": failed,
        "calls": calls,
        "cpu": time.process_time() - cpu,
    }


def client_main(name: str, noiseless: bool) -> int:
    """``--client NAME``: wait for the server's address on stdin, run the cell, print JSON."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    cell = _cell(name, noiseless)
    hello = json.loads(sys.stdin.readline())  # imports are done: the server is up now
    out = asyncio.run(run_socket(cell, hello["base_url"], hello["api_key"]))
    print(json.dumps(out), flush=True)
    return 0


# -- the runs, side by side -----------------------------------------------------------------------


def _cell(name: str, noiseless: bool = False) -> Cell:
    cell = next(c for c in CELLS if c.name == name)
    return attrs.evolve(cell, noise_429=0.0, noise_503=0.0) if noiseless else cell


def socket_run(cell: Cell, noiseless: bool = False) -> tuple[sim.Result, float]:
    """One run on sockets: the fake in its own process (CPU 1), the client in another (CPU
    0). Returns the result, in the simulator's terms, and how many seconds after the fake's
    clock started the client's did.
    """
    if noiseless:
        cell = attrs.evolve(cell, noise_429=0.0, noise_503=0.0)
    faults, changes = faults_for(cell)
    config = {"datasets": cell.updates, "faults": faults, "changes": changes, "cpu": 1}
    flags = ["--noiseless"] if noiseless else []
    client = subprocess.Popen(
        [sys.executable, __file__, "--client", cell.name, *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), json.dumps(config)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert client.stdin is not None
        hello = server.stdout.readline()
        client.stdin.write(hello)
        client.stdin.flush()
        out, _ = client.communicate(timeout=600)
        if client.returncode:
            raise RuntimeError(f"the client of {cell.name} exited with {client.returncode}")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        server.terminate()
        server.communicate(timeout=30)
    got = json.loads(out.strip().splitlines()[-1])
    result = sim.Result(
        cell=cell,
        wall=got["wall"],
        log=[(t, s) for t, s in got["log"]],
        succeeded=got["succeeded"],
        failed=got["failed"],
        calls=[(a, b) for a, b in got["calls"]],
        cpu=got["cpu"],
        first_known=got["first_known"],
    )
    return result, got["start"] - json.loads(hello)["started"]


def _ratio(result: sim.Result, base: sim.Result | None) -> float:
    return result.wall / base.wall if base is not None else result.ratio


def _spread(values: list[float], fmt: str) -> str:
    """The median, and the min-max when there is more than one value."""
    mid = format(statistics.median(values), fmt)
    if len(values) == 1:
        return mid
    return f"{mid} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="socket runs per cell (default 3)")
    parser.add_argument("--only", default="", help="cells whose name contains one of these")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--client", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--noiseless", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args.client, args.noiseless)
    chosen = [c for c in CELLS if any(w in c.name for w in args.only.split(","))]
    began = time.perf_counter()
    load = os.getloadavg()[0]
    lines = [
        "| cell | N | sim wall/(N/R) | socket wall/(N/R) | sim refused | socket refused "
        "| target met: sim / sockets |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell in chosen:
        simulated = sim.run_cell(cell)
        sim_base = sim.baseline(cell)
        sim_ok = sim.verdict(simulated, sim_base)[0]
        ratios, refused, met, offsets = [], [], 0, []
        for rep in range(args.reps):
            result, offset = socket_run(cell)
            base = socket_run(cell, noiseless=True)[0] if cell.target == "noise" else None
            ok, verdict = sim.verdict(result, base)
            ratios.append(_ratio(result, base))
            refused.append(result.refused_share)
            offsets.append(offset)
            met += ok
            print(
                f"{cell.name} rep {rep + 1}: wall {result.wall:.2f} s, "
                f"{_ratio(result, base):.3f}, refused {result.refused_share:.1%}, "
                f"{result.requests} requests, failed {result.failed}, client started "
                f"{offset * 1000:.0f} ms after the fake; {'met' if ok else 'missed'}: {verdict}",
                file=sys.stderr,
                flush=True,
            )
        lines.append(
            f"| {cell.name} | {cell.updates} | {_ratio(simulated, sim_base):.2f} | "
            f"{_spread(ratios, '.2f')} | {simulated.refused_share:.1%} | "
            f"{_spread(refused, '.1%')} | "
            f"{'met' if sim_ok else 'missed'} / {met} of {args.reps} |"
        )
    took = time.perf_counter() - began
    lines += [
        "",
        "Refused: the share answered 429 of the requests sent after the client learnt of the "
        "first refusal (windows: after the first window). Random 429s: wall over the same run "
        "without them, on the same side.",
        "",
        f"{len(chosen)} cells, {args.reps} socket run(s) each (median, min-max); took "
        f"{took:.0f} s; load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end ({os.cpu_count()} CPUs).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
