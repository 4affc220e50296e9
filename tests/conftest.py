"""Shared fixtures: a fake Datasets API on 127.0.0.1 and a client pointed at it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
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
