"""The fake Datasets API in its own process, for benchmarks.

Usage: python benchmarks/server.py '{"datasets": 5000, "faults": {...}, "cpu": 1}'

Prints one JSON line with base_url and api_key once listening; on SIGTERM prints its counters
as a second JSON line and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from nebius_datasets_async.testing import FakeDatasetsServer, Faults


async def serve(config: dict[str, object]) -> None:
    faults = Faults(**config.get("faults", {}))  # type: ignore[arg-type]
    fake = FakeDatasetsServer(
        datasets=int(config.get("datasets", 1000)),  # type: ignore[call-overload]
        faults=faults,
        api_key="bench-key",
        record_requests=False,
    )
    await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(json.dumps({"base_url": fake.base_url, "api_key": fake.api_key}), flush=True)
    await stop.wait()
    stats = fake.stats
    print(
        json.dumps(
            {
                "requests": stats.requests,
                "statuses": {str(k): v for k, v in stats.statuses.items()},
                "max_in_flight": stats.max_in_flight,
                "resets": stats.resets,
            }
        ),
        flush=True,
    )
    await fake.stop()


def main() -> None:
    config = json.loads(sys.argv[1])
    cpu = config.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(cpu)})
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
