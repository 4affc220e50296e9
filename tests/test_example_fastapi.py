"""The FastAPI example (examples/fastapi_service.py) under uvicorn, against the fake: it moves a
dataset through a throttle, exposes the client's metrics, exports its spans and sends the
trace context. Skipped without FastAPI, uvicorn or the OpenTelemetry SDK and Prometheus exporter.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.prometheus")

import aiohttp

from nebius_datasets_async.testing import FakeDatasetsServer

from .redis_server import free_port

ROOT = Path(__file__).parent.parent
KEY = "sk-example-SECRET-42"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


@pytest.mark.slow
async def test_fastapi_example_under_uvicorn() -> None:
    """POST /datasets/{id}/move goes through a 429 and applies the move; /metrics shows two
    request durations (429 and 200), one throttle, one retry, the gate's gauges; the spans
    are exported; the fake saw a W3C traceparent; the key appears in none of it.
    """
    async with FakeDatasetsServer(datasets=5, api_key=KEY) as fake:
        port = free_port()
        env = {
            **os.environ,
            "NEBIUS_API_KEY": KEY,
            "NEBIUS_BASE_URL": fake.base_url,
            "EXAMPLE_CONSOLE_SPANS": "1",
        }
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "uvicorn",
            "examples.fastapi_service:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(200):  # up to 10 s to start
                    try:
                        async with http.get(f"{base}/metrics") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the example did not start")
                dataset_id = fake.dataset_ids[2]
                fake.fail_next(1, status=429, retry_after=0)
                async with http.post(
                    f"{base}/datasets/{dataset_id}/move", params={"folder": "/archive"}
                ) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["folder"] == "/archive"
                async with http.post(
                    f"{base}/datasets/missing/move", params={"folder": "/archive"}
                ) as resp:
                    assert resp.status == 404
                for _ in range(40):  # the last attempt's record may land a moment later
                    async with http.get(f"{base}/metrics") as resp:
                        text = await resp.text()
                    if 'http_response_status_code="404"' in text:
                        break
                    await asyncio.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()

        duration = "http_client_request_duration_seconds_count"
        assert metric(text, duration, http_response_status_code="429") == 1
        assert metric(text, duration, http_response_status_code="200") == 1
        assert metric(text, duration, http_response_status_code="404") == 1
        assert metric(text, "nebius_datasets_gate_throttles_total") == 1
        assert metric(text, "nebius_datasets_gate_retries_total") == 1
        assert metric(text, "nebius_datasets_gate_in_flight") == 0
        assert metric(text, "nebius_datasets_gate_budget") == 500
        assert metric(text, "nebius_datasets_gate_concurrency") >= 8

        patches = [r for r in fake.requests if r.method == "PATCH"]
        assert len(patches) == 3
        for request in patches:
            headers = {k.lower(): v for k, v in request.headers.items()}
            flags = re.fullmatch(
                r"00-[0-9a-f]{32}-[0-9a-f]{16}-([0-9a-f]{2})", headers["traceparent"]
            )
            assert flags is not None
            assert int(flags.group(1), 16) & 1  # sampled

        spans = out.decode()
        names = re.findall(r'"name": "([^"]+)"', spans)
        assert names.count("PATCH") == 2
        assert names.count("PATCH /v1/datasets/{dataset_id}") == 3
        assert f'"nebius.dataset.id": "{dataset_id}"' in spans
        for where in (text, spans, err.decode()):
            assert KEY not in where
            assert "SECRET" not in where
