"""What one shared admission costs Redis: the Lua script's server-side time per call, and the
calls per second one Redis serves, for docs/SCALING.md.

    .venv/bin/python benchmarks/redis_cost.py [--calls 50000] [--clients 8]

Starts its own redis-server on 127.0.0.1 (as the tests do), drives RedisFlowControl's
admission script from several connections at once with signals like a busy fleet's (successes
every call, a throttle now and then, four slots wanted a call), and reads Redis's own ``INFO
commandstats``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.redis_server import RedisServer  # noqa: E402


async def drive(url: str, calls: int, clients: int) -> dict[str, float]:
    import redis.asyncio as redis

    from nebius_datasets_async import redis as shared

    conns = [redis.Redis.from_url(url) for _ in range(clients)]
    scripts = [c.register_script(shared._ADMIT) for c in conns]
    keys = ["nebius-datasets:{bench}:state", "nebius-datasets:{bench}:ok"]
    per = calls // clients

    async def one(k: int) -> None:
        script = scripts[k]
        for i in range(per):
            throttle = 0 if i % 100 == 0 else -1
            # oks, spent, throttle epoch, Retry-After, pause, throttles, quota left, reset,
            # in flight, latency, ttl ms, budget, probe, least rate, first rate, slots wanted,
            # horizon, headroom: a busy fleet's call booking a batch of four
            args = [4, 0, throttle, -1, 0, int(throttle == 0), -1, -1, 4, 0.02, 600000, 500,
                    0.01, 0.5, 200, 4, 0.05, 0.95]  # fmt: skip
            await script(keys=keys, args=args)

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
