"""Retry policy as a value object: pure delay maths, no sleeping, injectable randomness."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable, Iterable, Mapping

import attrs

from ._exceptions import APIConnectionError, APIStatusError

__all__ = ["RetryPolicy", "parse_retry_after"]


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _optional_positive(
    instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None:
        _positive(instance, attribute, value)  # type: ignore[arg-type]


def _at_least_one(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


_NEVER_RETRIED = frozenset({400, 401, 403, 404, 409, 422})


def _retryable_statuses(statuses: Iterable[int]) -> frozenset[int]:
    return frozenset(statuses) - _NEVER_RETRIED


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When and how long to wait before trying a request again.

    - ``max_attempts``: tries per request, the first included (1 = never retry).
    - ``initial_delay`` / ``max_delay``: exponential backoff with full jitter: before retry ``n``
      the client sleeps a random time in ``[0, min(max_delay, initial_delay * 2 ** (n - 1))]``.
    - ``max_retry_after``: a server-given wait (``Retry-After``) longer than this is not slept
      through: the ``RateLimitError`` (or other status error) is raised at once.
    - ``deadline``: optional bound, in seconds, on the whole call across attempts; a retry that
      would end after it is not started.
    - ``retry_statuses``: HTTP statuses worth another try. Connection errors and timeouts are
      always retried. 400/401/403/404/409/422 never are, whatever this says.
    """

    max_attempts: int = attrs.field(default=4, validator=_at_least_one)
    initial_delay: float = attrs.field(default=0.5, validator=_positive)
    max_delay: float = attrs.field(default=20.0, validator=_positive)
    max_retry_after: float = attrs.field(default=60.0, validator=_positive)
    deadline: float | None = attrs.field(default=None, validator=_optional_positive)
    retry_statuses: frozenset[int] = attrs.field(
        default=frozenset({408, 429, 500, 502, 503, 504}), converter=_retryable_statuses
    )

    def backoff(self, retry: int, rand: Callable[[], float]) -> float:
        """Full-jitter backoff before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.max_delay, self.initial_delay * 2.0 ** min(retry - 1, 60))
        return rand() * ceiling

    def delay(self, retry: int, retry_after: float | None, rand: Callable[[], float]) -> float:
        """Seconds to wait before retry number ``retry``: the jittered backoff, but never less
        than the server's ``retry_after``.
        """
        backoff = self.backoff(retry, rand)
        return backoff if retry_after is None else max(retry_after, backoff)

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether a failed attempt that raised ``exc`` is worth another try: a retryable
        status or a connection error, unless the server asked for a wait longer than
        ``max_retry_after``.
        """
        if isinstance(exc, APIStatusError):
            too_long = exc.retry_after is not None and exc.retry_after > self.max_retry_after
            return exc.status_code in self.retry_statuses and not too_long
        return isinstance(exc, APIConnectionError)

    @classmethod
    def never(cls) -> RetryPolicy:
        """A policy that tries each request once."""
        return cls(max_attempts=1)


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
