"""OpenTelemetry: exact spans, parents, attributes and metric points, recorded by the SDK's
in-memory exporter and reader. Skipped when the OpenTelemetry SDK is not installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from nebius_datasets_async import (
    APIConnectionError,
    DatasetsClient,
    DatasetUpdate,
    NotFoundError,
    RetryPolicy,
)
from nebius_datasets_async.otel import DURATION_BUCKETS, Instrumentation, instrument
from nebius_datasets_async.testing import FakeDatasetsServer, Faults

from .conftest import SleepRecorder

KEY = "sk-otel-SECRET-0123456789abcdef"
TEMPLATE = "PATCH /v1/datasets/{dataset_id}"


class Telemetry:
    """An SDK tracer and meter provider recording in memory."""

    def __init__(self) -> None:
        self.spans_out = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_out.get_finished_spans())

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def tele() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.shutdown()


@pytest.fixture
async def fake() -> AsyncIterator[FakeDatasetsServer]:
    async with FakeDatasetsServer(datasets=20, api_key=KEY) as server:
        yield server


def instrumented(
    fake: FakeDatasetsServer, tele: Telemetry, **kwargs: Any
) -> tuple[DatasetsClient, Instrumentation]:
    client = fake.client(_sleep=SleepRecorder(), **kwargs)
    inst = instrument(
        client, tracer_provider=tele.tracer_provider, meter_provider=tele.meter_provider
    )
    return client, inst


def server_attrs(fake: FakeDatasetsServer) -> dict[str, Any]:
    host, port = fake.base_url.removeprefix("http://").split(":")
    return {"server.address": host, "server.port": int(port)}


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_success_spans_metrics_and_trace_context(
    fake: FakeDatasetsServer, tele: Telemetry
) -> None:
    """One PATCH: a call span under the caller's span, one attempt span under it with the
    HTTP semconv attributes, the attempt's traceparent sent, one duration point.
    """
    dataset_id = fake.dataset_ids[0]
    client, _ = instrumented(fake, tele)
    outer_tracer = tele.tracer_provider.get_tracer("test")
    async with client:
        with outer_tracer.start_as_current_span("handler") as outer:
            await client.move(dataset_id, "/a")
    spans = tele.spans()
    assert [s.name for s in spans] == [TEMPLATE, "PATCH", "handler"]
    attempt, call, handler = spans
    assert call.parent is not None
    assert call.parent.span_id == outer.get_span_context().span_id
    assert attempt.parent is not None
    assert attempt.parent.span_id == call.context.span_id
    assert (call.kind, attempt.kind) == (SpanKind.INTERNAL, SpanKind.CLIENT)
    assert dict(attempt.attributes or {}) == {
        "http.request.method": "PATCH",
        "url.full": f"{fake.base_url}/v1/datasets/{dataset_id}",
        "url.template": "/v1/datasets/{dataset_id}",
        **server_attrs(fake),
        "http.response.status_code": 200,
        "nebius.request_id": attempt.attributes["nebius.request_id"],  # type: ignore[index]
    }
    call_attrs = dict(call.attributes or {})
    assert call_attrs.pop("nebius.gate.wait") >= 0  # type: ignore[operator]
    assert call_attrs == {
        "http.request.method": "PATCH",
        "nebius.dataset.id": dataset_id,
        "nebius.attempts": 1,
        "http.response.status_code": 200,
    }
    assert call.status.status_code is StatusCode.UNSET
    (request,) = fake.requests
    carrier = {k.lower(): v for k, v in request.headers.items()}
    context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    assert context.trace_id == handler.context.trace_id
    assert context.span_id == attempt.context.span_id

    metrics = tele.metrics()
    (duration,) = metrics["http.client.request.duration"]
    assert duration.count == 1
    assert tuple(duration.explicit_bounds) == DURATION_BUCKETS
    assert dict(duration.attributes) == {
        "http.request.method": "PATCH",
        "http.response.status_code": 200,
        **server_attrs(fake),
    }
    assert "nebius.datasets.gate.wait" not in metrics  # admitted at once: nothing waited
    assert [p.value for p in metrics["nebius.datasets.gate.in_flight"]] == [0]
    assert [p.value for p in metrics["nebius.datasets.gate.waiting"]] == [0]
    assert [p.value for p in metrics["nebius.datasets.gate.budget"]] == [500.0]
    assert "nebius.datasets.gate.pace" not in metrics  # unpaced: no pace to report
    assert "nebius.datasets.gate.retries" not in metrics


async def test_throttled_then_successful(fake: FakeDatasetsServer, tele: Telemetry) -> None:
    """A 429 then a 200: two attempt spans (the second a resend), the throttle and the retry
    as events of the call span, a throttle and a retry counted, two duration points.
    """
    fake.fail_next(1, status=429, retry_after=0)
    client, _ = instrumented(fake, tele)
    async with client:
        await client.move(fake.dataset_ids[1], "/b")
    first, second, call = tele.spans()
    assert [first.name, second.name, call.name] == [TEMPLATE, TEMPLATE, "PATCH"]
    assert first.parent is not None
    assert second.parent is not None
    assert first.parent.span_id == second.parent.span_id == call.context.span_id
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["http.response.status_code"] == 429
    assert first.attributes["error.type"] == "429"
    assert first.status.status_code is StatusCode.ERROR
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    assert [e.name for e in call.events] == ["throttled", "retry"]
    assert dict(call.events[0].attributes or {}) == {
        "nebius.attempt": 1,
        "nebius.retry_after": 0.0,
    }
    retry = dict(call.events[1].attributes or {})
    assert retry["error.type"] == "RateLimitError"
    assert call.attributes is not None
    assert call.attributes["nebius.attempts"] == 2
    assert call.status.status_code is StatusCode.UNSET
    metrics = tele.metrics()
    assert [p.value for p in metrics["nebius.datasets.gate.throttles"]] == [1]
    assert [p.value for p in metrics["nebius.datasets.gate.retries"]] == [1]
    points = {
        p.attributes["http.response.status_code"]: p.count
        for p in metrics["http.client.request.duration"]
    }
    assert points == {429: 1, 200: 1}


async def test_failures(fake: FakeDatasetsServer, tele: Telemetry) -> None:
    """A 404 fails the call span (NotFoundError) and its attempt (404); a dropped connection
    fails the attempt with the exception's type, and is counted with that error.type.
    """
    client, _ = instrumented(fake, tele, retry=RetryPolicy.never())
    async with client:
        with pytest.raises(NotFoundError):
            await client.move("missing", "/c")
        fake.fail_next(2, reset=True)
        with pytest.raises(APIConnectionError):
            await client.move(fake.dataset_ids[2], "/d")
    attempt404, call404, attempt_reset, call_reset = tele.spans()
    assert attempt404.attributes is not None
    assert call404.attributes is not None
    assert attempt404.attributes["error.type"] == "404"
    assert call404.attributes["error.type"] == "NotFoundError"
    assert call404.attributes["nebius.dataset.id"] == "missing"
    assert call404.status.status_code is StatusCode.ERROR
    assert attempt_reset.attributes is not None
    assert call_reset.attributes is not None
    assert attempt_reset.attributes["error.type"] == "APIConnectionError"
    assert "http.response.status_code" not in attempt_reset.attributes
    assert attempt_reset.status.status_code is StatusCode.ERROR
    assert call_reset.attributes["error.type"] == "APIConnectionError"
    points = tele.metrics()["http.client.request.duration"]
    kinds = sorted(str(p.attributes.get("error.type")) for p in points)
    assert kinds == ["404", "APIConnectionError"]


async def test_bulk_run_groups_calls_under_a_run_span(
    fake: FakeDatasetsServer, tele: Telemetry
) -> None:
    """A bulk run of three updates: one 'bulk run' span, three call spans under it, each
    with one attempt span; the run span carries the totals.
    """
    client, _ = instrumented(fake, tele)
    updates = [DatasetUpdate(i, folder="/e") for i in fake.dataset_ids[:3]]
    async with client:
        report = await client.patch_all(updates, concurrency=2)
    assert report.succeeded == 3
    spans = tele.spans()
    (run,) = by_name(spans, "bulk run")
    calls = by_name(spans, "PATCH")
    attempts = by_name(spans, TEMPLATE)
    assert len(spans) == 7
    assert run.parent is None
    assert all(c.parent is not None and c.parent.span_id == run.context.span_id for c in calls)
    call_ids = {c.context.span_id for c in calls}
    assert {a.parent.span_id for a in attempts if a.parent is not None} == call_ids
    assert {c.attributes["nebius.dataset.id"] for c in calls if c.attributes} == set(
        fake.dataset_ids[:3]
    )
    assert dict(run.attributes or {}) == {
        "nebius.run.concurrency": 2,
        "nebius.run.succeeded": 3,
        "nebius.run.failed": 0,
        "nebius.run.skipped": 0,
        "nebius.run.requests": 3,
        "nebius.run.retries": 0,
        "nebius.run.throttled": 0,
    }


async def test_pace_gauge_once_paced(tele: Telemetry) -> None:
    """Once the gate paces (quota headers here), the pace gauge reports it, with its source."""
    async with FakeDatasetsServer(
        datasets=5,
        api_key=KEY,
        faults=Faults(window_limit=100, window=10.0, window_kind="sliding", limit_headers=True),
    ) as server:
        client, _ = instrumented(server, tele)
        async with client:
            # two readings of the quota a tenth of its reset apart tell a refilling quota
            await client.move(server.dataset_ids[0], "/f")
            await asyncio.sleep(1.05)
            await client.move(server.dataset_ids[1], "/f")
            (pace,) = tele.metrics()["nebius.datasets.gate.pace"]
    assert pace.value > 0
    assert dict(pace.attributes) == {"nebius.gate.pacing": "headers"}


async def test_the_key_appears_nowhere(fake: FakeDatasetsServer, tele: Telemetry) -> None:
    """No span name, attribute, event or metric name or label carries the API key, after a
    success, a throttle, a failure and a bulk run.
    """
    client, _ = instrumented(fake, tele)
    fake.fail_next(1, status=429, retry_after=0)
    async with client:
        await client.move(fake.dataset_ids[0], "/g")
        with pytest.raises(NotFoundError):
            await client.move("missing", "/g")
        await client.patch_all([DatasetUpdate(i, folder="/h") for i in fake.dataset_ids[:2]])
    texts: list[str] = []
    for span in tele.spans():
        texts.append(span.name)
        texts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            texts.append(event.name)
            texts.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
        texts.append(str(span.status.description))
    for name, points in tele.metrics().items():
        texts.append(name)
        for point in points:
            texts.extend(f"{k}={v}" for k, v in point.attributes.items())
    assert len(texts) > 50
    assert not [t for t in texts if KEY in t or "SECRET" in t]


async def test_uninstrument_stops_recording(fake: FakeDatasetsServer, tele: Telemetry) -> None:
    """After uninstrument(), calls make no spans and the client builds no call events."""
    client, inst = instrumented(fake, tele)
    async with client:
        inst.uninstrument()
        assert not client.events.calls
        await client.move(fake.dataset_ids[0], "/i")
    assert tele.spans() == []


async def test_gate_wait_on_the_call_span_and_histogram(
    fake: FakeDatasetsServer, tele: Telemetry
) -> None:
    """With one place and two calls at once, the second waits for the first: its wait is on
    its call span (nebius.gate.wait) and is the one point of the gate wait histogram.
    """
    slow = FakeDatasetsServer(datasets=2, api_key=KEY, faults=Faults(latency=0.2))
    async with slow:
        client, _ = instrumented(slow, tele, max_concurrency=1)
        async with client:
            await asyncio.gather(
                client.move(slow.dataset_ids[0], "/w"), client.move(slow.dataset_ids[1], "/w")
            )
    waits = sorted(
        float(s.attributes["nebius.gate.wait"])  # type: ignore[arg-type,index]
        for s in by_name(tele.spans(), "PATCH")
    )
    assert waits[0] < 0.05
    assert 0.15 < waits[1] < 1.0
    (point,) = tele.metrics()["nebius.datasets.gate.wait"]
    assert point.count == 1
    assert point.sum == pytest.approx(waits[1])


async def test_metrics_only(fake: FakeDatasetsServer, tele: Telemetry) -> None:
    """instrument(traces=False) records the metrics, makes no span, sends no trace context."""
    client = fake.client(_sleep=SleepRecorder())
    instrument(
        client,
        tracer_provider=tele.tracer_provider,
        meter_provider=tele.meter_provider,
        traces=False,
    )
    async with client:
        await client.move(fake.dataset_ids[0], "/x")
    assert tele.spans() == []
    (request,) = fake.requests
    assert "traceparent" not in {k.lower() for k in request.headers}
    (duration,) = tele.metrics()["http.client.request.duration"]
    assert duration.count == 1


async def test_fleet_pace_as_this_process_sees_it(tele: Telemetry) -> None:
    """With a RedisFlowControl, the pace gauge reports the fleet's shared pace (pacing
    "shared"), and the event stream had a PaceChanged with phase "shared".
    """
    pytest.importorskip("redis")
    from nebius_datasets_async.events import PaceChanged
    from nebius_datasets_async.redis import RedisFlowControl

    from .redis_server import RedisServer, external_url

    url = external_url()
    server = None
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        faults = Faults(rate_limit=200, burst=10, rate_limit_retry_after=1, latency=0.01)
        async with FakeDatasetsServer(datasets=400, faults=faults, api_key=KEY) as fake:
            flow = RedisFlowControl(url, namespace=f"otel-test-{id(tele)}")
            paces: list[PaceChanged] = []
            client, _ = instrumented(fake, tele, flow=flow)

            def on_pace(event: PaceChanged) -> None:
                paces.append(event)

            on_pace.interests = (PaceChanged,)  # type: ignore[attr-defined]
            client.events.subscribe(on_pace)
            async with client:
                report = await client.patch_all(
                    DatasetUpdate(i, name="f") for i in fake.dataset_ids
                )
                (pace,) = tele.metrics()["nebius.datasets.gate.pace"]
            await flow.aclose()
    finally:
        if server is not None:
            server.close()
    assert report.ok
    assert dict(pace.attributes) == {"nebius.gate.pacing": "shared"}
    assert 20 < pace.value < 2000
    shared = [p for p in paces if p.phase == "shared"]
    assert shared
    assert shared[0].previous is None
    assert shared[0].reason == "shared"
