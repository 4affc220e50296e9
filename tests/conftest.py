"""Shared fixtures: a fake Datasets API on 127.0.0.1 and a client pointed at it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from nebius_datasets_async import DatasetsClient
from nebius_datasets_async.testing import FakeDatasetsServer

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> dict[str, Any]:
    """A recorded response body from tests/samples, parsed."""
    return json.loads((SAMPLES / name).read_text())


def sample_bytes(name: str) -> bytes:
    """A recorded response body from tests/samples, as bytes."""
    return (SAMPLES / name).read_bytes()


class SleepRecorder:
    """An injectable sleep that records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may pick up a real key or endpoint from the environment."""
    monkeypatch.delenv("NEBIUS_API_KEY", raising=False)
    monkeypatch.delenv("NEBIUS_BASE_URL", raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDatasetsServer]:
    async with FakeDatasetsServer(datasets=20) as server:
        yield server


@pytest.fixture
async def client(fake: FakeDatasetsServer) -> AsyncIterator[DatasetsClient]:
    async with fake.client(timeout=5.0) as c:
        yield c


def _is_server_task(task: asyncio.Task[Any]) -> bool:
    """Tasks of the in-process fake server (its connection handlers), not of the client."""
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", "")
    return name.startswith(("RequestHandler.", "FakeDatasetsServer."))


async def client_tasks_left(settle: float = 1.0) -> set[asyncio.Task[Any]]:
    """The tasks still pending besides this one and the fake server's, once they had up to
    ``settle`` seconds to finish (cancelled work needs a few loop turns to unwind).
    """
    current = asyncio.current_task()
    deadline = asyncio.get_running_loop().time() + settle
    while True:
        pending = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
        left = {t for t in pending if not _is_server_task(t)}
        if not left or asyncio.get_running_loop().time() > deadline:
            return left
        await asyncio.sleep(0.01)


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling server-side state; bounded above
            await asyncio.sleep(0.005)
