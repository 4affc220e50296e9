"""A faithful fake of the Token Factory Datasets API, for tests (yours and ours) and the demo.

::

    async with FakeDatasetsServer(datasets=100) as fake:
        async with fake.client() as client:
            await client.rename(fake.dataset_ids[0], "renamed")
        assert fake.store[fake.dataset_ids[0]]["name"] == "renamed"

It is a real ``aiohttp.web`` server on 127.0.0.1 (a free port), so everything between your code
and the socket is exercised. It answers ``GET`` and ``PATCH /v1/datasets/{dataset_id}`` as the
published contract says: the bearer key is checked (401), unknown ids are 404, bodies are
validated as FastAPI does (422 with ``{"detail": [{"loc", "msg", "type"}]}``), and paths are
routed as Starlette routes them: percent-decoded first, so an id holding ``%2F`` does not
match (404), and a trailing ``/`` is redirected (307) to the path without it.

Faults are injected from a ``Faults`` value, seeded and repeatable: the fault an attempt gets
depends only on the seed, the dataset id and how many requests that id has had, not on timing.
``fail_next()`` scripts exact scenarios. ``stats`` counts requests, statuses and the most
requests ever in flight. ``requests`` logs every request received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hashlib
import inspect
import json
import math
import random
import secrets
import selectors
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote

import aiohttp
import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ._protocol import Request, Response

if TYPE_CHECKING:
    from ._client import DatasetsClient

__all__ = [
    "AioresponsesResponse",
    "Faults",
    "FakeDatasetsServer",
    "MockTransport",
    "RecordedRequest",
    "ServerStats",
    "VirtualLoop",
    "fake_dataset_id",
    "json_response",
    "make_dataset",
    "run_virtual",
]

T = TypeVar("T")

_PREFIX = "/v1/datasets/"
_JSON = "application/json"


def _probability(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


@attrs.frozen(kw_only=True)
class Faults:
    """What the fake does wrong, and how often. Probabilities are per request.

    - ``rate_429`` (with ``retry_after`` seconds in ``Retry-After``, or none if ``None``),
      ``rate_500``, ``rate_502``, ``rate_503``: answer that status without applying the change.
    - ``rate_500_after_apply``: apply the change, then answer 500.
    - ``rate_reset``: close the connection without answering.
    - ``rate_slow``: wait ``slow_delay`` seconds before answering (to exceed a client timeout).
    - ``rate_malformed``: a 200 whose body is truncated JSON or an HTML page.
    - ``latency``: seconds every request waits before it is handled.
    - ``answer_delay``: seconds every answer waits after its request was handled (counted by
      the limits, applied) before it is sent: ``latency=L / 2, answer_delay=L / 2`` is a
      server that counts a request as it arrives, half a round trip of ``L`` after it left.
    - ``rate_limit`` / ``burst``: a token bucket of ``rate_limit`` requests per second holding
      ``burst`` tokens; a request finding it empty gets 429 with ``Retry-After:
      rate_limit_retry_after``.
    - ``window_limit`` / ``window`` / ``window_kind``: at most ``window_limit`` requests in any
      ``window`` seconds, counted in fixed windows (``"fixed"``) or over the last ``window``
      seconds (``"sliding"``); a request over the quota gets 429 with ``Retry-After`` set to
      the whole seconds until a request would be admitted again.
    - ``limit_headers``: send ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``
      and ``x-ratelimit-reset-requests`` (seconds until the quota is full again) with every
      answer of a rate-limited fake.
    - ``seed``: makes every draw repeatable.
    """

    rate_429: float = attrs.field(default=0.0, validator=_probability)
    retry_after: float | None = 1.0
    rate_500: float = attrs.field(default=0.0, validator=_probability)
    rate_502: float = attrs.field(default=0.0, validator=_probability)
    rate_503: float = attrs.field(default=0.0, validator=_probability)
    rate_500_after_apply: float = attrs.field(default=0.0, validator=_probability)
    rate_reset: float = attrs.field(default=0.0, validator=_probability)
    rate_slow: float = attrs.field(default=0.0, validator=_probability)
    slow_delay: float = 5.0
    rate_malformed: float = attrs.field(default=0.0, validator=_probability)
    latency: float = 0.0
    answer_delay: float = 0.0
    rate_limit: float | None = None
    burst: int = 10
    rate_limit_retry_after: float | None = 1.0
    window_limit: int | None = None
    window: float = 10.0
    window_kind: str = attrs.field(
        default="fixed", validator=attrs.validators.in_(("fixed", "sliding"))
    )
    limit_headers: bool = False
    seed: int = 0


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request as the fake received it: ``dataset_id`` is percent-decoded (``None`` when
    the path is not a dataset path), ``body`` is raw and ``json`` its parsed form, if any.
    """

    method: str
    raw_path: str
    dataset_id: str | None
    headers: Mapping[str, str]
    body: bytes
    received_at: float

    @property
    def json(self) -> Any:
        """The body parsed as JSON, or ``None`` if it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@attrs.define
class ServerStats:
    """Counters of the fake: requests, responses by status, resets and concurrency."""

    in_flight_by_id: Counter[str] = attrs.Factory(Counter)

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    #: The most requests for one dataset id ever in flight at once.
    max_in_flight_per_id: int = 0
    resets: int = 0
    applied: int = 0
    statuses: Counter[int] = attrs.Factory(Counter)


@attrs.frozen
class _Scripted:
    status: int
    retry_after: float | None
    apply: bool
    reset: bool
    detail: str | None


def fake_dataset_id(index: int, *, seed: int = 0) -> str:
    """The id ``make_dataset(index, seed=seed)`` (and so the fake's store) gives a record."""
    return hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:32]


def make_dataset(index: int, *, seed: int = 0, **fields: Any) -> dict[str, Any]:
    """A realistic Dataset record (as JSON) per the published contract; ``fields`` override."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()
    record: dict[str, Any] = {
        "id": digest[:32],
        "name": f"dataset-{index:06d}",
        "status": "READY",
        "schema": [
            {"name": "text", "type": {"name": "string"}},
            {"name": "label", "type": {"name": "option", "item": {"name": "string"}}},
        ],
        "metadata": {"source": "fake", "rows": 1000 + index},
        "folder": "/incoming",
        "current_version": digest[32:54],
        "created_at": 1760109124 + index,
        "error": None,
        "current_version_origin": {"type": "s3", "bucket": "datasets-fake"},
        "type": "dataset",
        "ai_project_id": "project-fake",
    }
    record.update(fields)
    return record


def _validation_error(loc: list[Any], msg: str, kind: str, value: Any = None) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind, "input": value}


def _validate_patch(body: bytes) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The fields to set, or FastAPI-style validation errors."""
    try:
        obj = json.loads(body) if body else None
    except ValueError as exc:
        position = exc.pos if isinstance(exc, json.JSONDecodeError) else 0
        return None, [
            _validation_error(["body", position], "JSON decode error", "json_invalid", {})
        ]
    if obj is None:
        return None, [_validation_error(["body"], "Field required", "missing")]
    if not isinstance(obj, dict):
        return None, [
            _validation_error(
                ["body"], "Input should be a valid dictionary", "model_attributes_type", obj
            )
        ]
    errors = []
    for key, value in obj.items():
        if key not in ("name", "folder"):
            errors.append(
                _validation_error(
                    ["body", key], "Extra inputs are not permitted", "extra_forbidden"
                )
            )
        elif value is not None and not isinstance(value, str):
            errors.append(
                _validation_error(["body", key], "Input should be a valid string", "string_type")
            )
        elif isinstance(value, str) and len(value) < 1:
            errors.append(
                _validation_error(
                    ["body", key],
                    "String should have at least 1 character",
                    "string_too_short",
                    value,
                )
            )
    if errors:
        return None, errors
    return {k: v for k, v in obj.items() if v is not None}, []


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class FakeDatasetsServer:
    """An in-memory Datasets API on 127.0.0.1; see the module docstring.

    Arguments: ``datasets`` (how many realistic records to create, or the records themselves),
    ``api_key`` (random by default), ``faults`` (a ``Faults``), ``port`` (0: a free one),
    ``record_requests`` (keep the request log; turn off for very long runs),
    ``shutdown_timeout`` (seconds ``stop()`` lets requests in flight finish).
    """

    def __init__(
        self,
        datasets: int | Iterable[Mapping[str, Any]] = 0,
        *,
        api_key: str | None = None,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record_requests: bool = True,
        shutdown_timeout: float = 0.5,
    ) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.api_key = api_key or f"fake-{secrets.token_hex(16)}"
        self.faults = faults or Faults()
        self.host = host
        self.port = port
        self.record_requests = record_requests
        records = (
            (make_dataset(i, seed=self.faults.seed) for i in range(datasets))
            if isinstance(datasets, int)
            else (copy.deepcopy(dict(r)) for r in datasets)
        )
        #: The datasets by id, as JSON records; tests may read and change them.
        self.store: dict[str, dict[str, Any]] = {r["id"]: r for r in records}
        #: Every request received, in order (when ``record_requests``).
        self.requests: list[RecordedRequest] = []
        self.stats = ServerStats()
        self._script: deque[_Scripted] = deque()
        self._seen: Counter[str] = Counter()
        self._tokens = float(self.faults.burst)
        self._refilled = time.monotonic()
        self._window_start = time.monotonic()
        self._window_count = 0
        self._window_times: deque[float] = deque()
        self._runner: web.AppRunner | None = None
        self._connections: set[asyncio.Transport] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: pass it as the client's ``base_url``."""
        if self._runner is None:
            raise RuntimeError("the fake server is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections open to this server right now."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    @property
    def dataset_ids(self) -> list[str]:
        """The ids in the store, in insertion order."""
        return list(self.store)

    async def start(self) -> None:
        """Start listening (on ``port``, or a free port when it is 0)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)  # any path, even with \n
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.shutdown_timeout
        )
        await self._runner.setup()
        if self.port == 0:
            self.port = _free_port(self.host)
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeDatasetsServer:
        await self.start()
        return self

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[FakeDatasetsServer]:
        """Serve from a thread of its own, with its own event loop, for as long as the block
        runs: ``with FakeDatasetsServer(datasets=10).in_thread() as fake: ...``. Usable from
        synchronous code, and from any event loop (the fake never shares yours). Read
        ``store`` and ``stats`` once the calls that change them have returned.
        """
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        thread = threading.Thread(
            target=self._serve_forever, args=(loop, ready), name="nebius-fake", daemon=True
        )
        thread.start()
        if not ready.wait(30) or self._runner is None:
            raise RuntimeError("the fake server did not start")
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)

    def _serve_forever(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.start())
        finally:
            ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def client(self, **kwargs: Any) -> DatasetsClient:
        """A ``DatasetsClient`` pointed at this server with its key (``kwargs`` are passed on)."""
        from ._client import DatasetsClient

        kwargs.setdefault("api_key", self.api_key)
        kwargs.setdefault("base_url", self.base_url)
        return DatasetsClient(**kwargs)

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        retry_after: float | None = None,
        apply: bool = False,
        reset: bool = False,
        detail: str | None = None,
    ) -> None:
        """Make the next ``n`` requests fail: answer ``status`` (with ``Retry-After`` if given;
        after applying the change if ``apply``), or close the connection if ``reset``.
        """
        for _ in range(n):
            self._script.append(_Scripted(status, retry_after, apply, reset, detail))

    def applied_requests(self, dataset_id: str | None = None) -> list[RecordedRequest]:
        """Logged PATCH requests (for one id, if given)."""
        return [
            r
            for r in self.requests
            if r.method == "PATCH" and (dataset_id is None or r.dataset_id == dataset_id)
        ]

    # -- the handler -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        key = request.raw_path
        stats.in_flight_by_id[key] += 1
        stats.max_in_flight_per_id = max(stats.max_in_flight_per_id, stats.in_flight_by_id[key])
        try:
            response = await self._respond(request)
            if self.faults.answer_delay:
                await asyncio.sleep(self.faults.answer_delay)
        finally:
            stats.in_flight -= 1
            stats.in_flight_by_id[key] -= 1
            if not stats.in_flight_by_id[key]:
                del stats.in_flight_by_id[key]
        if response is not None:
            stats.statuses[response.status] += 1
            return response
        stats.resets += 1
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError  # the connection is gone; nothing to send

    async def _respond(self, request: web.Request) -> web.StreamResponse | None:
        body = await request.read()
        raw_path = request.raw_path.split("?", 1)[0]
        path = _decoded(raw_path)
        dataset_id = _dataset_id(path)
        # Starlette's redirect_slashes: a trailing "/" goes to the path without it, if it routes
        stripped = path.rstrip("/") if path is not None and path.endswith("/") else None
        if dataset_id is None and stripped is not None and _dataset_id(stripped) is not None:
            return web.Response(status=307, headers={"Location": quote(stripped, safe="/")})
        if self.record_requests:
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    raw_path=request.raw_path,
                    dataset_id=dataset_id,
                    headers=dict(request.headers),
                    body=body,
                    received_at=time.monotonic(),
                )
            )
        faults = self.faults
        if faults.latency:
            await asyncio.sleep(faults.latency)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _json_response(401, {"detail": "Invalid or missing API key"})
        if dataset_id is None:
            return _json_response(404, {"detail": "Not Found"})
        if request.method not in ("GET", "PATCH"):
            return _json_response(405, {"detail": "Method Not Allowed"})

        limit_headers: dict[str, str] = {}
        if faults.rate_limit is not None or faults.window_limit is not None:
            admitted, retry_after, limit_headers = self._admit()
            if not faults.limit_headers:
                limit_headers = {}
            if not admitted:
                return _json_response(
                    429,
                    {"detail": "Rate limit exceeded"},
                    retry_after=retry_after,
                    headers=limit_headers,
                )
        scripted = self._script.popleft() if self._script else None
        if scripted is not None and not scripted.apply:
            if scripted.reset:
                return None
            return _json_response(
                scripted.status,
                {"detail": scripted.detail or f"Injected {scripted.status}"},
                retry_after=scripted.retry_after,
            )
        fault = self._draw(dataset_id) if scripted is None else None
        if fault == "reset":
            return None
        if fault in ("429", "500", "502", "503"):
            status = int(fault)
            return _json_response(
                status,
                {"detail": f"Injected {status}"},
                retry_after=faults.retry_after if status == 429 else None,
            )
        if fault == "slow":
            await asyncio.sleep(faults.slow_delay)

        record = self.store.get(dataset_id)
        if record is None:
            return _json_response(404, {"detail": f"Dataset {dataset_id} not found"})
        if request.method == "PATCH":
            changes, errors = _validate_patch(body)
            if changes is None:
                return _json_response(422, {"detail": errors})
            record.update(changes)
            self.stats.applied += 1
        if scripted is not None:  # applied, then failed
            if scripted.reset:
                return None
            return _json_response(scripted.status, {"detail": scripted.detail or "Injected"})
        if fault == "500_after_apply":
            return _json_response(500, {"detail": "Injected 500 after applying"})
        if fault == "malformed":
            text = json.dumps(record)
            if self._rng(dataset_id, "shape").random() < 0.5:
                return web.Response(status=200, body=text[: len(text) // 2], content_type=_JSON)
            html = "<html><body>502 Bad Gateway</body></html>"
            return web.Response(status=200, text=html, content_type="text/html")
        return _json_response(200, record, headers=limit_headers)

    def _admit(self) -> tuple[bool, float | None, dict[str, str]]:
        """Whether the rate limit admits one more request now; the Retry-After of a refusal;
        the x-ratelimit-* headers that describe the quota after this request.
        """
        faults = self.faults
        now = time.monotonic()
        if faults.window_limit is not None:
            quota, window = faults.window_limit, faults.window
            if faults.window_kind == "fixed":
                if now - self._window_start >= window:
                    self._window_start += window * ((now - self._window_start) // window)
                    self._window_count = 0
                admitted = self._window_count < quota
                self._window_count += admitted
                remaining = quota - self._window_count
                reset = self._window_start + window - now
                wait = reset
            else:
                times = self._window_times
                while times and times[0] <= now - window:
                    times.popleft()
                admitted = len(times) < quota
                if admitted:
                    times.append(now)
                remaining = quota - len(times)
                reset = times[-1] + window - now if times else 0.0
                wait = times[0] + window - now if times else 0.0
            headers = _limit_headers(quota, remaining, reset)
            return admitted, None if admitted else float(math.ceil(wait)), headers
        assert faults.rate_limit is not None
        burst = float(faults.burst)
        self._tokens = min(burst, self._tokens + (now - self._refilled) * faults.rate_limit)
        self._refilled = now
        admitted = self._tokens >= 1.0
        if admitted:
            self._tokens -= 1.0
        reset = (burst - self._tokens) / faults.rate_limit
        headers = _limit_headers(faults.burst, int(self._tokens), reset)
        return admitted, None if admitted else faults.rate_limit_retry_after, headers

    def _rng(self, dataset_id: str, salt: str) -> random.Random:
        return random.Random(f"{self.faults.seed}:{salt}:{dataset_id}:{self._seen[dataset_id]}")

    def _draw(self, dataset_id: str) -> str | None:
        """The fault for this request: repeatable for (seed, id, how many times it was seen)."""
        self._seen[dataset_id] += 1
        f = self.faults
        table = (
            ("429", f.rate_429),
            ("500", f.rate_500),
            ("502", f.rate_502),
            ("503", f.rate_503),
            ("500_after_apply", f.rate_500_after_apply),
            ("reset", f.rate_reset),
            ("slow", f.rate_slow),
            ("malformed", f.rate_malformed),
        )
        if not any(p for _, p in table):
            return None
        x = self._rng(dataset_id, "fault").random()
        for name, p in table:
            if x < p:
                return name
            x -= p
        return None


def _decoded(raw_path: str) -> str | None:
    """The path as Starlette routes it: percent-decoded first (``%2F`` becomes ``/``)."""
    try:
        return unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        return None


def _dataset_id(path: str | None) -> str | None:
    """The id of a decoded ``/v1/datasets/{id}`` path (one segment, as Starlette's default
    path parameter matches), or ``None`` for any other path.
    """
    if path is None or not path.startswith(_PREFIX):
        return None
    segment = path[len(_PREFIX) :]
    if not segment or "/" in segment:
        return None
    return segment


def _limit_headers(limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(max(remaining, 0)),
        "x-ratelimit-reset-requests": f"{max(reset, 0.0):.3f}s",
    }


def _json_response(
    status: int,
    payload: Any,
    *,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    headers = {"x-request-id": f"req-{secrets.token_hex(8)}", **(headers or {})}
    if retry_after is not None:
        headers["Retry-After"] = f"{retry_after:g}"
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type=_JSON, headers=headers
    )


# -- a transport without a socket -------------------------------------------------------------

Handler = Callable[[Request], "Response | Awaitable[Response]"]


def json_response(
    status: int, payload: Any = None, *, headers: Mapping[str, str] | None = None
) -> Response:
    """A ``Response`` with ``payload`` as its JSON body (``make_dataset(...)`` for a 200, or
    ``{"detail": ...}`` for an error) and ``headers`` (case-insensitive).
    """
    body = b"" if payload is None else json.dumps(payload).encode()
    merged = CIMultiDict({"content-type": _JSON})
    merged.update(headers or {})
    return Response(status, CIMultiDictProxy(merged), body)


class _NoSelector(selectors.BaseSelector):
    """A selector with nothing to select: waiting moves a virtual clock instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("virtual time is stuck: every task waits and no timer is set")
        self._loop.now += max(timeout, 0.0)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, for tests of code that waits long (a 30 s
    ``Retry-After``, a per-minute limit): when every task waits, the clock jumps to the next
    timer, so an hour of waiting takes no time. ``loop.time()`` is the virtual clock:
    ``asyncio.sleep``, ``wait_for`` and the client's deadlines run on it; give a
    ``FlowControl(clock=loop.time)``. No socket can be used in it: pair it with
    ``MockTransport``.
    """

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_NoSelector(self))

    def time(self) -> float:
        """The virtual clock, in seconds from the loop's creation."""
        return self.now


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine function ``main`` on a new ``VirtualLoop`` and close it."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class MockTransport:
    """A transport that answers every request by calling ``handler(request)``: no socket, no
    server. The handler returns a ``Response`` (``json_response`` builds one), may be async,
    and may raise ``APIConnectionError`` to act as a broken connection::

        answers = iter([json_response(429, {"detail": "slow down"}, headers={"Retry-After": "0"}),
                        json_response(200, make_dataset(0))])
        client = DatasetsClient(api_key="k", transport=MockTransport(lambda r: next(answers)))

    ``requests`` lists every request received, in order.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []
        self.closed = False

    async def send(self, request: Request, timeout: float | None = None) -> Response:  # noqa: ASYNC109
        """Record ``request`` and return the handler's answer."""
        self.requests.append(request)
        answer = self._handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    async def aclose(self) -> None:
        """Mark the transport closed."""
        self.closed = True


# -- aioresponses on every aiohttp version -------------------------------------------------


class _NoUpload:
    """Stands in for the request writer a mocked response never had."""

    output_size = 0


_NEEDS_WRITER = "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters


class AioresponsesResponse(aiohttp.ClientResponse):
    """A response class for aioresponses that works with every aiohttp this package allows.

    aiohttp 3.14 added a required ``stream_writer`` argument that aioresponses (0.7.x) does not
    pass, so each mocked reply raises ``TypeError``. Pass this class through aioresponses' own
    ``response_class`` hook::

        with aioresponses() as mocked:
            mocked.patch(url, payload=make_dataset(0), response_class=AioresponsesResponse)
    """

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        if _NEEDS_WRITER:
            kwargs.setdefault("stream_writer", _NoUpload())
        super().__init__(method, url, **kwargs)


# -- the fake on its own: `nebius-datasets fake-server`, `python -m ...testing` ---------------


def _fake_server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nebius-datasets fake-server",
        description="Serve the fake Datasets API on 127.0.0.1 until Ctrl-C, for trying the "
        "command line, scripts in any language and your own services against it.",
    )
    add = parser.add_argument
    add("--port", type=int, default=0, help="port to listen on (default: a free one)")
    add("--datasets", type=int, default=100, help="how many datasets to create")
    add("--api-key", help="the key the fake accepts (default: a random one)")
    add("--ids-file", type=Path, help="write the dataset ids here, one a line, not to stdout")
    add("--seed", type=int, default=0, help="makes records and faults repeatable")
    add("--latency", type=float, default=0.0, help="seconds every request waits")
    for fault in ("429", "500", "502", "503", "reset", "slow", "malformed"):
        add(f"--rate-{fault}", type=float, default=0.0, metavar="P", help="probability")
    add("--rate-limit", type=float, help="token bucket: requests per second")
    add("--burst", type=int, default=10, help="token bucket: size")
    add("--retry-after", type=float, default=1.0, help="Retry-After of the bucket's 429s")
    add("--window-limit", type=int, help="window limit: requests per window")
    add("--window", type=float, default=60.0, help="window limit: seconds")
    add("--window-kind", choices=("fixed", "sliding"), default="fixed")
    add("--limit-headers", action="store_true", help="send x-ratelimit-* headers")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the standalone fake until interrupted; return the exit code."""
    args = _fake_server_parser().parse_args(argv)
    faults = Faults(
        latency=args.latency,
        rate_429=args.rate_429,
        rate_500=args.rate_500,
        rate_502=args.rate_502,
        rate_503=args.rate_503,
        rate_reset=args.rate_reset,
        rate_slow=args.rate_slow,
        rate_malformed=args.rate_malformed,
        rate_limit=args.rate_limit,
        burst=args.burst,
        rate_limit_retry_after=args.retry_after,
        window_limit=args.window_limit,
        window=args.window,
        window_kind=args.window_kind,
        limit_headers=args.limit_headers,
        seed=args.seed,
    )
    fake = FakeDatasetsServer(
        datasets=args.datasets,
        api_key=args.api_key,
        faults=faults,
        port=args.port,
        record_requests=False,
    )
    if args.ids_file is not None:
        args.ids_file.write_text("".join(f"{i}\n" for i in fake.dataset_ids), encoding="utf-8")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_stopped(fake, args.ids_file))
    return 0


async def _serve_until_stopped(fake: FakeDatasetsServer, ids_file: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with fake:
        print(f"export NEBIUS_BASE_URL={fake.base_url}")
        print(f"export NEBIUS_API_KEY={fake.api_key}")
        if ids_file is not None:
            print(f"# {len(fake.store)} dataset ids written to {ids_file}")
        else:
            print(f"# {len(fake.store)} dataset ids:")
            for dataset_id in fake.dataset_ids:
                print(dataset_id)
        print("# serving until Ctrl-C", flush=True)
        await stop.wait()
        stats = fake.stats
        print(
            f"# stopped after {stats.requests} requests, {stats.applied} changes applied",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main())
