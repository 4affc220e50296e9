"""The pure request/response layer: build requests, decode responses, map statuses to errors.

No aiohttp, no asyncio, no sleeping: everything here is tested synchronously with byte fixtures.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import attrs

from ._converter import structure_dataset
from ._exceptions import APIStatusError, ResponseValidationError, status_error_class
from ._models import Dataset, DatasetUpdate, validate_dataset_id

__all__ = [
    "RateLimits",
    "Request",
    "Response",
    "build_get",
    "build_patch",
    "dataset_path",
    "decode_dataset",
    "error_from_response",
    "parse_duration",
    "parse_rate_limits",
    "parse_retry_after",
]

JSON_CONTENT_TYPE = "application/json"
_EXCERPT = 200
_DATASETS = "/v1/datasets/"


@attrs.frozen(slots=True)
class Request:
    """An HTTP request to send: ``path`` is already percent-encoded. ``headers``: extra
    headers for this request (a trace context, say); the transport's own headers win.
    """

    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] | None = None


@attrs.frozen(slots=True)
class Response:
    """An HTTP response received. ``headers`` must look names up case-insensitively (aiohttp's
    ``CIMultiDictProxy`` does) or have lowercase keys.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes


@attrs.frozen(slots=True)
class RateLimits:
    """What a response's ``x-ratelimit-*-requests`` headers say about the request quota.

    ``remaining``: requests left in the current window; ``limit``: the window's quota;
    ``reset``: seconds until the quota is full again. Each is ``None`` when not sent.
    """

    remaining: int | None = None
    limit: int | None = None
    reset: float | None = None


_NO_LIMITS = RateLimits()
#: Compact UTF-8 JSON; one encoder built once (``json.dumps`` with options builds one a call).
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """Seconds in a rate-limit reset value: a plain number of seconds (``"2"``, ``"0.5"``) or
    a Go-style duration as OpenAI-compatible servers send (``"1s"``, ``"250ms"``, ``"6m0s"``,
    ``"1h2m3.5s"``). ``None`` for anything else or a negative value.
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pos = 0
        value = 0.0
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                return None
            value += float(match.group(1)) * scale[match.group(2)]
            pos = match.end()
        if pos == 0 or pos != len(text):
            return None
    return value if math.isfinite(value) and value >= 0 else None


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def parse_rate_limits(headers: Mapping[str, str]) -> RateLimits:
    """The request quota a response announces (``x-ratelimit-remaining-requests``,
    ``x-ratelimit-limit-requests``, ``x-ratelimit-reset-requests``); unreadable values are
    treated as absent. The same empty value is returned when none is present.
    """
    remaining = _header_int(headers, "x-ratelimit-remaining-requests")
    limit = _header_int(headers, "x-ratelimit-limit-requests")
    raw_reset = headers.get("x-ratelimit-reset-requests")
    reset = parse_duration(raw_reset) if raw_reset is not None else None
    if remaining is None and limit is None and reset is None:
        return _NO_LIMITS
    return RateLimits(remaining=remaining, limit=limit, reset=reset)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """The server's requested wait in seconds, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be a number of seconds or an HTTP date (compared with ``now``, a Unix
    time). ``headers`` must look names up case-insensitively (aiohttp's do) or use lowercase
    keys. Returns ``None`` when neither header is present or readable; never a negative number.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            pass
        else:
            if math.isfinite(ms):
                return max(0.0, ms / 1000.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def dataset_path(dataset_id: str) -> str:
    """``/v1/datasets/{dataset_id}`` with the id percent-encoded as exactly one path segment."""
    return _DATASETS + quote(validate_dataset_id(dataset_id), safe="")


def build_get(dataset_id: str) -> Request:
    """The request for ``GET /v1/datasets/{dataset_id}``."""
    return Request("GET", dataset_path(dataset_id))


def build_patch(update: DatasetUpdate) -> Request:
    """The request for ``PATCH /v1/datasets/{dataset_id}``: a JSON body with only the fields that
    change (``None`` fields are left out, so the server leaves them as they are).
    """
    body: dict[str, str] = {}
    if update.name is not None:
        body["name"] = update.name
    if update.folder is not None:
        body["folder"] = update.folder
    payload = _ENCODE(body).encode()
    return Request("PATCH", _DATASETS + quote(update.dataset_id, safe=""), payload)


def decode_dataset(request: Request, response: Response) -> Dataset:
    """The ``Dataset`` in a 2xx response; raise the matching ``APIStatusError`` for any other
    status and ``ResponseValidationError`` for a 2xx body that is not a valid Dataset.
    """
    if not 200 <= response.status < 300:
        raise error_from_response(request, response)
    try:
        obj = json.loads(response.body)
        return structure_dataset(obj)
    except ResponseValidationError as exc:
        exc.excerpt = excerpt(response.body)
        exc.status_code = response.status
        exc.request_id = request_id(response.headers)
        exc.method, exc.path = request.method, request.path
        raise
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
        raise ResponseValidationError(
            "response body is not valid JSON",
            errors=(str(exc),),
            excerpt=excerpt(response.body),
            status_code=response.status,
            request_id=request_id(response.headers),
            method=request.method,
            path=request.path,
        ) from None


def error_from_response(
    request: Request, response: Response, *, now: float | None = None
) -> APIStatusError:
    """The exception for a non-2xx response, with the server's ``detail``, request id and
    ``Retry-After`` read from it.
    """
    detail = _detail(response.body)
    cls = status_error_class(response.status)
    if 300 <= response.status < 400:
        message = f"redirect to {response.headers.get('location', '?')!r} not followed"
    else:
        message = _message(detail) or _REASONS.get(response.status, "HTTP error")
    return cls(
        message,
        status_code=response.status,
        detail=detail,
        request_id=request_id(response.headers),
        headers=response.headers,
        retry_after=parse_retry_after(response.headers, time.time() if now is None else now),
        method=request.method,
        path=request.path,
    )


def request_id(headers: Mapping[str, str]) -> str | None:
    """The server's request id, if it sent one."""
    return headers.get("x-request-id") or headers.get("request-id")


def excerpt(body: bytes) -> str:
    """The start of a body, as text, for error messages."""
    text = body[:_EXCERPT].decode("utf-8", errors="replace")
    return text + "..." if len(body) > _EXCERPT else text


def _detail(body: bytes) -> Any:
    """FastAPI's ``detail`` (a string or a list of errors), or the body's start as text."""
    if not body:
        return None
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return excerpt(body)
    if isinstance(obj, dict) and "detail" in obj:
        return obj["detail"]
    return obj


def _message(detail: Any) -> str:
    if isinstance(detail, str):
        return detail[:_EXCERPT]
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '?')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        more = f" (+{len(detail) - 5} more)" if len(detail) > 5 else ""
        return "; ".join(parts)[: _EXCERPT * 2] + more
    return "" if detail is None else str(detail)[:_EXCERPT]


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
