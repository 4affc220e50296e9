"""Where the client's CPU per update goes beyond the wire: each layer timed on its own.

Usage: .venv/bin/python benchmarks/breakdown.py [--n 20000] [--rounds 5]

No socket: a transport stub answers every request at once with the same recorded ~600-byte
Dataset body and aiohttp-like headers, so what is timed is our code only. Each stage is the
difference between two loops run side by side in the same round (median and min-max of the
rounds, microseconds per update):

- protocol: ``build_patch`` + ``parse_rate_limits`` + ``decode_dataset`` minus the
  ``json.loads`` that a bare aiohttp loop does too (so: building the body and structuring);
- gate: ``flow.admit()`` + ``flow.on_answer()`` of an uncontended ``FlowControl``;
- retry loop: ``Caller.call`` with the stub transport, minus the gate and the protocol;
- bulk bookkeeping: ``patch_all`` over the stub, minus ``Caller.call`` per update;
- observer: ``Caller.call`` with one no-op observer subscribed, minus without;
- otel: ``Caller.call`` with ``nebius_datasets_async.otel`` on (SDK, dropping exporter),
  minus without; the same with 10% of the traces sampled, and with metrics only;
- the SDK alone: the spans, context injection and histogram records that otel makes for one
  call, made directly with the SDK (what no instrumentation of ours could go below).

The transport (aiohttp itself and our adapter) is what the side-by-side benchmark
(``cpu_per_update.py``) measures against the bare loop; this harness explains the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from nebius_datasets_async import DatasetsClient, DatasetUpdate, FlowControl
from nebius_datasets_async._protocol import (
    Response,
    build_patch,
    decode_dataset,
    parse_rate_limits,
)

BODY = (Path(__file__).parent.parent / "tests" / "samples" / "dataset_full.json").read_bytes()
HEADERS = CIMultiDictProxy(
    CIMultiDict(
        {
            "Content-Type": "application/json",
            "Content-Length": str(len(BODY)),
            "Date": "Wed, 02 Dec 2026 18:00:00 GMT",
            "Server": "Python/3.11 aiohttp/3.14.5",
            "x-request-id": "req-0123456789abcdef",
        }
    )
)
RESPONSE = Response(200, HEADERS, BODY)


class Stub:
    """A transport that answers at once."""

    async def send(self, request: Any, timeout: float | None = None) -> Response:  # noqa: ASYNC109
        return RESPONSE

    async def aclose(self) -> None:
        pass


def cpu_us(fn: Callable[[], None], n: int) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) / n * 1e6


def run_async(make: Callable[[], Awaitable[None]], n: int) -> float:
    async def main() -> float:
        start = time.process_time()
        await make()
        return (time.process_time() - start) / n * 1e6

    return asyncio.run(main())


def stages(n: int) -> dict[str, float]:
    updates = [DatasetUpdate(f"ds-{i}", folder="/bench/x") for i in range(n)]
    out: dict[str, float] = {}

    def loads_only() -> None:
        for _ in range(n):
            json.loads(RESPONSE.body)

    def protocol() -> None:
        for u in updates:
            request = build_patch(u)
            parse_rate_limits(RESPONSE.headers)
            decode_dataset(request, RESPONSE)

    out["json.loads (the bare loop does it too)"] = cpu_us(loads_only, n)
    out["protocol"] = cpu_us(protocol, n) - out["json.loads (the bare loop does it too)"]

    async def gate() -> None:
        flow = FlowControl(max_concurrency=32)
        limits = parse_rate_limits(RESPONSE.headers)
        for _ in range(n):
            ticket = await flow.admit()
            flow.on_answer(ticket, limits)

    out["gate"] = run_async(gate, n)

    def calls(setup: Callable[[DatasetsClient], None] | None = None) -> Callable[[], Any]:
        async def go() -> None:
            client = DatasetsClient(
                api_key="bench", base_url="http://127.0.0.1:1", transport=Stub()
            )
            if setup is not None:
                setup(client)
            async with client:
                for u in updates:
                    await client.apply(u)

        return go

    call_total = run_async(calls(), n)
    out["retry loop (Caller.call, client.apply)"] = (
        call_total - out["gate"] - out["protocol"] - out["json.loads (the bare loop does it too)"]
    )

    async def bulk() -> None:
        client = DatasetsClient(api_key="bench", base_url="http://127.0.0.1:1", transport=Stub())
        async with client:
            await client.patch_all(updates, concurrency=32)

    out["bulk bookkeeping (patch_all)"] = run_async(bulk, n) - call_total

    def nothing(event: object) -> None:
        pass

    out["one no-op observer"] = run_async(calls(lambda c: c.events.subscribe(nothing)), n) - (
        call_total
    )
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from nebius_datasets_async.otel import instrument
    except ImportError:
        return out

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def otel(client: DatasetsClient) -> None:
        instrument(client, tracer_provider=tracer_provider, meter_provider=meter_provider)

    out["otel (SDK, dropping exporter)"] = run_async(calls(otel), n) - call_total

    def otel_sampled(client: DatasetsClient) -> None:
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        sampled = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1)))
        sampled.add_span_processor(BatchSpanProcessor(Drop()))
        instrument(client, tracer_provider=sampled, meter_provider=meter_provider)

    out["otel, 10% of traces sampled"] = run_async(calls(otel_sampled), n) - call_total

    def otel_metrics(client: DatasetsClient) -> None:
        instrument(client, meter_provider=meter_provider, traces=False)

    out["otel, metrics only (traces=False)"] = run_async(calls(otel_metrics), n) - call_total
    out["the SDK alone: what otel records, without our code"] = sdk_floor(
        n, tracer_provider, meter_provider
    )
    tracer_provider.shutdown()
    meter_provider.shutdown()
    return out


def sdk_floor(n: int, tracer_provider: Any, meter_provider: Any) -> float:
    """The OpenTelemetry SDK's own cost for what one call records: a call span and an attempt
    span with the same attributes, the trace context injected, two histogram records.
    """
    from opentelemetry import propagate, trace

    tracer = tracer_provider.get_tracer("floor")
    meter = meter_provider.get_meter("floor")
    duration, wait = meter.create_histogram("floor.d", "s"), meter.create_histogram("floor.w", "s")
    server = {"server.address": "127.0.0.1", "server.port": 8080}
    answered = {"http.request.method": "PATCH", "http.response.status_code": 200, **server}
    start = time.process_time()
    for i in range(n):
        call = tracer.start_span(
            "PATCH", None, trace.SpanKind.INTERNAL, {"http.request.method": "PATCH", "id": str(i)}
        )
        attempt = tracer.start_span(
            "PATCH /v1/datasets/{dataset_id}",
            trace.set_span_in_context(call),
            trace.SpanKind.CLIENT,
            {"http.request.method": "PATCH", "url.full": f"http://h/v1/datasets/{i}", **server},
        )
        propagate.inject({}, trace.set_span_in_context(attempt))
        attempt.set_attributes({"http.response.status_code": 200, "nebius.request_id": "r"})
        attempt.end()
        call.set_attributes({"nebius.attempts": 1, "nebius.gate.wait": 0.0})
        call.end()
        duration.record(0.01, answered)
        wait.record(0.001, server)
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = [stages(args.n) for _ in range(args.rounds)]
    print(f"\n{args.rounds} rounds of {args.n} updates, us of CPU per update\n")
    print("| stage | median | min-max |")
    print("|---|---|---|")
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} |")


if __name__ == "__main__":
    main()
