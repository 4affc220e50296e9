"""pytest plugin (registered through the ``pytest11`` entry point): fixtures for your own tests.

- ``nebius_fake``: a started ``FakeDatasetsServer`` holding 100 datasets. Mark a test with
  ``@pytest.mark.nebius_fake(datasets=..., faults=Faults(...))`` to configure it.
- ``nebius_client``: a ``DatasetsClient`` pointed at ``nebius_fake``, closed after the test.

Both are plain (synchronous) fixtures: the fake serves from a thread and event loop of its own,
and the client works from any loop, so they fit every pytest-asyncio configuration (strict or
auto mode, any loop scope for tests and fixtures). Your async tests still need pytest-asyncio
(``asyncio_mode = "auto"``, or ``@pytest.mark.asyncio`` on each test in strict mode).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ._client import DatasetsClient
from .testing import FakeDatasetsServer

__all__ = ["nebius_client", "nebius_fake"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "nebius_fake(datasets=100, **kwargs): configure the nebius_fake fixture "
        "(keyword arguments of FakeDatasetsServer)",
    )


@pytest.fixture
def nebius_fake(request: pytest.FixtureRequest) -> Iterator[FakeDatasetsServer]:
    """A started fake Datasets API on 127.0.0.1, serving from its own thread and loop."""
    marker = request.node.get_closest_marker("nebius_fake")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    kwargs.setdefault("datasets", 100)
    with FakeDatasetsServer(**kwargs).in_thread() as server:
        yield server


@pytest.fixture
def nebius_client(nebius_fake: FakeDatasetsServer) -> Iterator[DatasetsClient]:
    """A client pointed at ``nebius_fake`` with its key, usable from any event loop."""
    client = nebius_fake.client()
    try:
        yield client
    finally:
        _close(client)


def _close(client: DatasetsClient) -> None:
    """Close the client from a thread of its own, so no event loop of the test is touched.
    Sessions of loops that already ended were closed with them; one of a loop still open
    (a module- or session-scoped loop) is closed when that loop shuts down.
    """
    thread = threading.Thread(target=asyncio.run, args=(client.aclose(),), daemon=True)
    thread.start()
    thread.join(30)
