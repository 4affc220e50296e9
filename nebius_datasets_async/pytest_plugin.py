"""pytest plugin (registered through the ``pytest11`` entry point): fixtures for your own tests.

- ``nebius_fake``: a started ``FakeDatasetsServer`` holding 100 datasets. Mark a test with
  ``@pytest.mark.nebius_fake(datasets=..., faults=Faults(...))`` to configure it.
- ``nebius_client``: a ``DatasetsClient`` pointed at ``nebius_fake``, closed after the test.

Both are async fixtures and need pytest-asyncio (``asyncio_mode = "auto"`` or the
``@pytest.mark.asyncio`` marker on the test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the plugin must not break a suite without it

    @pytest.fixture
    def nebius_fake() -> Any:
        pytest.skip("the nebius_fake fixture needs pytest-asyncio")

    @pytest.fixture
    def nebius_client() -> Any:
        pytest.skip("the nebius_client fixture needs pytest-asyncio")

else:

    @pytest_asyncio.fixture
    async def nebius_fake(  # type: ignore[misc]
        request: pytest.FixtureRequest,
    ) -> AsyncIterator[FakeDatasetsServer]:
        """A started fake Datasets API on 127.0.0.1."""
        marker = request.node.get_closest_marker("nebius_fake")
        kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
        kwargs.setdefault("datasets", 100)
        async with FakeDatasetsServer(**kwargs) as server:
            yield server

    @pytest_asyncio.fixture
    async def nebius_client(  # type: ignore[misc]
        nebius_fake: FakeDatasetsServer,
    ) -> AsyncIterator[DatasetsClient]:
        """A client pointed at ``nebius_fake`` with its key."""
        async with nebius_fake.client() as client:
            yield client
