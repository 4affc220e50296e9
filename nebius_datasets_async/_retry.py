"""Retry policy as a value object: pure delay maths, no sleeping, injectable randomness."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from ._exceptions import APIConnectionError, APIStatusError
from ._validate import at_least, integer, optional

__all__ = ["RetryPolicy"]


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
      through: the ``RateLimitError`` (or other status error) is raised at once; so is a wait
      for everyone in the flow control longer than this (``docs/flow-control.md``).
    - ``deadline``: optional bound, in seconds, on the whole call across attempts; a retry that
      would end after it is not started.
    - ``retry_statuses``: HTTP statuses worth another try. Connection errors and timeouts are
      always retried. 400/401/403/404/409/422 never are, whatever this says.
    - ``max_throttled``: how many times one call may be answered 429 (or 503 by a server that
      is busy, answering other requests meanwhile) before it fails with that error. These do
      not count against ``max_attempts``: the client's flow control slows every request down
      after one, so they fail a call only when they persist far beyond what pacing can fix.
    """

    max_attempts: int = attrs.field(default=4, validator=integer(1))
    initial_delay: float = attrs.field(default=0.5, validator=at_least(0))
    max_delay: float = attrs.field(default=20.0, validator=at_least(0))
    max_retry_after: float = attrs.field(default=60.0, validator=at_least(0))
    deadline: float | None = attrs.field(default=None, validator=optional(at_least(0)))
    retry_statuses: frozenset[int] = attrs.field(
        default=frozenset({408, 429, 500, 502, 503, 504}), converter=_retryable_statuses
    )
    max_throttled: int = attrs.field(default=20, validator=integer(0))

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
        """A policy that tries each request once, throttled or not."""
        return cls(max_attempts=1, max_throttled=0)
