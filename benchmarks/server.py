"""The fake Datasets API in its own process, for benchmarks.

Usage: python benchmarks/server.py '{"datasets": 5000, "faults": {...}, "cpu": 1}'

Prints one JSON line with base_url, api_key and ``started`` (its ``time.monotonic()``) once
listening; on SIGTERM prints its counters as a second JSON line and exits. ``"changes": [[5.0,
{"rate_limit": 10}], ...]`` replaces those fields of the faults that many seconds after
``started`` (a limit that drops or rises mid-run).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import attrs

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
    burst = asyncio.ensure_future(first_burst(fake, float(faults.latency)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    started = time.monotonic()
    for at, change in config.get("changes", ()):  # type: ignore[attr-defined]
        loop.call_at(started + float(at), _change_faults, fake, change)
    hello = {"base_url": fake.base_url, "api_key": fake.api_key, "started": started}
    print(json.dumps(hello), flush=True)
    await stop.wait()
    burst.cancel()
    stats = fake.stats
    print(
        json.dumps(
            {
                "requests": stats.requests,
                "statuses": {str(k): v for k, v in stats.statuses.items()},
                "max_in_flight": stats.max_in_flight,
                "resets": stats.resets,
                "first_burst": burst.result() if burst.done() and not burst.cancelled() else None,
            }
        ),
        flush=True,
    )
    await fake.stop()


def _change_faults(fake: FakeDatasetsServer, change: dict[str, Any]) -> None:
    fake.faults = attrs.evolve(fake.faults, **change)


async def first_burst(fake: FakeDatasetsServer, latency: float) -> dict[str, int]:
    """The first burst: the requests that arrived before the first 429 was answered (their
    senders could not know of it), and the 429s among them (answered a latency later). Issue
    16 counts refusals beyond it.
    """
    stats = fake.stats
    while not stats.statuses[429]:  # noqa: ASYNC110 (the fake has no event for it)
        await asyncio.sleep(0.001)
    requests = stats.requests
    await asyncio.sleep(latency)
    return {"requests": requests, "429": stats.statuses[429]}


def serve_uvicorn(config: dict[str, Any]) -> None:
    """The FastAPI app of the contract (tests/contract/app.py) under uvicorn, with the given
    uvicorn settings (``limit_concurrency``, ``timeout_keep_alive``).
    """
    import socket
    import threading

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        CONTRACT_API_KEY="bench-key",
        CONTRACT_DATASETS=str(config.get("datasets", 1000)),
        CONTRACT_LATENCY=str(config.get("faults", {}).get("latency", 0)),
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    server = uvicorn.Server(
        uvicorn.Config(
            "tests.contract.app:app", host="127.0.0.1", port=port, log_level="warning",
            **config["uvicorn"],
        )
    )  # fmt: skip
    thread = threading.Thread(target=server.run)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    print(json.dumps({"base_url": f"http://127.0.0.1:{port}", "api_key": "bench-key"}), flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.should_exit = True
    thread.join(30)
    print(json.dumps({}), flush=True)


def main() -> None:
    config = json.loads(sys.argv[1])
    cpu = config.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(cpu)})
    if "uvicorn" in config:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        serve_uvicorn(config)
        return
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
