"""OpenTelemetry traces and metrics for a client, from its event stream.

Needs the ``otel`` extra (``pip install 'nebius-datasets-async[otel]'``: ``opentelemetry-api``
only; the application picks the SDK and the exporters)::

    from nebius_datasets_async.otel import instrument

    client = DatasetsClient()
    instrument(client)  # the global tracer and meter providers unless given

Traces: a span per call (named ``PATCH`` or ``GET``, kind internal, with the dataset id and the
time the call waited in the gate), a child span per attempt following the HTTP client semantic
conventions (``PATCH /v1/datasets/{dataset_id}``, kind client), W3C trace context (or whatever
propagator the application set) injected into each attempt's request, and a ``bulk run`` span
that the calls of a bulk run are grouped under. Metrics: ``http.client.request.duration`` and the
gate's instruments under ``nebius.datasets.gate.*``. ``docs/observability.md`` lists every name
and attribute. The API key never appears in any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised by the test without the extra
    raise ImportError(
        "nebius_datasets_async.otel needs OpenTelemetry: "
        "pip install 'nebius-datasets-async[otel]' (opentelemetry-api)"
    ) from exc

from yarl import URL

from ._client import __version__
from ._events import (
    Admitted,
    Answered,
    BudgetSpent,
    CallEnded,
    CallInfo,
    CallStarted,
    Failed,
    Paused,
    Retrying,
    RunFinished,
    RunInfo,
    RunStarted,
    Sent,
    Throttled,
)

if TYPE_CHECKING:
    from ._client import DatasetsClient

__all__ = ["DURATION_BUCKETS", "PREFIX", "Instrumentation", "instrument"]

#: The prefix of the gate's instruments.
PREFIX = "nebius.datasets.gate"
#: ``http.client.request.duration``'s buckets, as the HTTP semantic conventions advise.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: The gate wait histogram's buckets: from no wait to a long pause.
WAIT_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TEMPLATE = "/v1/datasets/{dataset_id}"
_SCOPE = "nebius_datasets_async"


class _Call:
    """The spans of one call in flight."""

    __slots__ = ("attempt", "context", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.attempt: trace.Span | None = None


def _histogram(meter: metrics.Meter, name: str, unit: str, text: str, buckets: Any) -> Any:
    try:
        return meter.create_histogram(name, unit, text, explicit_bucket_boundaries_advisory=buckets)
    except TypeError:  # opentelemetry-api before 1.23: no advice; the SDK's view decides
        return meter.create_histogram(name, unit, text)


class Instrumentation:
    """A subscriber of one client's events that records OpenTelemetry spans and metrics (see
    the module docstring); ``instrument(client)`` makes one and subscribes it. Call
    ``uninstrument()`` to stop.
    """

    def __init__(
        self,
        client: DatasetsClient,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        run_spans: bool = True,
        propagate_context: bool = True,
        traces: bool = True,
    ) -> None:
        self._client = client
        self._run_spans = run_spans
        self._propagate = propagate_context
        url = URL(client.base_url)
        self._base_url = client.base_url
        self._server: dict[str, Any] = {
            "server.address": url.host or "",
            "server.port": url.port or (443 if url.scheme == "https" else 80),
        }
        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider)
        self._duration = _histogram(
            meter,
            "http.client.request.duration",
            "s",
            "Duration of HTTP client requests (one per attempt).",
            DURATION_BUCKETS,
        )
        self._wait = _histogram(
            meter,
            f"{PREFIX}.wait",
            "s",
            "Time an attempt waited in the gate: for a place, a pacing slot or a pause.",
            WAIT_BUCKETS,
        )
        self._throttles = meter.create_counter(
            f"{PREFIX}.throttles",
            "{response}",
            "Answers that were throttles (429, 503 + Retry-After).",
        )
        self._overloads = meter.create_counter(
            f"{PREFIX}.overloads", "{response}", "Answers that said the server is overloaded (503)."
        )
        self._retries = meter.create_counter(
            f"{PREFIX}.retries", "{request}", "Attempts that were retried."
        )
        self._pauses = meter.create_counter(
            f"{PREFIX}.pauses", "{pause}", "Times the gate held every request (by reason)."
        )
        self._refusals = meter.create_counter(
            f"{PREFIX}.budget.refusals",
            "{request}",
            "Failures not retried because the retry budget was spent.",
        )
        self._gauges = [
            meter.create_observable_gauge(
                f"{PREFIX}.pace", [self._observe_pace], "{request}/s", "The gate's pace."
            ),
            meter.create_observable_gauge(
                f"{PREFIX}.in_flight",
                [self._observer("in_flight")],
                "{request}",
                "Requests admitted and not yet answered.",
            ),
            meter.create_observable_gauge(
                f"{PREFIX}.waiting",
                [self._observer("waiting")],
                "{request}",
                "Requests waiting in the gate for a place, a slot or the end of a pause.",
            ),
            meter.create_observable_gauge(
                f"{PREFIX}.concurrency",
                [self._observer("concurrency")],
                "{request}",
                "The gate's working concurrency cap.",
            ),
            meter.create_observable_gauge(
                f"{PREFIX}.budget",
                [self._observe_budget],
                "{token}",
                "Tokens left in the retry budget.",
            ),
            meter.create_observable_gauge(
                f"{PREFIX}.paused",
                [self._observer("paused_for")],
                "s",
                "Seconds until the gate's pause ends (0 when not paused).",
            ),
        ]
        self._metric_attrs: dict[tuple[str, int | str], dict[str, Any]] = {}
        self._calls: dict[CallInfo, _Call] = {}
        self._runs: dict[RunInfo, trace.Span] = {}
        self._active = True
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            CallStarted: self._call_started,
            Admitted: self._admitted,
            Sent: self._sent,
            Answered: self._answered,
            Failed: self._failed,
            Throttled: self._throttled,
            Retrying: self._retrying,
            CallEnded: self._call_ended,
            Paused: self._paused,
            BudgetSpent: self._budget_spent,
            RunStarted: self._run_started,
            RunFinished: self._run_finished,
        }
        if not traces:  # metrics only: the span events are not even built
            for kind in (CallStarted, Sent, CallEnded, RunStarted, RunFinished):
                del self._handlers[kind]
        self.interests = tuple(self._handlers)
        client.events.subscribe(self)

    def __repr__(self) -> str:
        return f"<Instrumentation {self._base_url} calls_in_flight={len(self._calls)}>"

    def uninstrument(self) -> None:
        """Stop recording: unsubscribe, and report no more gauge values."""
        self._active = False
        self._client.events.unsubscribe(self)

    def __call__(self, event: Any) -> None:
        self._handlers[type(event)](event)

    # -- gauges ------------------------------------------------------------------------------

    def _observer(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if not self._active:
                return []
            return [Observation(getattr(self._client.flow.state(), field))]

        return observe

    def _observe_pace(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self._active:
            return []
        state = self._client.flow.state()
        if state.rate is None:
            return []
        return [Observation(state.rate, {"nebius.gate.pacing": state.pacing})]

    def _observe_budget(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self._active:
            return []
        budget = self._client.flow.state().budget
        return [] if budget == float("inf") else [Observation(budget)]

    # -- calls -------------------------------------------------------------------------------

    def _call_started(self, event: CallStarted) -> None:
        call = event.call
        parent = None
        if call.run is not None:
            run = self._runs.get(call.run)
            if run is not None:
                parent = trace.set_span_in_context(run)
        span = self._tracer.start_span(
            call.method,
            parent,
            SpanKind.INTERNAL,
            {"http.request.method": call.method, "nebius.dataset.id": call.dataset_id},
        )
        self._calls[call] = _Call(span)

    def _admitted(self, event: Admitted) -> None:
        waited = event.waited_place + event.waited_slot
        if waited > 0.0:  # attempts admitted at once are not recorded (each record costs)
            self._wait.record(waited, self._server)

    def _sent(self, event: Sent) -> None:
        state = self._calls.get(event.call)
        if state is None:
            return
        call = event.call
        attributes: dict[str, Any] = {
            "http.request.method": call.method,
            "url.full": self._base_url + call.path,
            "url.template": _TEMPLATE,
            **self._server,
        }
        if event.attempt > 1:
            attributes["http.request.resend_count"] = event.attempt - 1
        span = self._tracer.start_span(
            f"{call.method} {_TEMPLATE}", state.context, SpanKind.CLIENT, attributes
        )
        state.attempt = span
        if self._propagate:
            propagate.inject(event.headers, trace.set_span_in_context(span))

    def _duration_attrs(self, method: str, outcome: int | str) -> dict[str, Any]:
        """The duration histogram's attributes for (method, status or error type), built once:
        a handful of combinations in a process's life.
        """
        key = (method, outcome)
        attributes = self._metric_attrs.get(key)
        if attributes is None:
            attributes = {"http.request.method": method, **self._server}
            if isinstance(outcome, int):
                attributes["http.response.status_code"] = outcome
                if outcome >= 400:
                    attributes["error.type"] = str(outcome)
            else:
                attributes["error.type"] = outcome
            if len(self._metric_attrs) < 256:
                self._metric_attrs[key] = attributes
        return attributes

    def _answered(self, event: Answered) -> None:
        status = event.status
        self._duration.record(event.latency, self._duration_attrs(event.call.method, status))
        state = self._calls.get(event.call)
        if state is None or state.attempt is None:
            return
        span, state.attempt = state.attempt, None
        if span.is_recording():
            if status < 400:
                span.set_attributes(
                    {
                        "http.response.status_code": status,
                        "nebius.request_id": event.request_id or "",
                    }
                )
            else:
                span.set_attributes(
                    {
                        "http.response.status_code": status,
                        "nebius.request_id": event.request_id or "",
                        "error.type": str(status),
                    }
                )
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _failed(self, event: Failed) -> None:
        if event.reason == "overload":
            self._overloads.add(1, self._server)
        if event.status is not None:
            return  # an answer: recorded by _answered
        error_type = type(event.error).__name__
        self._duration.record(event.latency, self._duration_attrs(event.call.method, error_type))
        state = self._calls.get(event.call)
        if state is None or state.attempt is None:
            return
        span, state.attempt = state.attempt, None
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()

    def _throttled(self, event: Throttled) -> None:
        self._throttles.add(1, self._server)
        state = self._calls.get(event.call)
        if state is not None:
            attributes: dict[str, Any] = {"nebius.attempt": event.attempt}
            if event.retry_after is not None:
                attributes["nebius.retry_after"] = event.retry_after
            state.span.add_event("throttled", attributes)

    def _retrying(self, event: Retrying) -> None:
        self._retries.add(1, self._server)
        state = self._calls.get(event.call)
        if state is not None:
            state.span.add_event(
                "retry",
                {
                    "nebius.attempt": event.attempt,
                    "nebius.retry.delay": event.delay,
                    "error.type": type(event.error).__name__,
                },
            )

    def _call_ended(self, event: CallEnded) -> None:
        state = self._calls.pop(event.call, None)
        if state is None:
            return
        span = state.span
        if state.attempt is not None:  # cancelled while sending
            state.attempt.set_attribute("error.type", "cancelled")
            state.attempt.end()
        if not span.is_recording():
            span.end()
            return
        attributes: dict[str, Any] = {
            "nebius.attempts": event.attempts,
            "nebius.gate.wait": event.waited,
        }
        if event.status is not None:
            attributes["http.response.status_code"] = event.status
        span.set_attributes(attributes)
        if event.error is not None:
            error_type = "cancelled" if event.cancelled else type(event.error).__name__
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()

    # -- the gate ----------------------------------------------------------------------------

    def _paused(self, event: Paused) -> None:
        self._pauses.add(1, {"nebius.gate.pause.reason": event.reason})

    def _budget_spent(self, event: BudgetSpent) -> None:
        if not event.granted:
            self._refusals.add(1, {"nebius.gate.failure": event.failure})

    # -- bulk runs ---------------------------------------------------------------------------

    def _run_started(self, event: RunStarted) -> None:
        if self._run_spans:
            self._runs[event.run] = self._tracer.start_span(
                "bulk run", attributes={"nebius.run.concurrency": event.run.concurrency}
            )

    def _run_finished(self, event: RunFinished) -> None:
        span = self._runs.pop(event.run, None)
        if span is None:
            return
        p = event.progress
        span.set_attributes(
            {
                "nebius.run.succeeded": p.succeeded,
                "nebius.run.failed": p.failed,
                "nebius.run.skipped": p.skipped,
                "nebius.run.requests": p.requests,
                "nebius.run.retries": p.retries,
                "nebius.run.throttled": p.throttled,
            }
        )
        if event.error is not None:
            error_type = type(event.error).__name__
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()


def instrument(
    client: DatasetsClient,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    run_spans: bool = True,
    propagate_context: bool = True,
    traces: bool = True,
) -> Instrumentation:
    """Record ``client``'s calls, bulk runs and gate as OpenTelemetry spans and metrics.

    ``tracer_provider`` / ``meter_provider``: the global ones unless given. ``run_spans``:
    group a bulk run's calls under one ``bulk run`` span. ``propagate_context``: inject the
    trace context into each request's headers (the global propagator: W3C ``traceparent``
    by default). ``traces=False``: metrics only (cheaper: no span is made and no per-call
    span event built). Returns the ``Instrumentation``; ``.uninstrument()`` stops it.
    """
    return Instrumentation(
        client,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        run_spans=run_spans,
        propagate_context=propagate_context,
        traces=traces,
    )
