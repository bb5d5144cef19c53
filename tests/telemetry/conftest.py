"""An in-memory span exporter and metric reader for the telemetry tests (the providers are handed to
shared.telemetry directly: no global OpenTelemetry state is touched)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import telemetry


@dataclass
class Recorded:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, name: str | None = None) -> list:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def metric_points(self, name: str) -> list:
        data = self.reader.get_metrics_data()
        points = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def recorded():
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use(provider, MeterProvider(metric_readers=[reader]))
    yield Recorded(exporter, reader)
    telemetry.disable()


@pytest.fixture(autouse=True)
def telemetry_off_afterwards():
    yield
    telemetry.disable()
