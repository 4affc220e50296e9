"""Service-style load: one client shared by many tasks making single calls, for a while.

    .venv/bin/python benchmarks/service_load.py --tasks 500 --seconds 60

The fake API runs in its own process (CPU 1) with latency and faults; this process (CPU 0)
runs the tasks. It reports requests in flight at most (seen by the server), p50/p99 latency of
the calls, and memory, open file descriptors and tasks in the first and the last 10 seconds,
so growth would show. Not part of the test suite: it runs for a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nebius_datasets_async import DatasetsClient, DatasetsError, RetryPolicy
from nebius_datasets_async.testing import fake_dataset_id

HERE = Path(__file__).resolve().parent
SEED = 3  # of the fake's faults, and so of its dataset ids


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def load(base_url: str, api_key: str, args: argparse.Namespace) -> dict[str, object]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    samples: list[tuple[float, float, int, int]] = []
    stop_at = time.monotonic() + args.seconds
    async with DatasetsClient(
        api_key=api_key,
        base_url=base_url,
        max_concurrency=args.max_concurrency,
        timeout=2.0,
        retry=RetryPolicy(initial_delay=0.05, max_delay=0.5),
    ) as client:

        async def worker(n: int) -> None:
            rng = random.Random(n)
            while time.monotonic() < stop_at:
                dataset_id = fake_dataset_id(rng.randrange(args.datasets), seed=SEED)
                started = time.monotonic()
                try:
                    if rng.random() < 0.5:
                        await client.get_dataset(dataset_id)
                    else:
                        await client.move(dataset_id, f"/svc/{n % 13}")
                    latencies.append(time.monotonic() - started)
                except DatasetsError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        async def sampler() -> None:
            started = time.monotonic()
            while time.monotonic() < stop_at:
                samples.append(
                    (time.monotonic() - started, rss_mb(), open_fds(), len(asyncio.all_tasks()))
                )
                await asyncio.sleep(1.0)

        await asyncio.gather(sampler(), *(worker(n) for n in range(args.tasks)))
    if len(latencies) < 2:
        raise SystemExit(f"no call succeeded; errors: {errors}")
    first = [s for s in samples if s[0] < 10]
    last = [s for s in samples if s[0] >= args.seconds - 10]
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "calls": len(latencies),
        "errors": errors,
        "p50_ms": round(quantiles[49] * 1000, 1),
        "p99_ms": round(quantiles[98] * 1000, 1),
        "rss_mb_first_10s": round(max(s[1] for s in first), 1),
        "rss_mb_last_10s": round(max(s[1] for s in last), 1),
        "fds_first_10s": max(s[2] for s in first),
        "fds_last_10s": max(s[2] for s in last),
        "tasks_first_10s": max(s[3] for s in first),
        "tasks_last_10s": max(s[3] for s in last),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--datasets", type=int, default=5000)
    args = parser.parse_args()
    faults = {
        "latency": 0.02,
        "rate_500": 0.01,
        "rate_reset": 0.005,
        "rate_429": 0.005,
        "retry_after": 0.05,
        "seed": SEED,
    }
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"),
         json.dumps({"datasets": args.datasets, "faults": faults, "cpu": 1})],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        hello = json.loads(server.stdout.readline())
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {0})
        result = asyncio.run(load(hello["base_url"], hello["api_key"], args))
    finally:
        server.terminate()
        stats = json.loads(server.communicate(timeout=30)[0].strip().splitlines()[-1])
    result["server_max_in_flight"] = stats["max_in_flight"]
    result["max_concurrency"] = args.max_concurrency
    result["tasks"] = args.tasks
    result["seconds"] = args.seconds
    print(json.dumps(result, indent=2))
    return 0 if stats["max_in_flight"] <= args.max_concurrency else 1


if __name__ == "__main__":
    sys.exit(main())
