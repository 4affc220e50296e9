"""One benchmark run of one contender, in its own process.

Usage: python benchmarks/contenders.py NAME '{"base_url": ..., "api_key": ..., "n": 5000,
        "datasets": 5000, "concurrency": 32, "cpu": 0}'

Prints one JSON line: wall and CPU seconds of this process, peak RSS, outcomes and the
requests it sent. The baselines are written plainly, as a competent user would write them.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp

from nebius_datasets_async import DatasetsClient, DatasetsError, DatasetUpdate
from nebius_datasets_async.testing import fake_dataset_id

Result = dict[str, Any]


def updates(cfg: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(dataset_id, new folder) for update i, cycling over the fake's ids (from ``offset``)."""
    datasets = cfg["datasets"]
    offset = cfg.get("offset", 0)
    for i in range(cfg["n"]):
        yield fake_dataset_id((offset + i) % datasets), f"/bench/{i % 97}"


class Tally:
    """Counts single calls that succeeded and failed."""

    def __init__(self) -> None:
        self.ok = self.failed = 0

    async def move(self, client: DatasetsClient, dataset_id: str, folder: str) -> None:
        try:
            await client.move(dataset_id, folder)
            self.ok += 1
        except DatasetsError:
            self.failed += 1


def client_for(cfg: dict[str, Any]) -> DatasetsClient:
    return DatasetsClient(
        api_key=cfg["api_key"], base_url=cfg["base_url"], max_concurrency=cfg["concurrency"]
    )


# -- ours ------------------------------------------------------------------------------------


async def ours(cfg: dict[str, Any]) -> Result:
    if cfg.get("redis_url"):
        return await ours_redis(cfg)
    client = DatasetsClient(
        api_key=cfg["api_key"],
        base_url=cfg["base_url"],
        max_concurrency=cfg["concurrency"],
        observers=cfg.get("observers", ()),
    )
    if cfg.get("setup"):
        cfg["setup"](client)
    async with client:
        report = await client.patch_all(DatasetUpdate(i, folder=f) for i, f in updates(cfg))
    return {
        "ok": report.succeeded,
        "failed": report.failed + report.skipped,
        "requests": report.requests,
        "ended_at": time.time(),
    }


async def ours_observer(cfg: dict[str, Any]) -> Result:
    """Ours with one observer that does nothing: every per-call event is built and handed on."""

    def nothing(event: object) -> None:
        pass

    return await ours({**cfg, "observers": [nothing]})


async def ours_otel(cfg: dict[str, Any]) -> Result:
    """Ours with nebius_datasets_async.otel on: the OpenTelemetry SDK records every span
    (batched into an exporter that drops them) and every metric (read once, at the end).
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from nebius_datasets_async.otel import instrument

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    sampler = None
    if cfg.get("sample") is not None:  # a share of the traces, as users choose
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        sampler = ParentBased(TraceIdRatioBased(cfg["sample"]))
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    def setup(client: DatasetsClient) -> None:
        instrument(
            client,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            traces=not cfg.get("metrics_only"),
        )

    result = await ours({**cfg, "setup": setup})
    reader.get_metrics_data()
    tracer_provider.shutdown()
    meter_provider.shutdown()
    return result


async def ours_otel_sampled(cfg: dict[str, Any]) -> Result:
    """ours_otel with 10% of the traces sampled (ParentBased(TraceIdRatioBased(0.1)))."""
    return await ours_otel({**cfg, "sample": 0.1})


async def ours_otel_metrics(cfg: dict[str, Any]) -> Result:
    """ours_otel with metrics only (``instrument(client, traces=False)``)."""
    return await ours_otel({**cfg, "metrics_only": True})


async def ours_redis(cfg: dict[str, Any]) -> Result:
    """Ours with the flow shared through Redis (a member of a fleet)."""
    from nebius_datasets_async.redis import RedisFlowControl

    flow = RedisFlowControl(cfg["redis_url"], max_concurrency=cfg["concurrency"])
    async with DatasetsClient(api_key=cfg["api_key"], base_url=cfg["base_url"], flow=flow) as c:
        report = await c.patch_all(DatasetUpdate(i, folder=f) for i, f in updates(cfg))
    await flow.aclose()
    return {
        "ok": report.succeeded,
        "failed": report.failed + report.skipped,
        "requests": report.requests,
        "redis_calls": flow.redis_calls,
        # (the fleet's law in Redis: versions proposed, and lost to another's compare-and-set)
        "proposals": getattr(flow, "proposals", 0),
        "conflicts": getattr(flow, "conflicts", 0),
        "ended_at": time.time(),
    }


async def ours_gather(cfg: dict[str, Any]) -> Result:
    """Baseline (c): asyncio.gather over one coroutine per update (our single calls)."""
    tally = Tally()
    async with client_for(cfg) as client:
        await asyncio.gather(*(tally.move(client, i, f) for i, f in updates(cfg)))
    return {"ok": tally.ok, "failed": tally.failed, "requests": None}


async def service(cfg: dict[str, Any]) -> Result:
    """A service: 300 tasks share one client, each making its share of single calls."""
    tasks = 300
    tally = Tally()
    work = list(updates(cfg))
    async with client_for(cfg) as client:

        async def task(k: int) -> None:
            for dataset_id, folder in work[k::tasks]:
                await tally.move(client, dataset_id, folder)

        await asyncio.gather(*(task(k) for k in range(tasks)))
        requests = client.flow.state().requests
    return {"ok": tally.ok, "failed": tally.failed, "requests": requests}


async def mixed(cfg: dict[str, Any]) -> Result:
    """One bulk run of 80% of the updates and single calls for the rest, at once."""
    work = list(updates(cfg))
    split = len(work) * 4 // 5
    tally = Tally()
    async with client_for(cfg) as client:
        bulk = asyncio.ensure_future(
            client.patch_all(DatasetUpdate(i, folder=f) for i, f in work[:split])
        )
        await asyncio.gather(*(tally.move(client, i, f) for i, f in work[split:]))
        report = await bulk
        requests = client.flow.state().requests
    return {
        "ok": tally.ok + report.succeeded,
        "failed": tally.failed + report.failed + report.skipped,
        "requests": requests,
    }


async def two_bulk(cfg: dict[str, Any]) -> Result:
    """Two bulk runs on one client at once, each half of the updates."""
    work = list(updates(cfg))
    half = len(work) // 2
    async with client_for(cfg) as client:
        reports = await asyncio.gather(
            client.patch_all(DatasetUpdate(i, folder=f) for i, f in work[:half]),
            client.patch_all(DatasetUpdate(i, folder=f) for i, f in work[half:]),
        )
    return {
        "ok": sum(r.succeeded for r in reports),
        "failed": sum(r.failed + r.skipped for r in reports),
        "requests": sum(r.requests for r in reports),
    }


async def fleet4(cfg: dict[str, Any]) -> Result:
    """Four processes with the same key, each its own client and bulk run of a quarter."""
    return await fleet({**cfg, "workers": 4})


async def fleet(cfg: dict[str, Any]) -> Result:
    """``workers`` processes with the same key, each its own client and bulk run of an equal
    share; with ``redis_url`` their flow is shared through Redis. The wall runs from the moment
    every worker is up (interpreter started, package imported) to the moment the last one has
    finished its run and closed its client: starting and tearing down interpreters is the
    fleet's deployment, not its flow control.
    """
    procs = cfg["workers"]
    share = cfg["n"] // procs
    children = []
    for k in range(procs):
        child = {**cfg, "n": share, "offset": k * share, "cpu": None, "barrier": True}
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "ours",
                json.dumps(child),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )
    for child_proc in children:
        assert child_proc.stdout is not None
        assert (await child_proc.stdout.readline()).strip() == b"ready"
    started = time.time()
    for child_proc in children:
        assert child_proc.stdin is not None
        child_proc.stdin.write(b"go\n")
    results = []
    for child_proc in children:
        out, _ = await child_proc.communicate()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return {
        "wall": max(r["ended_at"] for r in results) - started,
        "ok": sum(r["ok"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "requests": sum(r["requests"] for r in results),
        "redis_calls": sum(r.get("redis_calls", 0) for r in results),
        "proposals": sum(r.get("proposals", 0) for r in results),
        "conflicts": sum(r.get("conflicts", 0) for r in results),
        "child_cpu": sum(r["cpu"] for r in results),
    }


async def idle_gaps(cfg: dict[str, Any]) -> Result:
    """Single calls in small batches separated by idle gaps of 4.9-5.1 s (uvicorn's
    keep-alive is 5 s), with retries off: every failure is a reused dead connection.
    """
    from nebius_datasets_async import RetryPolicy

    rng = random.Random(5)
    ok = failed = 0
    work = list(updates(cfg))
    async with DatasetsClient(
        api_key=cfg["api_key"],
        base_url=cfg["base_url"],
        retry=RetryPolicy.never(),
        keepalive=cfg.get("keepalive", 4.0),
    ) as client:
        for start in range(0, len(work), 4):
            results = await asyncio.gather(
                *(client.move(i, f) for i, f in work[start : start + 4]), return_exceptions=True
            )
            ok += sum(not isinstance(r, BaseException) for r in results)
            failed += sum(isinstance(r, BaseException) for r in results)
            await asyncio.sleep(rng.uniform(4.9, 5.1))
    return {"ok": ok, "failed": failed, "requests": ok + failed}


# -- baseline (a): hand-written aiohttp -----------------------------------------------------


async def raw_aiohttp(cfg: dict[str, Any]) -> Result:
    headers = {"Authorization": f"Bearer {cfg['api_key']}", "Content-Type": "application/json"}
    sem = asyncio.Semaphore(cfg["concurrency"])
    ok = failed = 0
    connector = aiohttp.TCPConnector(limit=cfg["concurrency"])
    async with aiohttp.ClientSession(cfg["base_url"], headers=headers, connector=connector) as s:

        async def one(dataset_id: str, folder: str) -> None:
            nonlocal ok, failed
            async with sem:
                try:
                    async with s.patch(
                        f"/v1/datasets/{dataset_id}", data=json.dumps({"folder": folder})
                    ) as resp:
                        body = json.loads(await resp.read())
                        if resp.status == 200 and body["folder"] == folder:
                            ok += 1
                        else:
                            failed += 1
                except aiohttp.ClientError:
                    failed += 1

        await asyncio.gather(*(one(i, f) for i, f in updates(cfg)))
    return {"ok": ok, "failed": failed, "requests": ok + failed}


# -- baseline (b): httpx ---------------------------------------------------------------------


async def raw_httpx(cfg: dict[str, Any]) -> Result:
    import httpx

    headers = {"Authorization": f"Bearer {cfg['api_key']}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=cfg["concurrency"])
    sem = asyncio.Semaphore(cfg["concurrency"])
    ok = failed = 0
    async with httpx.AsyncClient(base_url=cfg["base_url"], headers=headers, limits=limits) as c:

        async def one(dataset_id: str, folder: str) -> None:
            nonlocal ok, failed
            async with sem:
                try:
                    resp = await c.patch(
                        f"/v1/datasets/{dataset_id}", content=json.dumps({"folder": folder})
                    )
                    if resp.status_code == 200 and resp.json()["folder"] == folder:
                        ok += 1
                    else:
                        failed += 1
                except httpx.HTTPError:
                    failed += 1

        await asyncio.gather(*(one(i, f) for i, f in updates(cfg)))
    return {"ok": ok, "failed": failed, "requests": ok + failed}


# -- baseline (d): fixed concurrency with OpenAI-SDK-style retries ----------------------------


async def openai_style(cfg: dict[str, Any]) -> Result:
    """Fixed concurrency; per request up to 2 retries with exponential backoff (0.5 s doubling,
    at most 8 s, minus up to 25% jitter) or the server's Retry-After when it is under 60 s;
    retried on 408, 409, 429, 5xx and connection errors. No shared pause, no budget.
    """
    headers = {"Authorization": f"Bearer {cfg['api_key']}", "Content-Type": "application/json"}
    sem = asyncio.Semaphore(cfg["concurrency"])
    ok = failed = requests = 0
    max_retries = 2
    connector = aiohttp.TCPConnector(limit=cfg["concurrency"])
    async with aiohttp.ClientSession(cfg["base_url"], headers=headers, connector=connector) as s:

        async def one(dataset_id: str, folder: str) -> None:
            nonlocal ok, failed, requests
            async with sem:
                for attempt in range(max_retries + 1):
                    requests += 1
                    retry_after = None
                    try:
                        async with s.patch(
                            f"/v1/datasets/{dataset_id}", data=json.dumps({"folder": folder})
                        ) as resp:
                            await resp.read()
                            if resp.status == 200:
                                ok += 1
                                return
                            retryable = resp.status in (408, 409, 429) or resp.status >= 500
                            header = resp.headers.get("Retry-After")
                            if header is not None:
                                try:
                                    retry_after = float(header)
                                except ValueError:
                                    retry_after = None
                    except aiohttp.ClientError:
                        retryable = True
                    if not retryable or attempt == max_retries:
                        failed += 1
                        return
                    if retry_after is not None and 0 < retry_after <= 60:
                        delay = retry_after
                    else:
                        delay = min(0.5 * 2.0**attempt, 8.0) * (1 - 0.25 * random.random())
                    await asyncio.sleep(delay)

        await asyncio.gather(*(one(i, f) for i, f in updates(cfg)))
    return {"ok": ok, "failed": failed, "requests": requests}


CONTENDERS: dict[str, Callable[[dict[str, Any]], Awaitable[Result]]] = {
    "ours": ours,
    "ours_observer": ours_observer,
    "ours_otel": ours_otel,
    "ours_otel_sampled": ours_otel_sampled,
    "ours_otel_metrics": ours_otel_metrics,
    "gather": ours_gather,
    "aiohttp": raw_aiohttp,
    "httpx": raw_httpx,
    "openai_style": openai_style,
    "service": service,
    "mixed": mixed,
    "two_bulk": two_bulk,
    "fleet4": fleet4,
    "fleet": fleet,
    "idle_gaps": idle_gaps,
}


def main() -> None:
    import os

    name, cfg = sys.argv[1], json.loads(sys.argv[2])
    cpu = cfg.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(cpu)})
    loop_factory = None
    if cfg.get("loop") == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    if cfg.get("barrier"):  # a fleet member: start when the whole fleet is up
        print("ready", flush=True)
        sys.stdin.readline()
    if name.startswith("ours_otel"):  # import the SDK before the clock starts, as a service would
        import nebius_datasets_async.otel  # noqa: F401
    started_cpu = time.process_time()
    started = time.perf_counter()
    profiler = None
    if cfg.get("profile"):  # cProfile the run; the top functions go to stderr
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(CONTENDERS[name](cfg))
    if profiler is not None:
        import pstats

        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(60)
    result.setdefault("wall", time.perf_counter() - started)
    result["cpu"] = time.process_time() - started_cpu
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
