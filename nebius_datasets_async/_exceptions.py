"""The one exception tree of the library.

::

    DatasetsError
    +-- InvalidArgumentError        (also a ValueError: bad input, refused before sending)
    +-- ClientClosedError           (also a RuntimeError: the client was closed)
    +-- EventLoopError              (also a RuntimeError: a caller's session, another loop)
    +-- APIConnectionError          (no HTTP response)
    |   +-- APITimeoutError
    +-- APIStatusError              (status_code, detail, request_id, headers)
    |   +-- BadRequestError             400
    |   +-- AuthenticationError         401
    |   +-- PermissionDeniedError       403
    |   +-- NotFoundError               404
    |   +-- ConflictError               409
    |   +-- UnprocessableEntityError    422
    |   +-- RateLimitError              429 (retry_after)
    |   +-- InternalServerError         5xx
    +-- ResponseValidationError     (a 2xx body that is not a valid Dataset)
    +-- RunStoppedError             (the outcome of an update a stopped bulk run skipped)
    +-- BulkError                   (BulkReport.raise_for_failures)

Every exception pickles, carries the request id when the server sent one and never holds the
API key: messages are built from the response, never from the request headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class _Report(Protocol):
    def summary(self) -> str: ...


class DatasetsError(Exception):
    """Base class of every exception this library raises."""


class InvalidArgumentError(DatasetsError, ValueError):
    """An argument is invalid (an update, an id, a setting); raised before anything is sent."""


class ClientClosedError(DatasetsError, RuntimeError):
    """The client was used after ``aclose()``; make a new one."""


class EventLoopError(DatasetsError, RuntimeError):
    """The client cannot serve this event loop (an ``aiohttp.ClientSession`` passed in belongs
    to another loop); the message says what to do.
    """


class APIConnectionError(DatasetsError):
    """No HTTP response was received: connection refused or reset, DNS, TLS, or a broken body.

    ``method`` and ``path`` name the request that failed.
    """

    def __init__(self, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.message,), self.__dict__))

    def __str__(self) -> str:
        where = f" ({self.method} {self.path})" if self.method else ""
        return f"{self.message}{where}"


class APITimeoutError(APIConnectionError):
    """The request did not complete within the per-attempt timeout."""


class APIStatusError(DatasetsError):
    """The server answered with an error status.

    Attributes: ``status_code``, ``detail`` (the FastAPI ``detail``: a string, or the list of
    validation errors for 422), ``request_id`` (from ``x-request-id`` when present),
    ``headers`` (the response headers), ``retry_after`` (seconds the server asked to wait, from
    ``Retry-After`` or ``retry-after-ms``, else ``None``), ``method`` and ``path`` of the request.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        detail: object = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        method: str = "",
        path: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.detail = detail
        self.request_id = request_id
        self.headers: Mapping[str, str] = dict(headers or {})
        self.method = method
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.message,), self.__dict__))

    def __str__(self) -> str:
        parts = [f"{self.status_code} {self.message}"]
        if self.method:
            parts.append(f"{self.method} {self.path}")
        if self.request_id:
            parts.append(f"request id {self.request_id}")
        return " | ".join(parts)


class BadRequestError(APIStatusError):
    """400 Bad Request."""


class AuthenticationError(APIStatusError):
    """401 Unauthorized: the API key is missing, wrong or expired."""


class PermissionDeniedError(APIStatusError):
    """403 Forbidden: the key may not touch this dataset."""


class NotFoundError(APIStatusError):
    """404 Not Found: no dataset with this id."""


class ConflictError(APIStatusError):
    """409 Conflict."""


class UnprocessableEntityError(APIStatusError):
    """422 Unprocessable Entity: the server rejected the body; ``detail`` lists why."""


class RateLimitError(APIStatusError):
    """429 Too Many Requests. ``retry_after`` is the server's wait in seconds, if it gave one."""


class InternalServerError(APIStatusError):
    """A 5xx answer from the server."""


class ResponseValidationError(DatasetsError):
    """A successful response whose body is not a valid Dataset.

    ``errors`` lists each problem with its path (``$.status``), ``excerpt`` holds the start of the
    body, ``request_id`` the server's request id when present.
    """

    def __init__(
        self,
        message: str,
        *,
        errors: tuple[str, ...] = (),
        excerpt: str = "",
        status_code: int = 200,
        request_id: str | None = None,
        method: str = "",
        path: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors
        self.excerpt = excerpt
        self.status_code = status_code
        self.request_id = request_id
        self.method = method
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.message,), self.__dict__))

    def __str__(self) -> str:
        text = self.message
        if self.errors:
            text += ": " + "; ".join(self.errors)
        if self.method:
            text += f" ({self.method} {self.path})"
        if self.excerpt:
            text += f"; body starts {self.excerpt!r}"
        return text


class RunStoppedError(DatasetsError):
    """A bulk run stopped before this update was sent (or sent again); ``cause`` is the error
    that stopped it (a 401 or 403, an input that raised), or ``None`` when the caller did.
    """

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.message,), self.__dict__))


class BulkError(DatasetsError):
    """Raised by ``BulkReport.raise_for_failures()`` when any update failed or was skipped."""

    def __init__(self, report: _Report) -> None:
        super().__init__(report.summary())
        #: The ``BulkReport`` of the run.
        self.report: Any = report

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.report,))


def _rebuild(cls: type[Exception], args: tuple[Any, ...], state: dict[str, Any]) -> Exception:
    """Unpickle an exception whose ``__init__`` takes keyword-only arguments."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    if status >= 500:
        return InternalServerError
    return _BY_STATUS.get(status, APIStatusError)
