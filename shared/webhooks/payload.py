"""The webhook body: `{"type": "run.<status>", "timestamp": ISO-8601 UTC, "data": run}` as compact JSON."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Mapping

TERMINAL_EVENT_TYPES = {
    "completed": "run.completed",
    "failed": "run.failed",
    "cancelled": "run.cancelled",
    "incomplete": "run.incomplete",
    "requires_action": "run.requires_action",
    "expired": "run.expired",
}


def event_type_for(status: str) -> str:
    """`completed` -> `run.completed` etc.; ValueError for a status that triggers no webhook."""
    try:
        return TERMINAL_EVENT_TYPES[status]
    except KeyError:
        raise ValueError(f"no webhook event for run status {status!r}") from None


def iso_utc(timestamp: datetime) -> str:
    """`2025-01-02T03:04:05.678Z`; rejects naive datetimes (ambiguous zone)."""
    if timestamp.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    utc = timestamp.astimezone(timezone.utc)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_payload(run: Mapping[str, Any], timestamp: datetime) -> bytes:
    """Compact UTF-8 JSON bytes; these exact bytes are signed and sent."""
    document = {"type": event_type_for(run["status"]), "timestamp": iso_utc(timestamp), "data": dict(run)}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
