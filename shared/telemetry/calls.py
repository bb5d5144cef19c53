"""Spans around the calls a step makes: the provider (every RunBackend method), a webhook attempt, and the
counts of storage errors. Each is a child of the current step's span."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.transport import AsyncHttpResponse, HttpRequest

from .. import clock
from ..responses_vocabulary import is_terminal_event
from . import context as w3c
from . import metrics
from .completions import note_completed
from .state import STATE
from .steps import _STEP, CLIENT, Step, _otel

_PROVIDER_NAMES = {"openai": "openai", "azure_openai": "azure.ai.openai", "emulator": "openai"}


class _ClientCall:
    """A CLIENT span under the current step (nothing with telemetry off)."""

    __slots__ = ("span", "step")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self.step = _STEP.get()
        self.span = (
            STATE.tracer.start_span(name, kind=_otel()["kinds"][CLIENT], attributes=attributes)
            if STATE.enabled
            else None
        )

    def set(self, **attributes: Any) -> None:
        if self.span is not None and self.span.is_recording():
            self.span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def fail(self, error_type: str) -> None:
        if self.span is not None:
            otel = _otel()
            self.span.set_attribute("error.type", error_type)
            self.span.set_status(otel["Status"](otel["ERROR"], error_type))

    def end(self) -> None:
        if self.span is not None:
            self.span.end()


# -- the provider ------------------------------------------------------------------------------------------------
class TracedBackend:
    """Any RunBackend, with a span, a metric and the run's call count around each provider call."""

    def __init__(self, inner: Any, provider_kind: str = "openai") -> None:
        self._inner = inner
        self._provider = _PROVIDER_NAMES.get(provider_kind, provider_kind)

    def __getattr__(self, name: str) -> Any:  # anything else a backend offers, unchanged
        return getattr(self._inner, name)

    async def _call(self, operation: str, call: Callable[[], Awaitable[Any]], attributes: dict[str, Any]) -> Any:
        step: Step | None = _STEP.get()
        if step is not None and step.run is not None:
            step.run.timeline.count_provider_call()
        if not STATE.enabled:
            result = await call()
            _seen(step, result)
            return result
        span = _ClientCall(f"provider {operation}", {"gen_ai.provider.name": self._provider, **attributes})
        try:
            result = await call()
        except Exception as error:
            status = getattr(error, "status", None)
            transient = getattr(error, "transient", None)
            span.set(**{"http.response.status_code": status})
            span.fail(f"provider_{status or 'unreachable'}" if transient is not None else type(error).__name__)
            raise
        else:
            state = getattr(result, "state", result)  # start() returns Started(state, events)
            if state is not None:
                span.set(
                    **{
                        "gen_ai.response.id": getattr(state, "response_id", None),
                        "bgruns.provider_status": getattr(state, "status", None),
                    }
                )
                if getattr(state, "is_active", True) is False:
                    note_completed(getattr(state, "response", None))
            _seen(step, result)
            return result
        finally:
            span.end()

    # `where`: the deployment a call goes to (provider.pool), passed on as given.
    async def start(self, params: dict[str, Any], *, stream: bool, **where: Any) -> Any:
        started = await self._call(
            "create",
            lambda: self._inner.start(params, stream=stream, **where),
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": params.get("model"),
                "gen_ai.request.stream": stream,
            }
            if STATE.enabled
            else {},
        )
        if STATE.enabled and getattr(started, "events", None) is not None:
            started.events = _WatchedEvents(started.events)
        return started

    async def observe(self, response_id: str, **where: Any) -> Any:
        return await self._call("retrieve", lambda: self._inner.observe(response_id, **where), {})

    async def cancel(self, response_id: str, **where: Any) -> Any:
        return await self._call("cancel", lambda: self._inner.cancel(response_id, **where), {})

    async def events(self, response_id: str, after: int, **where: Any) -> Any:
        stream = await self._call(
            "stream",
            lambda: self._inner.events(response_id, after, **where),
            {"gen_ai.response.id": response_id, "bgruns.after": after} if STATE.enabled else {},
        )
        return _WatchedEvents(stream) if STATE.enabled else stream


def _seen(step: Step | None, result: Any) -> None:
    """The step that asked says what the provider said (the status seen by a poll, a cancel, a start)."""
    status = getattr(getattr(result, "state", result), "status", None)
    if step is not None and isinstance(status, str):
        step.set(provider_status=status)


class _WatchedEvents:
    """A provider event stream that notes when its response ended (for the detection-lag metric)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for event in self._inner:
            if is_terminal_event(getattr(event, "type", None)):
                note_completed(getattr(event, "response", None))
            yield event

    async def close(self) -> None:
        await self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# -- our webhook ---------------------------------------------------------------------------------------------------
class WebhookAttempt:
    """One delivery attempt of a run's webhook: a CLIENT span whose context the POST carries as `traceparent`
    (the run's own context when telemetry is off), and the attempt's metrics."""

    def __init__(self, run: Any) -> None:
        hook = run.webhook
        self._run = run
        self._call = _ClientCall(
            "webhook POST",
            {
                "bgruns.run_id": run.id,
                "bgruns.webhook.id": hook.id,
                "bgruns.webhook.attempt": len(hook.attempts) + 1,
                "http.request.method": "POST",
                "server.address": urlsplit(run.webhook_url or "").hostname or "",
            }
            if STATE.enabled
            else {},
        )
        self.headers = self._headers()

    def _headers(self) -> dict[str, str]:
        if self._call.span is not None:
            carrier: dict[str, str] = {}
            otel = _otel()
            otel["propagator"].inject(carrier, context=otel["trace"].set_span_in_context(self._call.span))
            traceparent = w3c.valid_traceparent(carrier.get(w3c.TRACEPARENT))
            if traceparent:
                return w3c.fields(traceparent, w3c.valid_tracestate(carrier.get(w3c.TRACESTATE), traceparent))
        return w3c.fields(getattr(self._run, "traceparent", ""), getattr(self._run, "tracestate", ""))

    def __enter__(self) -> WebhookAttempt:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._call.fail(type(exc).__name__)
        self._call.end()

    def record(self, attempt: Any, state: str) -> None:
        """The attempt as made, and the delivery's state after it."""
        outcome = "ok" if attempt.ok else "refused" if attempt.refused else "failed"
        status = attempt.status_code
        self._call.set(
            **{
                "http.response.status_code": status,
                "bgruns.webhook.status_code": status,
                "bgruns.outcome": outcome,
                "bgruns.webhook.state": state,
                "bgruns.duration_ms": attempt.duration_ms,
            }
        )
        if not attempt.ok:
            self._call.fail(f"http_{status}" if status else "no_response")
        step = _STEP.get()
        if step is not None:
            step.set(webhook_status=status, webhook_state=state)
        metrics.add("webhook_attempts", outcome=outcome, **{"http.response.status_code": status})
        if state == "failed":
            metrics.add("webhook_failures")
        delivered = sum(1 for a in self._run.webhook.attempts if a.get("ok"))
        if attempt.ok and delivered == 1 and self._run.completed_at:
            lag = max(0.0, clock.now() - self._run.completed_at)
            metrics.record("delivery_lag", lag)
            self._call.set(**{"bgruns.delivery_lag_s": round(lag, 3)})


# -- storage -------------------------------------------------------------------------------------------------------
_EXPECTED_STATUSES = frozenset({404, 409, 412})  # not found, exists, ETag mismatch: how the stores work


def storage_response_hook(service: str) -> Callable[[PipelineResponse[HttpRequest, AsyncHttpResponse]], None]:
    """An azure-core `raw_response_hook` counting storage errors (429, 5xx, unexpected 4xx)."""

    def count(response: PipelineResponse[HttpRequest, AsyncHttpResponse]) -> None:
        if not STATE.enabled:
            return
        status = response.http_response.status_code
        if status >= 400 and status not in _EXPECTED_STATUSES:
            metrics.add("storage_errors", 1, **{"bgruns.storage.service": service, "http.response.status_code": status})

    return count
