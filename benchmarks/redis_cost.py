"""What one shared admission costs Redis: the Lua script's server-side time per call, and the
calls per second one Redis serves, for docs/SCALING.md.

    .venv/bin/python benchmarks/redis_cost.py [--calls 50000] [--clients 8]

Starts its own redis-server on 127.0.0.1 (as the tests do), drives RedisFlowControl's
script from several connections at once like a busy fleet's calls (four slots wanted a call;
every third call also proposes a new version of the law, a snapshot of a law in its measuring
phase, and half of those lose the compare-and-set and get the stored snapshot back), and reads
Redis's own ``INFO commandstats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nebius_datasets_async._law import Law, Refusal  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


async def drive(url: str, calls: int, clients: int) -> dict[str, float]:
    import redis.asyncio as redis

    from nebius_datasets_async import redis as shared

    conns = [redis.Redis.from_url(url) for _ in range(clients)]
    scripts = [c.register_script(shared._STATE) for c in conns]
    keys = ["nebius-datasets:{bench}:law"]
    per = calls // clients
    law = Law(max_concurrency=64, now=time.time())
    for k in range(40):  # a law measuring a limit: a trial, a hold, counters
        law.answered(time.time(), time.time() - 0.02)
        if k % 4 == 0:
            law.refused(time.time(), time.time() - 0.02, Refusal.THROTTLE, None)
    snapshot = json.dumps(law.snapshot(), separators=(",", ":"))
    versions = [0]

    async def one(k: int) -> None:
        script = scripts[k]
        for i in range(per):
            propose = i % 3 == 0
            base = versions[0] - (i % 2) if propose else -1  # half of them stale
            # base version, snapshot, pace, hold, proposal id, version held, slots wanted,
            # horizon, budget spent, tokens given back, capacity, TTL ms
            args = [base, snapshot if propose else "", 200.0, 0.0, f"{k}:{i}", versions[0] - 1,
                    4, 0.05, 0, 4, 500, 600000]  # fmt: skip
            reply = await script(keys=keys, args=args)
            versions[0] = int(reply[1])

    await conns[0].config_resetstat()
    started = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(clients)))
    wall = time.perf_counter() - started
    stats = await conns[0].info("commandstats")
    for c in conns:
        await c.aclose()
    evalsha = stats.get("cmdstat_evalsha", {})
    return {
        "calls": per * clients,
        "wall": wall,
        "calls_per_second": per * clients / wall,
        "usec_per_call": float(evalsha.get("usec_per_call", 0.0)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        result = asyncio.run(drive(server.url, args.calls, args.clients))
    finally:
        server.close()
    print(
        f"{result['calls']:.0f} calls from {args.clients} connections in "
        f"{result['wall']:.2f}s: {result['calls_per_second']:.0f}/s through one Python process; "
        f"the script costs Redis {result['usec_per_call']:.1f} us per call "
        f"(one Redis core: about {1e6 / max(result['usec_per_call'], 0.1):.0f} calls/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
