"""Against the real server stack: a FastAPI app of the contract under uvicorn.

The same requests go to it and to the package's fake, which must answer alike (statuses,
``detail`` shapes, 422 lists, routing of odd ids, 401 on a bad key), so the fake stays honest;
and the client is checked against what uvicorn does that a fake might not (plain-text 503s
under ``--limit-concurrency``, keep-alive connections closed while idle).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from nebius_datasets_async import DatasetsClient, DatasetUpdate, RetryPolicy
from nebius_datasets_async.testing import FakeDatasetsServer, fake_dataset_id

ROOT = Path(__file__).resolve().parent.parent
KEY = "contract-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def uvicorn(*options: str, datasets: int = 100, latency: float = 0.0) -> Iterator[str]:
    """Serve tests/contract/app.py with uvicorn in a subprocess; yield its base URL."""
    port = _free_port()
    env = {
        **os.environ,
        "CONTRACT_API_KEY": KEY,
        "CONTRACT_DATASETS": str(datasets),
        "CONTRACT_LATENCY": str(latency),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.contract.app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", *options],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn did not start: {proc.stderr}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module")
def fastapi_url() -> Iterator[str]:
    with uvicorn() as url:
        yield url


@pytest.fixture
async def fake_url() -> AsyncIterator[str]:
    async with FakeDatasetsServer(datasets=100, api_key=KEY) as fake:
        yield fake.base_url


ID = fake_dataset_id(3)

CASES: list[tuple[str, str, str, bytes | None, str]] = [
    # (name, method, encoded path after /v1/datasets/, body, key)
    ("get", "GET", ID, None, KEY),
    ("get missing", "GET", "no-such-id", None, KEY),
    ("get odd id", "GET", "a%3Fb%23c%20d%25", None, KEY),
    ("get slash id", "GET", "a%2Fb", None, KEY),
    ("get trailing slash", "GET", ID + "/", None, KEY),
    ("get wrong key", "GET", ID, None, "not-the-key"),
    ("patch name", "PATCH", ID, b'{"name":"x"}', KEY),
    ("patch both", "PATCH", ID, b'{"name":"x","folder":"/f"}', KEY),
    ("patch nothing", "PATCH", ID, b"{}", KEY),
    ("patch nulls", "PATCH", ID, b'{"name":null}', KEY),
    ("patch empty body", "PATCH", ID, None, KEY),
    ("patch empty name", "PATCH", ID, b'{"name":""}', KEY),
    ("patch number", "PATCH", ID, b'{"folder":5}', KEY),
    ("patch extra", "PATCH", ID, b'{"name":"x","owner":"me"}', KEY),
    ("patch bad json", "PATCH", ID, b"{not json", KEY),
    ("patch list", "PATCH", ID, b"[1]", KEY),
    ("patch missing", "PATCH", "no-such-id", b'{"name":"x"}', KEY),
    ("patch wrong key", "PATCH", ID, b'{"name":"x"}', "not-the-key"),
]


async def _ask(base: str, method: str, path: str, body: bytes | None, key: str) -> Any:
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    url = URL(f"{base}/v1/datasets/{path}", encoded=True)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body, headers=headers, allow_redirects=False) as resp,
    ):
        text = await resp.text()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
    return resp.status, _shape(payload)


def _shape(payload: Any) -> Any:
    """What must agree: a Dataset's fields, or the kind of detail (a 422's locs and types)."""
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        if isinstance(detail, list):
            return [(tuple(e["loc"]), e["type"]) for e in detail]
        return type(detail).__name__
    if isinstance(payload, dict):
        return sorted(payload)
    return type(payload).__name__


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_fake_answers_like_fastapi(
    case: tuple[str, str, str, bytes | None, str], fastapi_url: str, fake_url: str
) -> None:
    """The fake and the FastAPI app give the same status and the same shape of answer."""
    _, method, path, body, key = case
    real = await _ask(fastapi_url, method, path, body, key)
    ours = await _ask(fake_url, method, path, body, key)
    assert ours == real


async def test_integral_float_for_an_integer_field_decodes(fastapi_url: str) -> None:
    """A pydantic-based server may send created_at as 1760109124.0: it decodes as an int."""
    async with DatasetsClient(api_key=KEY, base_url=fastapi_url) as client:
        ds = await client.get_dataset("float-created-at")
    assert ds.created_at == 1760109124
    assert type(ds.created_at) is int


async def test_busy_uvicorn_is_paced_not_failed() -> None:
    """uvicorn --limit-concurrency 8 answers excess requests with a plain-text 503 and no
    Retry-After: the gate cuts concurrency and retries without draining the budget, so every
    update is applied at <= 1.5 requests per update.
    """
    n = 2000
    with uvicorn("--limit-concurrency", "8", datasets=n, latency=0.005) as url:
        async with DatasetsClient(api_key=KEY, base_url=url) as client:
            updates = [DatasetUpdate(fake_dataset_id(i), name=f"busy-{i}") for i in range(n)]
            report = await client.patch_all(updates, concurrency=64)
            state = client.flow.state()
            sample = await client.get_dataset(fake_dataset_id(n - 1))
    assert report.ok, report.summary()
    assert state.overloads > 0  # the server really was saturated
    assert state.requests <= 1.5 * n, state
    assert sample.name == f"busy-{n - 1}"


async def test_pooled_connections_closed_by_uvicorn_while_idle_do_not_fail_calls() -> None:
    """uvicorn closes idle keep-alive connections (here after 1 s); calls after idle gaps
    around that time never fail, even with retries off: a dead pooled connection is resent
    on a fresh one.
    """
    with uvicorn("--timeout-keep-alive", "1") as url:
        async with DatasetsClient(
            api_key=KEY, base_url=url, retry=RetryPolicy.never(), keepalive=30
        ) as client:
            rng = random.Random(7)
            for i in range(8):
                await asyncio.gather(
                    *(client.rename(fake_dataset_id(k), f"gap-{i}") for k in range(4))
                )
                await asyncio.sleep(rng.uniform(0.95, 1.05))
            final = await client.get_dataset(fake_dataset_id(0))
    assert final.name == "gap-7"
