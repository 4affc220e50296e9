"""DatasetsClient: lifecycle, and one call = protocol + transport + retry."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import ssl as _ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Self

import aiohttp
from yarl import URL

from ._bulk import BulkOptions, BulkReport, BulkRun, PatchOutcome, ProgressCallback
from ._exceptions import APIConnectionError, APIStatusError, InvalidArgumentError
from ._models import Dataset, DatasetUpdate
from ._protocol import Request, build_get, build_patch, decode_dataset
from ._retry import RetryPolicy
from ._transport import Transport

__all__ = ["DEFAULT_BASE_URL", "DatasetsClient"]

logger = logging.getLogger("nebius_datasets_async")

DEFAULT_BASE_URL = "https://api.tokenfactory.nebius.com"
API_KEY_ENV = "NEBIUS_API_KEY"
BASE_URL_ENV = "NEBIUS_BASE_URL"
DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024

try:
    __version__ = version("nebius-datasets-async")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

USER_AGENT = f"nebius-datasets-async/{__version__} aiohttp/{aiohttp.__version__}"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_base_url(base_url: str | None) -> str:
    """The API root to use: the argument, else ``$NEBIUS_BASE_URL``, else the public API.

    Refuses plain ``http://`` unless the host is loopback, so a key never travels in clear text.
    """
    raw = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    try:
        url = URL(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"base_url {raw!r} is not a URL: {exc}") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise InvalidArgumentError(f"base_url {raw!r} must be an absolute http(s) URL")
    if url.scheme == "http" and not _is_loopback(url.host):
        raise InvalidArgumentError(
            f"base_url {raw!r} uses plain http to a non-loopback host; use https so that "
            "the API key is never sent in clear text"
        )
    if url.query_string or url.fragment or url.user or url.password:
        raise InvalidArgumentError("base_url must not carry a query, a fragment or credentials")
    return str(url).rstrip("/")


def resolve_api_key(api_key: str | None) -> str:
    """The key to use: the argument, else ``$NEBIUS_API_KEY``; refuses none or a malformed one."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if not key:
        raise InvalidArgumentError(
            f"no API key: pass api_key=... or set the {API_KEY_ENV} environment variable"
        )
    if not isinstance(key, str) or not key.isprintable() or key != key.strip() or " " in key:
        # Never echo the key itself.
        raise InvalidArgumentError("the API key holds whitespace or control characters")
    return key


class DatasetsClient:
    """Async client for the Nebius Token Factory Datasets API.

    Use it as ``async with DatasetsClient() as client:``; one client is meant to be shared by a
    whole service or worker.

    Arguments (all keyword-only):

    - ``api_key``: the bearer token; ``None`` reads ``$NEBIUS_API_KEY``.
    - ``base_url``: the API root; ``None`` reads ``$NEBIUS_BASE_URL``, else the public API. Plain
      ``http://`` is accepted only for loopback hosts.
    - ``session``: an ``aiohttp.ClientSession`` of your own; it is used as is and never closed.
      Without one, the client creates a session on first use and closes it on exit.
    - ``timeout``: seconds for one attempt (connect, send, read the whole response).
    - ``retry``: the ``RetryPolicy`` for single calls (the bulk engine also reads its limits).
    - ``max_concurrency``: requests in flight from this client at once, across all tasks; the
      connection pool of a client-created session has the same size.
    - ``ssl``: TLS verification for a client-created session: ``True`` (default) verifies,
      an ``ssl.SSLContext`` customises, ``False`` turns verification off (explicitly only).

    Raises ``InvalidArgumentError`` (a ``ValueError``) at construction for a missing key, a bad
    URL or bad limits.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        user_agent: str | None = None,
        ssl: _ssl.SSLContext | bool = True,
        _sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        _rand: Callable[[], float] = random.random,
    ) -> None:
        key = resolve_api_key(api_key)
        self._base_url = resolve_base_url(base_url)
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise InvalidArgumentError(f"max_concurrency must be an int >= 1: {max_concurrency!r}")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise InvalidArgumentError(f"timeout must be a number > 0: {timeout!r}")
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise InvalidArgumentError("session must be an aiohttp.ClientSession")
        self._retry = retry if retry is not None else RetryPolicy()
        if not isinstance(self._retry, RetryPolicy):
            raise InvalidArgumentError("retry must be a RetryPolicy")
        self._timeout = float(timeout)
        self._max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._in_flight = 0
        self._sleep = _sleep
        self._rand = _rand
        self._transport = Transport(
            base_url=self._base_url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": user_agent or USER_AGENT},
            timeout=self._timeout,
            max_connections=max_concurrency,
            max_response_bytes=max_response_bytes,
            session=session,
            ssl=ssl,
        )

    def __repr__(self) -> str:
        return f"<DatasetsClient {self._base_url} max_concurrency={self._max_concurrency}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session the client created (never a caller's own); idempotent."""
        await self._transport.aclose()

    # -- properties --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API root this client talks to."""
        return self._base_url

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy."""
        return self._retry

    @property
    def max_concurrency(self) -> int:
        """The most requests this client has in flight at once."""
        return self._max_concurrency

    @property
    def in_flight(self) -> int:
        """Requests in flight right now."""
        return self._in_flight

    # -- single calls ------------------------------------------------------------------------

    async def get_dataset(self, dataset_id: str) -> Dataset:
        """Fetch one dataset (``GET /v1/datasets/{dataset_id}``), retrying per the policy.

        Raises ``InvalidArgumentError`` for an unusable id, ``NotFoundError`` and the other
        ``APIStatusError`` subclasses, ``APIConnectionError`` / ``APITimeoutError`` after the
        last attempt, ``ResponseValidationError`` for a body that is not a Dataset.
        """
        return await self._call(build_get(dataset_id))

    async def patch_dataset(
        self, dataset_id: str, *, name: str | None = None, folder: str | None = None
    ) -> Dataset:
        """Set a dataset's ``name`` and/or ``folder`` and return the updated dataset.

        ``None`` leaves a field as it is (it is left out of the body). Raises
        ``InvalidArgumentError`` (a ``ValueError``) before sending anything for an empty id, an
        empty name or folder, or neither given; otherwise as ``get_dataset``.
        """
        return await self.apply(DatasetUpdate(dataset_id, name=name, folder=folder))

    async def rename(self, dataset_id: str, name: str) -> Dataset:
        """Give a dataset a new name, leaving its folder as it is."""
        return await self.apply(DatasetUpdate(dataset_id, name=name))

    async def move(self, dataset_id: str, folder: str) -> Dataset:
        """Move a dataset to another folder, leaving its name as it is."""
        return await self.apply(DatasetUpdate(dataset_id, folder=folder))

    async def apply(self, update: DatasetUpdate) -> Dataset:
        """Apply one ``DatasetUpdate`` and return the updated dataset."""
        if not isinstance(update, DatasetUpdate):
            raise InvalidArgumentError(f"expected a DatasetUpdate, got {type(update).__name__}")
        return await self._call(build_patch(update))

    async def _attempt(self, request: Request, time_limit: float | None = None) -> Dataset:
        """One try of one request, within the client's concurrency limit; no retry."""
        async with self._slots:
            self._in_flight += 1
            try:
                response = await self._transport.send(request, time_limit)
            finally:
                self._in_flight -= 1
        return decode_dataset(request, response)

    async def _call(self, request: Request) -> Dataset:
        policy = self._retry
        loop = asyncio.get_running_loop()
        # Time spent so far: attempts as measured, plus the backoff delays asked for.
        elapsed = 0.0
        attempt = 0
        while True:
            attempt += 1
            time_limit = None
            if policy.deadline is not None:
                time_limit = min(self._timeout, policy.deadline - elapsed)
            started = loop.time()
            try:
                return await self._attempt(request, time_limit)
            except (APIConnectionError, APIStatusError) as exc:
                elapsed += loop.time() - started
                delay = self._retry_delay(exc, attempt, elapsed)
                if delay is None:
                    raise
                logger.info(
                    "retrying %s %s in %.2fs after attempt %d: %s",
                    request.method,
                    request.path,
                    delay,
                    attempt,
                    exc,
                )
                await self._sleep(delay)
                elapsed += delay

    def _retry_delay(self, exc: Exception, attempt: int, elapsed: float) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up and raise ``exc``."""
        policy = self._retry
        if attempt >= policy.max_attempts or not policy.is_retryable(exc):
            return None
        retry_after = exc.retry_after if isinstance(exc, APIStatusError) else None
        delay = policy.delay(attempt, retry_after, self._rand)
        if policy.deadline is not None and elapsed + delay >= policy.deadline:
            return None
        return delay

    # -- many updates ------------------------------------------------------------------------

    def patch_many(
        self,
        updates: Iterable[DatasetUpdate] | AsyncIterable[DatasetUpdate],
        *,
        concurrency: int | None = None,
        options: BulkOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> BulkRun:
        """Apply many updates in parallel; iterate the returned ``BulkRun`` for one
        ``PatchOutcome`` per update, in completion order.

        ``updates`` may be any iterable or async iterable of ``DatasetUpdate`` and is read
        lazily. ``concurrency`` (default and ceiling: the client's ``max_concurrency``) is the
        number of workers; ``options`` holds the other knobs (``BulkOptions``); ``progress`` is
        called with a ``BulkProgress`` snapshot every ``options.progress_interval`` seconds and
        once at the end. An API error never raises out of the iteration: it is the ``error`` of
        that update's outcome. ``async with client.patch_many(...) as run:`` guarantees that
        leaving the block early cancels the work in flight.
        """
        return BulkRun(self, updates, concurrency=concurrency, options=options, progress=progress)

    async def patch_all(
        self,
        updates: Iterable[DatasetUpdate] | AsyncIterable[DatasetUpdate],
        *,
        concurrency: int | None = None,
        options: BulkOptions | None = None,
        progress: ProgressCallback | None = None,
        keep_successes: bool = False,
    ) -> BulkReport:
        """Apply many updates and return a ``BulkReport``: totals, every failed or skipped
        outcome, requests, retries and time (``keep_successes=True`` keeps applied outcomes
        too). Call ``report.raise_for_failures()`` to turn any failure into a ``BulkError``.
        """
        failures: list[PatchOutcome] = []
        successes: list[PatchOutcome] = []
        async with self.patch_many(
            updates, concurrency=concurrency, options=options, progress=progress
        ) as run:
            async for outcome in run:
                if not outcome.ok:
                    failures.append(outcome)
                elif keep_successes:
                    successes.append(outcome)
        return run.report(failures, successes)

    async def rename_many(
        self,
        names: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        concurrency: int | None = None,
        options: BulkOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> BulkReport:
        """Rename many datasets, from ``{dataset_id: new_name}`` or ``(id, name)`` pairs."""
        pairs = names.items() if isinstance(names, Mapping) else names
        return await self.patch_all(
            (DatasetUpdate(i, name=n) for i, n in pairs),
            concurrency=concurrency,
            options=options,
            progress=progress,
        )

    async def move_many(
        self,
        dataset_ids: Iterable[str] | AsyncIterable[str],
        folder: str,
        *,
        concurrency: int | None = None,
        options: BulkOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> BulkReport:
        """Move many datasets into one ``folder``; a bad folder is refused before sending."""
        DatasetUpdate("-", folder=folder)  # validates the folder once, up front
        return await self.patch_all(
            _map_ids(dataset_ids, lambda i: DatasetUpdate(i, folder=folder)),
            concurrency=concurrency,
            options=options,
            progress=progress,
        )


def _map_ids(
    ids: Iterable[str] | AsyncIterable[str], make: Callable[[str], DatasetUpdate]
) -> Iterable[DatasetUpdate] | AsyncIterable[DatasetUpdate]:
    if isinstance(ids, AsyncIterable):

        async def gen() -> AsyncIterator[DatasetUpdate]:
            async for i in ids:
                yield make(i)

        return gen()
    return (make(i) for i in ids)
