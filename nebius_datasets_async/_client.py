"""DatasetsClient: settings and lifecycle; it owns the transport, the flow control and the
caller that runs the one retry loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import random
import ssl as _ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Self

import aiohttp
from yarl import URL

from ._bulk import BulkOptions, BulkReport, BulkRun, ProgressCallback
from ._call import CallContext, Caller
from ._events import Events, LoggingObserver
from ._exceptions import InvalidArgumentError
from ._flow import Flow, FlowControl
from ._models import Dataset, DatasetUpdate
from ._protocol import build_get, build_patch
from ._retry import RetryPolicy
from ._transport import AiohttpTransport, Transport
from ._validate import check

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
    A root ending in ``/v1`` (a URL copied from the API reference) means the same root: the
    client adds ``/v1/datasets/...`` itself.
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
    root = str(url).rstrip("/")
    if root.endswith("/v1"):
        root = root.removesuffix("/v1")
    return root


def resolve_api_key(api_key: str | None) -> str:
    """The key to use: the argument, else ``$NEBIUS_API_KEY``; refuses none or a malformed one."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if not key:
        raise InvalidArgumentError(
            f"no API key: pass api_key=... or set the {API_KEY_ENV} environment variable"
        )
    if not isinstance(key, str):
        raise InvalidArgumentError(f"the API key must be a str, not {type(key).__name__}")
    if not (key.isascii() and key.isprintable()) or " " in key:
        # Never echo the key itself. HTTP headers are Latin-1 on the server side: a key with
        # other characters could only ever be refused.
        raise InvalidArgumentError(
            "the API key must be printable ASCII without spaces; check for a stray character"
        )
    return key


def fingerprint(base_url: str, api_key: str) -> str:
    """A short, one-way fingerprint of (base URL, key): what flows shared across processes
    key their state by. The key cannot be recovered from it.
    """
    digest = hashlib.blake2b(digest_size=12, person=b"nebius-flow")
    digest.update(base_url.encode())
    digest.update(b"\0")
    digest.update(api_key.encode())
    return digest.hexdigest()


class DatasetsClient:
    """Async client for the Nebius Token Factory Datasets API: the one session manager that
    every call goes through.

    Make one and share it: a whole service, worker or script, any number of tasks, event loops
    and threads. It may be created anywhere (at module level, with no loop running). Every
    request, single or bulk, passes the client's flow control (``FlowControl``: one
    concurrency bound, one pace, one retry budget; ``docs/flow-control.md`` describes how it
    decides). Each event loop gets its own aiohttp session on first use, closed when that
    loop shuts down or when the client closes.

    Arguments (all keyword-only):

    - ``api_key``: the bearer token; ``None`` reads ``$NEBIUS_API_KEY``.
    - ``base_url``: the API root; ``None`` reads ``$NEBIUS_BASE_URL``, else the public API. Plain
      ``http://`` is accepted only for loopback hosts.
    - ``timeout``: seconds for one attempt (connect, send, read the whole response).
    - ``retry``: the ``RetryPolicy`` of every call (a bulk run may narrow it).
    - ``max_concurrency``: requests in flight at once, across all tasks, loops and threads
      (default 64); also the size of each connection pool. Give either this or ``flow``.
    - ``flow``: a flow control of your own, e.g. one ``FlowControl`` shared by several clients
      of the same key.
    - ``transport``: what sends requests (default: aiohttp); ``testing.MockTransport`` answers
      them from a function, with no socket.
    - ``session``: an ``aiohttp.ClientSession`` of your own; it is used as is (in its own event
      loop only) and never closed.
    - ``keepalive``: seconds an idle pooled connection is kept (default 4, below the 5 s of
      uvicorn, the shortest keep-alive in wide use).
    - ``ssl``: TLS verification for client-made sessions: ``True`` (default) verifies, an
      ``ssl.SSLContext`` customises, ``False`` turns verification off (explicitly only).
    - ``observers``: callables handed every event of the client's calls, its bulk runs and
      its flow control (see ``Events`` and ``docs/observability.md``); more can subscribe
      later through ``client.events``. The library's log lines are one such subscriber.

    Raises ``InvalidArgumentError`` (a ``ValueError``) at construction for a missing or
    malformed key, a bad URL or bad limits.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int | None = None,
        flow: Flow | None = None,
        transport: Transport | None = None,
        session: aiohttp.ClientSession | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        keepalive: float = 4.0,
        user_agent: str | None = None,
        ssl: _ssl.SSLContext | bool = True,
        observers: Iterable[Callable[[Any], None]] = (),
        _sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        _rand: Callable[[], float] = random.random,
    ) -> None:
        key = resolve_api_key(api_key)
        self._base_url = resolve_base_url(base_url)
        check(
            isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0,
            f"timeout must be a number > 0: {timeout!r}",
        )
        check(
            isinstance(keepalive, int | float) and keepalive > 0,
            f"keepalive must be a number > 0: {keepalive!r}",
        )
        check(
            session is None or isinstance(session, aiohttp.ClientSession),
            "session must be an aiohttp.ClientSession",
        )
        check(session is None or transport is None, "give a session or a transport, not both")
        policy = retry if retry is not None else RetryPolicy()
        check(isinstance(policy, RetryPolicy), "retry must be a RetryPolicy")
        if flow is None:
            flow = FlowControl(
                max_concurrency=DEFAULT_MAX_CONCURRENCY
                if max_concurrency is None
                else max_concurrency
            )
        else:
            check(isinstance(flow, Flow), "flow must be a FlowControl (or implement Flow)")
            check(
                max_concurrency is None or max_concurrency == flow.max_concurrency,
                "max_concurrency belongs to the flow control when one is given",
            )
        self._flow: Flow = flow
        flow.bind(fingerprint(self._base_url, key))
        if transport is None:
            transport = AiohttpTransport(
                base_url=self._base_url,
                headers={"Authorization": f"Bearer {key}", "User-Agent": user_agent or USER_AGENT},
                timeout=float(timeout),
                max_connections=flow.max_concurrency,
                max_response_bytes=max_response_bytes,
                keepalive=float(keepalive),
                session=session,
                ssl=ssl,
            )
        self._transport = transport
        self._events = Events([LoggingObserver(logger), *observers])
        # The gate's events (pace, pauses, budget) reach the client's subscribers too.
        subscribe = getattr(flow, "subscribe", None)
        if subscribe is not None:
            subscribe(self._events.emit)
        self._caller = Caller(
            transport=transport,
            flow=flow,
            policy=policy,
            timeout=float(timeout),
            sleep=_sleep,
            rand=_rand,
            events=self._events,
        )

    def __repr__(self) -> str:
        return f"<DatasetsClient {self._base_url} max_concurrency={self.max_concurrency}>"

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
        """Close every session the client made, in every event loop (never a caller's own
        session); idempotent. Calls made afterwards raise ``ClientClosedError``.
        """
        unsubscribe = getattr(self._flow, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(self._events.emit)
        await self._transport.aclose()

    # -- properties --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API root this client talks to."""
        return self._base_url

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy."""
        return self._caller.policy

    @property
    def flow(self) -> Flow:
        """The flow control every request of this client passes."""
        return self._flow

    @property
    def events(self) -> Events:
        """The client's event stream: ``client.events.subscribe(observer)`` adds a subscriber
        (see ``docs/observability.md`` for the events).
        """
        return self._events

    @property
    def max_concurrency(self) -> int:
        """The most requests this client has in flight at once."""
        return self._flow.max_concurrency

    @property
    def in_flight(self) -> int:
        """Requests in flight right now (through this client's flow control)."""
        return self._flow.state().in_flight

    # -- single calls ------------------------------------------------------------------------

    async def get_dataset(self, dataset_id: str, *, context: CallContext | None = None) -> Dataset:
        """Fetch one dataset (``GET /v1/datasets/{dataset_id}``), retrying per the policy.

        Raises ``InvalidArgumentError`` for an unusable id, ``NotFoundError`` and the other
        ``APIStatusError`` subclasses, ``APIConnectionError`` / ``APITimeoutError`` after the
        last attempt, ``ResponseValidationError`` for a body that is not a Dataset.
        ``context`` is as for ``apply`` (a dry run of the command line reads through it).
        """
        return await self._caller.call(build_get(dataset_id), context)

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

    async def apply(self, update: DatasetUpdate, *, context: CallContext | None = None) -> Dataset:
        """Apply one ``DatasetUpdate`` and return the updated dataset.

        ``context`` is for engines built on the client (the bulk run is one): a
        ``CallContext`` with its own retry policy, live counters and stop signal.
        """
        if not isinstance(update, DatasetUpdate):
            raise InvalidArgumentError(f"expected a DatasetUpdate, got {type(update).__name__}")
        return await self._caller.call(build_patch(update), context)

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
        async with self.patch_many(
            updates, concurrency=concurrency, options=options, progress=progress
        ) as run:
            return await run.collect(keep_successes=keep_successes)

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
