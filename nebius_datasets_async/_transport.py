"""The only client-side module that imports aiohttp: ``Request`` in, ``Response`` out."""

from __future__ import annotations

import logging
import ssl as _ssl
from collections.abc import Mapping

import aiohttp
from yarl import URL

from ._exceptions import APIConnectionError, APITimeoutError, ResponseValidationError
from ._protocol import JSON_CONTENT_TYPE, Request, Response, excerpt, request_id

__all__ = ["Transport"]

logger = logging.getLogger("nebius_datasets_async")

_CHUNK = 64 * 1024


class Transport:
    """Sends requests over one ``aiohttp.ClientSession``.

    It uses a caller's session as given and never closes it; otherwise it creates one on first
    use, with a connection pool of ``max_connections``, and closes it in ``aclose()``. Redirects
    are never followed (the Authorization header must not travel to another host), response
    bodies are read up to ``max_response_bytes``, and every aiohttp or socket error becomes an
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
        session: aiohttp.ClientSession | None = None,
        ssl: _ssl.SSLContext | bool = True,
    ) -> None:
        self._base_url = base_url
        self._get_headers = {**headers, "Accept": JSON_CONTENT_TYPE}
        self._body_headers = {**self._get_headers, "Content-Type": JSON_CONTENT_TYPE}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._session = session
        self._owns_session = session is None
        self._ssl = ssl
        self._closed = False

    def __repr__(self) -> str:
        return f"<Transport {self._base_url} owns_session={self._owns_session}>"

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the client is closed")
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ssl=self._ssl
            )
            session = self._session = aiohttp.ClientSession(connector=connector)
            logger.debug("opened a session with a pool of %d connections", self._max_connections)
        return session

    async def send(self, request: Request, time_limit: float | None = None) -> Response:
        """Send one request and read its whole response; ``time_limit`` overrides the default
        per-attempt timeout for this request.
        """
        session = self._ensure_session()
        url = URL(self._base_url + request.path, encoded=True)
        headers = self._get_headers if request.body is None else self._body_headers
        try:
            async with session.request(
                request.method,
                url,
                data=request.body,
                headers=headers,
                allow_redirects=False,
                raise_for_status=False,
                timeout=(
                    self._timeout if time_limit is None else aiohttp.ClientTimeout(total=time_limit)
                ),
            ) as resp:
                body = await self._read_body(request, resp)
                return Response(resp.status, resp.headers, body)
        except TimeoutError:
            # Raised from None throughout: aiohttp's exceptions hold the request's headers.
            raise APITimeoutError(
                "request timed out", method=request.method, path=request.path
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise APIConnectionError(
                f"{type(exc).__name__}: {exc}", method=request.method, path=request.path
            ) from None

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
        """Close the session if this transport created it; idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()
            logger.debug("closed the session")
