"""Which telemetry pipeline this process runs, chosen once from the settings, and nothing at all when none is set.

- `APPLICATIONINSIGHTS_CONNECTION_STRING`: the Azure Monitor OpenTelemetry distro (traces, metrics, and the
  service's own `bgruns.*` log lines). With `APPLICATIONINSIGHTS_AUTHENTICATION_STRING`
  (`ClientId=...;Authorization=AAD`, as infra/ sets it) the exporter signs in with that managed identity.
- `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal `_TRACES_` / `_METRICS_` endpoints), with the standard
  `OTEL_EXPORTER_OTLP_*` settings: OTLP over HTTP/protobuf. Both can be set: both get everything.
- `TELEMETRY_FILE` (local development): spans and metrics as OTLP/JSON lines in that file, or `console`.
- none of them: telemetry is off. Nothing is imported beyond this module, the hooks check one flag and return,
  and the service still passes a caller's `traceparent` through to its webhook.

A tracer provider installed by someone else (the Functions worker configures the distro itself when
`PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY` is true) is used as it is, never configured twice.

The distro's automatic instrumentations are left off on purpose: the Azure SDK one would make every storage
request a span (three to six per poll step, most of the telemetry's cost) and the httpx one would duplicate the
provider and webhook spans the service makes itself with the run's attributes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when telemetry is switched on, not before
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor

from . import metrics
from .state import STATE

log = logging.getLogger("bgruns.telemetry")

SERVICE_NAME = "background-runs"
TRACER_NAME = "bgruns"
LOGGER_NAME = "bgruns"  # the only loggers the distro exports: the service's own lines, no library chatter
_DISTRO_INSTRUMENTATIONS = (
    "azure_sdk",
    "django",
    "fastapi",
    "flask",
    "psycopg2",
    "requests",
    "urllib",
    "urllib3",
    "httpx",
    "httpx2",
)
_OTLP_ENDPOINTS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


def targets(env: Mapping[str, str]) -> list[str]:
    """Where telemetry goes for these settings (empty: off)."""
    if (env.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
        return []
    chosen = []
    if (env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or "").strip():
        chosen.append("azure_monitor")
    if any((env.get(name) or "").strip() for name in _OTLP_ENDPOINTS):
        chosen.append("otlp")
    if (env.get("TELEMETRY_FILE") or "").strip():
        chosen.append("file")
    return chosen


def configure(env: Mapping[str, str] | None = None) -> str:
    """Set up telemetry for this process from the settings (once); returns the mode ("off", "azure_monitor",
    "otlp", "file", joined with "+" when several, or "external")."""
    if STATE.mode != "off":
        return STATE.mode
    env = os.environ if env is None else env
    chosen = targets(env)
    external = _installed_tracer_provider() if chosen or _otel_imported() else None
    if external is not None:
        from opentelemetry import metrics, trace

        _use(trace.get_tracer_provider(), metrics.get_meter_provider(), "external")
        return STATE.mode
    if not chosen:
        return "off"
    try:
        tracer_provider, meter_provider = _build(chosen, env)
    except Exception as error:  # noqa: BLE001 - telemetry must never stop the service from starting
        log.error("telemetry is off: setting up %s failed (%s: %s)", "+".join(chosen), type(error).__name__, error)
        return "off"
    _use(tracer_provider, meter_provider, "+".join(chosen))
    log.info("telemetry on: %s", STATE.mode)
    return STATE.mode


def use(tracer_provider: Any, meter_provider: Any = None, mode: str = "custom") -> None:
    """Send the service's telemetry to these providers (tests, benchmarks); without touching the globals."""
    _use(tracer_provider, meter_provider, mode)


def disable() -> None:
    """Back to off (tests)."""
    STATE.enabled, STATE.mode, STATE.tracer, STATE.meter = False, "off", None, None
    STATE.tracer_provider = STATE.meter_provider = None
    metrics.reset()


def flush(timeout_millis: int = 5000) -> None:
    for provider in (STATE.tracer_provider, STATE.meter_provider):
        if provider is not None and hasattr(provider, "force_flush"):
            provider.force_flush(timeout_millis)


def _use(tracer_provider: Any, meter_provider: Any, mode: str) -> None:
    STATE.tracer_provider, STATE.meter_provider = tracer_provider, meter_provider
    STATE.tracer = tracer_provider.get_tracer(TRACER_NAME)
    STATE.meter = meter_provider.get_meter(TRACER_NAME) if meter_provider is not None else None
    STATE.mode = mode
    metrics.reset()
    STATE.enabled = True


def _otel_imported() -> bool:
    import sys

    return "opentelemetry.trace" in sys.modules


def _installed_tracer_provider() -> Any:
    """An SDK tracer provider someone else installed as the global one (no SDK import to find out)."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return provider if type(provider).__module__.startswith("opentelemetry.sdk") else None


def _resource(env: Mapping[str, str]) -> Resource:
    from opentelemetry.sdk.resources import Resource

    name = (env.get("OTEL_SERVICE_NAME") or "").strip() or SERVICE_NAME
    return Resource.create({"service.name": name})


def _distro_instrumentations() -> set[str]:
    """Every automatic instrumentation the distro knows (its list grows: httpx2, the openai client's HTTP library,
    arrived in 1.8), so all stay off."""
    try:
        from azure.monitor.opentelemetry._constants import _ALL_SUPPORTED_INSTRUMENTED_LIBRARIES as known
    except ImportError:
        return set(_DISTRO_INSTRUMENTATIONS)
    return set(_DISTRO_INSTRUMENTATIONS) | set(known)


def _without_agent_processors(provider: Any) -> None:
    """The distro's GenAI "main agent" span processor runs on every span's start and end to attribute agent
    spans; the service makes none, and it is a tenth of the telemetry's CPU per poll (bench/telemetry.py). A
    private attribute: if the distro changes it, the processor simply stays."""
    active = getattr(provider, "_active_span_processor", None)
    processors = getattr(active, "_span_processors", None)
    if active is not None and isinstance(processors, tuple):
        active._span_processors = tuple(p for p in processors if type(p).__name__ != "_GenAIMainAgentSpanProcessor")


def _cheap_defaults() -> None:
    """Exemplars (a trace sample kept with each histogram bucket) cost CPU on every measurement and nothing here
    reads them; an explicit OTEL_METRICS_EXEMPLAR_FILTER still wins."""
    os.environ.setdefault("OTEL_METRICS_EXEMPLAR_FILTER", "always_off")


def _quiet_step_lines() -> None:
    """The distro exports the `bgruns` loggers; the per-step INFO lines repeat what the step's span already
    carries (and reach the host's log stream anyway), so only warnings and errors go out as log records."""
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        if type(handler).__module__.startswith("opentelemetry"):
            handler.setLevel(logging.WARNING)


def _build(chosen: list[str], env: Mapping[str, str]) -> tuple[Any, Any]:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    _cheap_defaults()
    span_processors: list[SpanProcessor] = []
    metric_readers: list[MetricReader] = []
    if "otlp" in chosen:
        protocol = (env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
        if protocol != "http/protobuf":
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: only http/protobuf is installed")
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        metric_readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if "file" in chosen:
        from .local_export import local_exporters

        span_exporter, metric_exporter = local_exporters(env["TELEMETRY_FILE"].strip())
        span_processors.append(SimpleSpanProcessor(span_exporter))  # a developer reads it at once
        metric_readers.append(PeriodicExportingMetricReader(metric_exporter, export_interval_millis=10_000))
    if "azure_monitor" in chosen:
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor(
            resource=_resource(env),
            logger_name=LOGGER_NAME,
            span_processors=span_processors,
            metric_readers=metric_readers,
            enable_live_metrics=False,
            enable_performance_counters=False,
            instrumentation_options={name: {"enabled": False} for name in _distro_instrumentations()},
        )
        _quiet_step_lines()
        _without_agent_processors(trace.get_tracer_provider())
        return trace.get_tracer_provider(), metrics.get_meter_provider()
    tracer_provider = TracerProvider(resource=_resource(env))
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(metric_readers=metric_readers, resource=_resource(env))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider
