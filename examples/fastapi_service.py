"""A FastAPI service that shares one DatasetsClient among all its requests, with OpenTelemetry
traces and metrics: the gate's wait, the pace, throttles, retries and the retry budget.

Install and run:

    pip install 'nebius-datasets-async[otel]' fastapi uvicorn opentelemetry-sdk \\
        opentelemetry-exporter-prometheus          # + opentelemetry-exporter-otlp for OTLP
    NEBIUS_API_KEY=... uvicorn examples.fastapi_service:app

Then ``POST /datasets/{dataset_id}/move?folder=/archive`` moves a dataset and
``GET /metrics`` shows the metrics in Prometheus' text format
(``http_client_request_duration_seconds``, ``nebius_datasets_gate_*``). Traces go to an OTLP
collector when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (and the OTLP exporter is installed), to
standard output when ``EXAMPLE_CONSOLE_SPANS=1``, and nowhere otherwise (the trace context is
still sent with every request to the API).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nebius_datasets_async import DatasetsClient, DatasetsError, NotFoundError
from nebius_datasets_async.otel import instrument


def setup_telemetry() -> tuple[TracerProvider, MeterProvider]:
    """The application's OpenTelemetry SDK: Prometheus for metrics, OTLP or the console for
    traces. A library only uses the API; the application chooses this.
    """
    resource = Resource.create({"service.name": "datasets-service"})
    tracer_provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif os.environ.get("EXAMPLE_CONSOLE_SPANS") == "1":
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client for the whole service, made at start-up and closed at shutdown."""
    tracer_provider, meter_provider = setup_telemetry()
    client = DatasetsClient()  # key from $NEBIUS_API_KEY, URL from $NEBIUS_BASE_URL
    instrument(client)  # the global providers set above
    app.state.client = client
    try:
        yield
    finally:
        await client.aclose()
        tracer_provider.shutdown()  # flushes the spans not yet exported
        meter_provider.shutdown()


app = FastAPI(lifespan=lifespan)


@app.post("/datasets/{dataset_id}/move")
async def move(dataset_id: str, folder: str) -> dict[str, Any]:
    """Move one dataset; the client paces and retries as the API asks."""
    client: DatasetsClient = app.state.client
    try:
        dataset = await client.move(dataset_id, folder)
    except NotFoundError:
        raise HTTPException(404, f"no dataset {dataset_id!r}") from None
    except DatasetsError as exc:
        raise HTTPException(502, f"the Datasets API failed: {type(exc).__name__}") from None
    return {"id": dataset.id, "name": dataset.name, "folder": dataset.folder}


@app.get("/metrics")
def prometheus_metrics() -> Response:
    """The metrics in Prometheus' text format, for a scraper."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
