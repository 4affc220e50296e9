"""The only client-side module that imports aiohttp: ``Request`` in, ``Response`` out."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import ssl as _ssl
import threading
from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

import aiohttp
from yarl import URL

from ._exceptions import (
    APIConnectionError,
    APITimeoutError,
    ClientClosedError,
    EventLoopError,
    ResponseValidationError,
)
from ._protocol import JSON_CONTENT_TYPE, Request, Response, excerpt, request_id

__all__ = ["AiohttpTransport", "Transport"]

logger = logging.getLogger("nebius_datasets_async")

_CHUNK = 64 * 1024


class Transport(Protocol):
    """What a client needs to send requests: ``DatasetsClient(transport=...)`` takes any
    object with these two methods (``testing.MockTransport`` is one).
    """

    async def send(self, request: Request, timeout: float | None = None) -> Response:  # noqa: ASYNC109
        """Send one request and return its whole response; raise ``APIConnectionError``
        (``APITimeoutError`` after ``timeout`` seconds) when no response arrives.
        """
        ...

    async def aclose(self) -> None:
        """Release what the transport holds; idempotent."""
        ...


async def _session_closer(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Holds a loop's session open; closes it when the loop shuts down its async generators
    (``asyncio.run``, ``asyncio.Runner`` and pytest-asyncio do) or when the transport closes.
    """
    try:
        yield
    finally:
        await session.close()


#: Errors that mean the connection died before any byte of the response arrived: a pooled
#: connection the server had closed. The request is sent once more, on another connection.
_DEAD_CONNECTION = (aiohttp.ServerDisconnectedError, ConnectionResetError, BrokenPipeError)
#: ... and the same from the socket as aiohttp wraps it (``ClientOSError``: a reset by a
#: server that closed the idle connection as the request went out)
_DEAD_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE})


def _dead_connection(exc: BaseException) -> bool:
    if isinstance(exc, _DEAD_CONNECTION):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in _DEAD_ERRNOS


class AiohttpTransport:
    """Sends requests with aiohttp: one ``ClientSession`` per event loop.

    A session is made on first use in each loop, with a pool of ``max_connections`` that keeps
    idle connections at most ``keepalive`` seconds (less than a server's keep-alive, so a
    pooled connection is not reused just as the server closes it). When a loop shuts down
    (``asyncio.run`` returning, a test's loop ending), its session is closed inside it, so
    nothing is left for the interpreter to warn about. A caller's own ``session`` is used as
    given, only in its own loop, and never closed.

    A request whose connection turns out dead before any byte of the response arrived is sent
    once more at once (PATCH sets absolute values, so this is safe). Redirects are never
    followed (the Authorization header must not travel to another host), response bodies are
    read up to ``max_response_bytes``, and every aiohttp or socket error becomes an
    ``APIConnectionError`` (``APITimeoutError`` for timeouts) with no link back to the request
    headers that hold the key.
    """

    def __init__(
        self,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float,
        max_connections: int,
        max_response_bytes: int,
        keepalive: float = 4.0,
        session: aiohttp.ClientSession | None = None,
        ssl: _ssl.SSLContext | bool = True,
    ) -> None:
        self._base_url = base_url
        self._get_headers = {**headers, "Accept": JSON_CONTENT_TYPE}
        self._body_headers = {**self._get_headers, "Content-Type": JSON_CONTENT_TYPE}
        self._own_names = frozenset(k.lower() for k in self._body_headers) | {"host"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._keepalive = keepalive
        self._own_session = session
        self._ssl = ssl
        self._closed = False
        self._lock = threading.Lock()
        self._sessions: dict[
            asyncio.AbstractEventLoop,
            tuple[aiohttp.ClientSession, AsyncGenerator[None, None]],
        ] = {}

    def __repr__(self) -> str:
        return f"<AiohttpTransport {self._base_url} sessions={len(self._sessions)}>"

    def _session(self) -> aiohttp.ClientSession:
        """The session of the running loop (made now if it has none)."""
        if self._closed:
            raise ClientClosedError("the client is closed; make a new one")
        loop = asyncio.get_running_loop()
        own = self._own_session
        if own is not None:
            if own._loop is not loop:
                raise EventLoopError(
                    "the aiohttp session given to the client belongs to another event loop; "
                    "use the client from that loop, or let the client make its own sessions "
                    "(one per loop) by not passing session="
                )
            return own
        entry = self._sessions.get(loop)
        if entry is not None:
            return entry[0]
        return self._new_session(loop)

    def _new_session(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ssl=self._ssl,
            keepalive_timeout=self._keepalive,
        )
        session = aiohttp.ClientSession(connector=connector)
        closer = _session_closer(session)
        # Start the closer: from now on the loop knows it and closes it when it shuts down.
        with contextlib.suppress(StopIteration):
            closer.asend(None).send(None)
        with self._lock:
            for other in [lp for lp in self._sessions if lp.is_closed()]:
                del self._sessions[other]  # closed with its loop
            self._sessions[loop] = (session, closer)
        logger.debug("opened a session with a pool of %d connections", self._max_connections)
        return session

    async def send(self, request: Request, timeout: float | None = None) -> Response:  # noqa: ASYNC109
        """Send one request and read its whole response; ``timeout`` overrides the default
        per-attempt timeout for this request.
        """
        session = self._session()
        url = URL(self._base_url + request.path, encoded=True)
        headers = self._get_headers if request.body is None else self._body_headers
        if request.headers:  # extra headers never replace ours (Authorization above all)
            own = self._own_names
            extra = {k: v for k, v in request.headers.items() if k.lower() not in own}
            headers = {**extra, **headers}
        limit = self._timeout
        if timeout is not None and timeout != limit.total:
            limit = aiohttp.ClientTimeout(total=timeout)
        resent = False
        while True:
            try:
                async with session.request(
                    request.method,
                    url,
                    data=request.body,
                    headers=headers,
                    allow_redirects=False,
                    raise_for_status=False,
                    timeout=limit,
                ) as resp:
                    body = await self._read_body(request, resp)
                    return Response(resp.status, resp.headers, body)
            except TimeoutError:
                # Raised from None throughout: aiohttp's exceptions hold the request's headers.
                raise APITimeoutError(
                    "request timed out", method=request.method, path=request.path
                ) from None
            except (aiohttp.ClientError, OSError) as exc:
                if _dead_connection(exc) and not resent:
                    resent = True
                    logger.debug("connection closed before the response; sending again")
                    continue
                raise APIConnectionError(
                    self._describe(exc), method=request.method, path=request.path
                ) from None

    def _describe(self, exc: BaseException) -> str:
        """What went wrong, naming the server as the user gave it (scheme, host and port)
        rather than aiohttp's view of the socket (``ssl:default``).
        """
        if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
            exc, aiohttp.ClientSSLError
        ):
            url = URL(self._base_url)
            host = url.raw_host or ""
            host = f"[{host}]" if ":" in host else host  # an IPv6 literal, as written in a URL
            where = f"{url.scheme}://{host}:{url.port}"
            error = exc.os_error
            code = error.errno if isinstance(error.errno, int) and error.errno > 0 else None
            reason = os.strerror(code) if code else error.strerror or type(error).__name__
            return f"cannot connect to {where}: {reason}"
        return f"{type(exc).__name__}: {exc}"

    async def _read_body(self, request: Request, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._max_response_bytes
        length = resp.content_length
        if length is not None and length <= limit:
            return await resp.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if 200 <= resp.status < 300:
                    raise ResponseValidationError(
                        f"response body is larger than the {limit}-byte limit",
                        excerpt=excerpt(chunks[0]),
                        status_code=resp.status,
                        request_id=request_id(resp.headers),
                        method=request.method,
                        path=request.path,
                    )
                break  # an error body: its start is enough to explain it
        return b"".join(chunks)[:limit]

    async def aclose(self) -> None:
        """Close every session this transport made, in whichever loop it lives; idempotent.
        A session whose loop has already closed was closed with it (or is simply dropped).
        """
        self._closed = True
        with self._lock:
            entries, self._sessions = self._sessions, {}
        here = asyncio.get_running_loop()
        for loop, (_session, closer) in entries.items():
            if loop is here:
                await closer.aclose()
            elif loop.is_running() and not loop.is_closed():
                try:
                    future = asyncio.run_coroutine_threadsafe(closer.aclose(), loop)
                except RuntimeError:
                    continue  # closed meanwhile
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(future), 5.0)
        if entries:
            logger.debug("closed %d session(s)", len(entries))
