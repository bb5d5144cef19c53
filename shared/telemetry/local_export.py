"""Local development: spans and metrics as OTLP/JSON lines in a file (`TELEMETRY_FILE=.local/telemetry.jsonl`),
one export request per line, ids in hex as OTLP/JSON has them; or `TELEMETRY_FILE=console` to print spans.

`python -m local.traces .local/telemetry.jsonl [RUN_ID]` prints each trace as a tree."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def _hex_ids(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping writes base64."""
    if isinstance(node, dict):
        return {
            k: base64.b64decode(v).hex() if k in _ID_KEYS and isinstance(v, str) else _hex_ids(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    return node


class _Lines:
    """Appends one JSON document per line; shared by the span and metric exporters of one file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path, self._lock = path, threading.Lock()

    def write(self, document: dict[str, Any]) -> None:
        line = json.dumps(_hex_ids(document), separators=(",", ":")) + "\n"
        with self._lock, open(self._path, "a", encoding="utf-8") as file:
            file.write(line)


class JsonLinesSpanExporter(SpanExporter):
    def __init__(self, lines: _Lines) -> None:
        self._lines = lines

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self._lines.write(MessageToDict(encode_spans(spans)))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class JsonLinesMetricExporter(MetricExporter):
    def __init__(self, lines: _Lines) -> None:
        super().__init__()
        self._lines = lines

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self._lines.write(MessageToDict(encode_metrics(metrics_data)))
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class _NoMetrics(MetricExporter):
    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def local_exporters(target: str) -> tuple[SpanExporter, MetricExporter]:
    if target == "console":
        return ConsoleSpanExporter(), _NoMetrics()
    lines = _Lines(Path(target))
    return JsonLinesSpanExporter(lines), JsonLinesMetricExporter(lines)


def read_spans(path: str | Path) -> list[dict[str, Any]]:
    """Every span in an OTLP/JSON lines file, flattened, with its resource's service name."""
    spans = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        document = json.loads(line)
        for resource_spans in document.get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                spans.extend(scope_spans.get("spans", []))
    return spans


def attributes(span: dict[str, Any]) -> dict[str, Any]:
    """An OTLP/JSON span's attributes as a plain dict."""
    out = {}
    for attribute in span.get("attributes", []):
        value = attribute.get("value", {})
        out[attribute["key"]] = next(iter(value.values()), None) if value else None
    return out
