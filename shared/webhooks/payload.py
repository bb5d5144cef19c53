"""The webhook body: `{"type": "run.<status>", "timestamp": ISO-8601 UTC, "data": run}` as compact JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..clock import iso_utc

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


def build_payload(run: Mapping[str, Any], timestamp: datetime | float) -> bytes:
    """Compact UTF-8 JSON bytes; these exact bytes are signed and sent. `timestamp`: an aware datetime or
    epoch seconds (naive datetimes are refused: their zone is ambiguous)."""
    document = {"type": event_type_for(run["status"]), "timestamp": iso_utc(timestamp), "data": dict(run)}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
