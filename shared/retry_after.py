"""`Retry-After` (RFC 9110: delta-seconds or an HTTP-date) and OpenAI's `retry-after-ms`, as seconds.

Used for the provider's answers and for webhook receivers'. Anything unparseable is ignored (None), so a
malformed header never breaks error handling: the caller's own backoff applies instead.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime

# One bad header must not stall a run or a delivery for days.
MAX_SECONDS = 24 * 3600.0


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait: delta-seconds, or an HTTP-date (a past date gives 0); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(int(value)), MAX_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), MAX_SECONDS)


def retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    """`retry-after-ms` (OpenAI, Azure OpenAI) if valid, else `retry-after`."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            seconds = float(ms) / 1000
        except ValueError:
            seconds = None
        if seconds is not None and 0 <= seconds < float("inf"):
            return min(seconds, MAX_SECONDS)
    return parse_retry_after(headers.get("retry-after"))
