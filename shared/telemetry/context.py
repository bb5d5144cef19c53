"""W3C trace context as the service carries it: validated `traceparent` / `tracestate` strings, read from HTTP
headers and queue messages and written into them. Pure string work (no OpenTelemetry import), so a service
with telemetry off still passes a caller's trace context on to its webhook, as W3C asks of a participant that
does not trace itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# version-traceid-parentid-flags; version ff is invalid, all-zero ids are invalid (W3C Trace Context, 3.2).
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
MAX_TRACESTATE_CHARS = 512  # W3C: at most 32 members; vendors may drop it whole when too long


def valid_traceparent(value: Any) -> str:
    """The traceparent in canonical form (version 00), or "" when absent or malformed."""
    if not isinstance(value, str):
        return ""
    match = _TRACEPARENT.match(value.strip().lower())
    if not match:
        return ""
    version, trace_id, span_id, flags = match.groups()
    if (
        version == "ff"
        or trace_id == _ZERO_TRACE
        or span_id == _ZERO_SPAN
        or (version == "00" and len(value.strip()) != 55)
    ):
        return ""
    return f"00-{trace_id}-{span_id}-{flags}"


def valid_tracestate(value: Any, traceparent: str) -> str:
    """tracestate travels only with a valid traceparent, and only when short enough to carry."""
    if not traceparent or not isinstance(value, str):
        return ""
    value = value.strip()
    return value if len(value) <= MAX_TRACESTATE_CHARS and "\n" not in value else ""


def trace_id(traceparent: str) -> str:
    return traceparent[3:35] if traceparent else ""


def from_headers(headers: Mapping[str, str] | None) -> tuple[str, str]:
    """(traceparent, tracestate) from HTTP headers (a case-insensitive mapping, or a plain dict of any case)."""
    if not headers:
        return "", ""
    parent = headers.get(TRACEPARENT) or headers.get("Traceparent") or headers.get("TRACEPARENT")
    traceparent = valid_traceparent(parent)
    return traceparent, valid_tracestate(headers.get(TRACESTATE) or headers.get("Tracestate"), traceparent)


def from_message(data: Mapping[str, Any] | None) -> tuple[str, str]:
    """(traceparent, tracestate) from a queue message's JSON object (optional fields)."""
    if not data:
        return "", ""
    traceparent = valid_traceparent(data.get(TRACEPARENT))
    return traceparent, valid_tracestate(data.get(TRACESTATE), traceparent)


def fields(traceparent: str, tracestate: str = "") -> dict[str, str]:
    """The optional message or header fields for a trace context (nothing when there is none)."""
    if not traceparent:
        return {}
    return {TRACEPARENT: traceparent, TRACESTATE: tracestate} if tracestate else {TRACEPARENT: traceparent}
