"""Telemetry of the service: one trace per run across every invocation, metrics, export to Application Insights
or OTLP (or nowhere, at no cost), structured step logs, and the run's own timeline.

Framework-free (the OpenTelemetry API and SDK only, imported when telemetry is on). The rest of the service uses
these names only; see `steps` for how a run's trace is put together and `setup` for where it goes.
"""

from typing import Any

from .calls import TracedBackend, WebhookAttempt, storage_response_hook
from .setup import configure, disable, flush, targets, use
from .state import enabled
from .steps import (
    annotate,
    bind_run,
    capacity,
    consumed,
    current,
    finished,
    finishing,
    http_entry,
    incoming_request,
    message_fields,
    record,
    run_created,
    run_step,
    step_name,
    timed,
)
from .timeline import Timeline

__all__ = [
    "Timeline",
    "TracedBackend",
    "WebhookAttempt",
    "annotate",
    "bind_run",
    "capacity",
    "configure",
    "consumed",
    "current",
    "disable",
    "enabled",
    "finished",
    "finishing",
    "flush",
    "http_entry",
    "incoming_request",
    "message_fields",
    "record",
    "run_created",
    "run_step",
    "step_name",
    "storage_response_hook",
    "targets",
    "timed",
    "traced_backend",
    "use",
    "webhook_attempt",
]


def webhook_attempt(run: Any) -> WebhookAttempt:  # a Run: telemetry does not import the run model
    return WebhookAttempt(run)


def traced_backend(backend: Any, provider_kind: str = "openai") -> TracedBackend:  # any RunBackend
    return TracedBackend(backend, provider_kind)
