"""Steps: one span (when telemetry is on) and one structured log line for each piece of work done on a run.

An entry point opens a step (`http_entry`, `consumed`, `timed`); code below it says which run the step is about
(`bind_run`, `run_created`), what it saw and chose (`annotate`, `record`), and opens a step of its own in the
run's trace where the work has no message to carry the trace (`run_step`: cancel, sweeper repairs, a provider
webhook, a stream's end).

The run's trace is decided when it starts: the caller's `traceparent` (or the host's invocation span in that
trace) is the parent of the start, and the start's span context is stored with the run. Every later step of
the run is a child of that context (read from the queue message, or from the run), so a run is one trace, one
level deep, in time order, whichever instance or invocation did the work; the invocation's own context (a
caller's trace, the host's span, the sweep) is linked.

Attributes are ids, statuses, delays and counts: never a secret, an input, an output, metadata or a URL path.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from .. import clock
from . import context as w3c
from . import metrics
from .completions import provider_completed_at
from .state import STATE

_STEP: ContextVar[Step | None] = ContextVar("bgruns_step", default=None)
_OTEL: dict[str, Any] = {}  # the OpenTelemetry API pieces, imported on first use with telemetry on

SERVER, CONSUMER, INTERNAL, CLIENT = "SERVER", "CONSUMER", "INTERNAL", "CLIENT"


def _otel() -> dict[str, Any]:
    if not _OTEL:
        from opentelemetry import context, trace
        from opentelemetry.trace import (
            Link,
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
            TraceState,
            format_span_id,
            format_trace_id,
        )
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _OTEL.update(
            context=context,
            trace=trace,
            Link=Link,
            kinds={k: getattr(SpanKind, k) for k in (SERVER, CONSUMER, INTERNAL, CLIENT)},
            Status=Status,
            ERROR=StatusCode.ERROR,
            propagator=TraceContextTextMapPropagator(),
            format_trace_id=format_trace_id,
            format_span_id=format_span_id,
            SpanContext=SpanContext,
            TraceFlags=TraceFlags,
            TraceState=TraceState,
            NonRecordingSpan=NonRecordingSpan,
        )
    return _OTEL


def _attribute_name(key: str) -> str:
    return key if "." in key else "bgruns." + key


class Step:
    """What one step did: its span (None with telemetry off), its run, and the fields of its log line."""

    __slots__ = (
        "_context_token",
        "_token",
        "counter",
        "fields",
        "incoming",
        "logger",
        "name",
        "queue",
        "run",
        "run_id",
        "span",
        "started",
    )

    def __init__(
        self, name: str, logger: str, *, incoming: tuple[str, str] = ("", ""), queue: str = "", counter: str = ""
    ) -> None:
        self.name, self.logger = name, logger
        self.span: Any = None
        self.run: Any = None
        self.run_id = ""
        self.fields: dict[str, Any] = {}
        self.started = time.monotonic()
        self.incoming = incoming  # the caller's / message's trace context, passed through with telemetry off
        self.queue, self.counter = queue, counter
        self._token: Token[Step | None] | None = None
        self._context_token: object = None  # OpenTelemetry's context token, opaque

    # -- what code below the entry point says -----------------------------------------------------------------
    def set(self, **fields: Any) -> None:
        """Fields of the log line and attributes of the span (set on it once, when the step ends: cheaper)."""
        self.fields.update((k, v) for k, v in fields.items() if v is not None)

    @property
    def trace_id(self) -> str:
        if self.span is not None:
            span_context = self.span.get_span_context()
            if span_context.is_valid:
                trace_id: str = _otel()["format_trace_id"](span_context.trace_id)
                return trace_id
        traceparent = getattr(self.run, "traceparent", "") or self.incoming[0]
        return w3c.trace_id(traceparent)

    def trace_context(self) -> tuple[str, str]:
        """(traceparent, tracestate) of this step's span, or what came in when telemetry is off."""
        if self.span is not None:
            carrier: dict[str, str] = {}
            otel = _otel()
            otel["propagator"].inject(carrier, context=otel["trace"].set_span_in_context(self.span))
            traceparent = w3c.valid_traceparent(carrier.get(w3c.TRACEPARENT))
            if traceparent:
                return traceparent, w3c.valid_tracestate(carrier.get(w3c.TRACESTATE), traceparent)
        return self.incoming

    # -- scope ------------------------------------------------------------------------------------------------
    def __enter__(self) -> Step:
        self._token = _STEP.set(self)
        if self.span is not None:
            otel = _otel()
            self._context_token = otel["context"].attach(otel["trace"].set_span_in_context(self.span))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._close(exc)
        finally:
            if self._context_token is not None:
                _otel()["context"].detach(self._context_token)
            if self._token is not None:
                _STEP.reset(self._token)
            # Contexts copied while this step was current outlive it (asyncio copies the context into every
            # callback it schedules: a connection opened now keeps it in its reader for as long as its pool keeps
            # the connection), and they hold this object: it lets go of the run (input, output) and the span.
            self.run = self.span = None

    def _close(self, error: BaseException | None) -> None:
        if error is not None:
            self.set(**{"error.type": type(error).__name__})
        if self.counter:
            metrics.add(self.counter, outcome=self.fields.get("outcome") or ("error" if error else None))
        if self.run_id or error is not None or self.queue:
            self._log(error)
        if self.span is not None:
            if self.span.is_recording():
                self.span.set_attributes({_attribute_name(k): v for k, v in self.fields.items()})
            if error is not None:
                otel = _otel()
                self.span.set_status(otel["Status"](otel["ERROR"], type(error).__name__))
            self.span.end()

    def _log(self, error: BaseException | None) -> None:
        logger = logging.getLogger(self.logger)
        level = logging.WARNING if error is not None else logging.INFO
        if not logger.isEnabledFor(level):
            return
        trace = self.trace_id
        details = " ".join(f"{k}={v}" for k, v in self.fields.items() if k not in ("outcome", "run_id"))
        ms = int((time.monotonic() - self.started) * 1000)
        logger.log(
            level,
            "%s %s: %s%s (%d ms) trace=%s",
            self.name,
            self.run_id or "-",
            self.fields.get("outcome") or (type(error).__name__ if error else "done"),
            f" {details}" if details else "",
            ms,
            trace or "-",
            extra={
                "run_id": self.run_id or None,
                "trace_id": trace or None,
                "step": self.name,
                "duration_ms": ms,
                **{"bgruns_" + k.replace(".", "_"): v for k, v in self.fields.items()},
            },
        )


def current() -> Step | None:
    return _STEP.get()


# -- opening steps -----------------------------------------------------------------------------------------------
def _parent(traceparent: str, tracestate: str) -> Any:
    """The context whose span is the remote parent `traceparent` (already validated by shared.telemetry.context,
    so it is built directly: cheaper than the propagator's parsing on every step)."""
    otel = _otel()
    _, trace_hex, span_hex, flags = traceparent.split("-")[:4]
    span_context = otel["SpanContext"](
        int(trace_hex, 16),
        int(span_hex, 16),
        is_remote=True,
        trace_flags=otel["TraceFlags"](int(flags, 16)),
        trace_state=otel["TraceState"].from_header([tracestate]) if tracestate else None,
    )
    return otel["trace"].set_span_in_context(otel["NonRecordingSpan"](span_context))


def _current_span_context() -> Any:
    span_context = _otel()["trace"].get_current_span().get_span_context()
    return span_context if span_context.is_valid else None


def _start(step: Step, kind: str, parent: Any, links: list[Any], attributes: dict[str, Any]) -> Step:
    otel = _otel()
    step.span = STATE.tracer.start_span(
        step.name,
        context=parent,
        kind=otel["kinds"][kind],
        links=[otel["Link"](link) for link in links],
        attributes=attributes,
    )
    return step


Handler = Callable[[Any], Awaitable[Any]]  # an HTTP handler: `async def f(req) -> response`


def http_entry(name: str, logger: str = "bgruns.http") -> Callable[[Handler], Handler]:
    """Decorator for an HTTP handler `async def f(req) -> response`: a step whose parent is the caller's
    `traceparent` (or the host's span for this invocation when it is in the caller's trace, or none)."""

    def decorate(func: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
        @functools.wraps(func)
        async def wrapper(req: Any) -> Any:
            with incoming_request(name, getattr(req, "headers", None), logger=logger) as step:
                response = await func(req)
                status = getattr(response, "status_code", None)
                step.set(**{"http.response.status_code": status})
                if status is not None and status >= 500 and step.span is not None:
                    otel = _otel()
                    step.span.set_status(otel["Status"](otel["ERROR"], f"HTTP {status}"))
                return response

        return wrapper

    return decorate


def incoming_request(name: str, headers: Mapping[str, str] | None, *, logger: str = "bgruns.http") -> Step:
    """A step for an incoming HTTP request (the Responses facade calls this with its request's headers)."""
    incoming = w3c.from_headers(headers)
    step = Step(name, logger, incoming=incoming)
    if not STATE.enabled:
        return step
    host = _current_span_context()
    traceparent, tracestate = incoming
    if traceparent and not (
        host is not None and _otel()["format_trace_id"](host.trace_id) == w3c.trace_id(traceparent)
    ):
        return _start(
            step,
            SERVER if host is None else INTERNAL,
            _parent(traceparent, tracestate),
            [host] if host is not None else [],
            {},
        )
    return _start(step, SERVER if host is None else INTERNAL, None, [], {})


def consumed(
    name: str,
    message: Mapping[str, Any],
    *,
    queue: str,
    enqueued_at: datetime | None = None,
    logger: str,
    counter: str = "",
) -> Step:
    """A step for a queue message the service sent: its parent is the message's trace context (the run's)."""
    incoming = w3c.from_message(message)
    step = Step(name, logger, incoming=incoming, queue=queue, counter=counter)
    run_id = message.get("run_id") if message else None
    if isinstance(run_id, str):
        step.run_id = run_id  # known before the run is read: a stale message's line names its run too
    if enqueued_at is not None and STATE.enabled:
        age = datetime.now(UTC) - (enqueued_at if enqueued_at.tzinfo else enqueued_at.replace(tzinfo=UTC))
        metrics.record("message_age", age.total_seconds(), **{"messaging.destination.name": queue})
    if not STATE.enabled:
        return step
    host = _current_span_context()
    parent = _parent(*incoming) if incoming[0] else None
    return _start(
        step,
        CONSUMER,
        parent,
        [host] if host is not None and parent is not None else [],
        {"messaging.destination.name": queue},
    )


def timed(name: str, *, logger: str) -> Step:
    """A step for a timer invocation (the sweeper, retention): a trace of its own."""
    step = Step(name, logger)
    return _start(step, INTERNAL, None, [], {}) if STATE.enabled else step


def run_step(name: str, run: Any, *, logger: str) -> Step:
    """A step in the run's own trace for work that has no message to carry it (cancel, a sweeper repair, a
    provider webhook, a stream's end); the invocation it happens in is linked."""
    step = Step(name, logger, incoming=(getattr(run, "traceparent", ""), getattr(run, "tracestate", "")))
    if STATE.enabled:
        here = _current_span_context()
        traceparent = step.incoming[0]
        same_trace = here is not None and _otel()["format_trace_id"](here.trace_id) == w3c.trace_id(traceparent)
        parent = _parent(*step.incoming) if traceparent and not same_trace else None
        _start(step, INTERNAL, parent, [here] if here is not None and parent is not None else [], {})
    _bind(step, run)
    return step


# -- what the code below says ------------------------------------------------------------------------------------
def _bind(step: Step, run: Any) -> None:
    step.run, step.run_id = run, run.id
    attributes = {
        "run_id": run.id,
        "session_id": getattr(run, "session_id", None),
        "gen_ai.response.id": getattr(run, "response_id", None),
    }
    step.set(**attributes)


def bind_run(run: Any) -> None:
    """The current step is about this run (attributes, the log line, provider calls counted on the run); a step
    in another trace (a caller's) links to the run's."""
    step = _STEP.get()
    if step is None:
        return
    _bind(step, run)
    traceparent = getattr(run, "traceparent", "")
    if step.span is not None and traceparent and step.trace_id != w3c.trace_id(traceparent):
        otel = _otel()
        run_context = otel["trace"].get_current_span(_parent(traceparent, run.tracestate)).get_span_context()
        step.span.add_link(run_context)
    if step.queue and STATE.enabled and getattr(run, "next_poll_at", None) and step.counter == "poll_steps":
        metrics.record("pickup_delay", clock.now() - run.next_poll_at)


def run_created(run: Any) -> None:
    """A new run: its trace context is this step's (the caller's when telemetry is off), and it starts its
    timeline."""
    step = _STEP.get()
    if step is not None:
        run.traceparent, run.tracestate = step.trace_context()
        _bind(step, run)
    run.timeline.record("created", clock.now())
    metrics.add("runs_started", stream=bool(getattr(run, "stream", False)))


def capacity(outcome: str, waited: float | None = None) -> None:
    """A create the provider had no room for (`queued` at the start, `waiting` on a later try), or (`waited`
    seconds) the end of a run's wait for capacity: `granted`, or how the run ended while it waited."""
    if waited is None:
        metrics.add("capacity_queued", outcome=outcome)
    else:
        metrics.record("capacity_wait", waited, outcome=outcome)


def annotate(**fields: Any) -> None:
    """Attributes (and log fields) of the current step: what it saw and chose."""
    step = _STEP.get()
    if step is not None:
        step.set(**fields)


def record(run: Any, kind: str, **fields: Any) -> None:
    """An entry in the run's timeline (stored with its next save) and the same fields on the current step."""
    run.timeline.record(kind, clock.now(), **fields)
    step = _STEP.get()
    if step is not None and step.run_id == run.id:
        step.set(**fields)


def step_name() -> str | None:
    step = _STEP.get()
    return step.name if step is not None else None


def message_fields(run: Any) -> dict[str, str]:
    """The trace context fields a queue message about this run carries (the run's own context)."""
    return w3c.fields(getattr(run, "traceparent", ""), getattr(run, "tracestate", ""))


def finishing(run: Any, status: str) -> None:
    """The run is about to be saved terminal: its timeline says so, by which step, and when the provider said the
    response ended (its `completed_at`, whole seconds at OpenAI), where it did."""
    response = (getattr(run, "result", None) or {}).get("response") or {}
    run.timeline.record(
        "finished", clock.now(), status=status, via=step_name(), provider_completed_at=response.get("completed_at")
    )


def finished(run: Any) -> None:
    """The run was saved terminal (once): the finish metrics, and the usage on the step."""
    via = step_name()
    metrics.add("runs_finished", status=run.status, via=via)
    metrics.record("run_provider_calls", run.timeline.provider_calls, status=run.status)
    completed_at = provider_completed_at(getattr(run, "response_id", None))
    if completed_at is not None and run.completed_at:
        lag = max(0.0, run.completed_at - completed_at)
        metrics.record("detection_lag", lag, via=via)
        annotate(detection_lag_s=round(lag, 3))  # per run, for percentiles over spans
    usage = (run.result or {}).get("usage") or {}
    annotate(
        status=run.status,
        **{
            "gen_ai.usage.input_tokens": usage.get("input_tokens"),
            "gen_ai.usage.output_tokens": usage.get("output_tokens"),
        },
    )
