"""The one clock of the service (epoch seconds) and the one timestamp format (ISO-8601 UTC, milliseconds, Z).

Everything that stores or compares times calls `now()`, so tests can move time by patching one name.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> float:
    return time.time()


def iso_utc(moment: datetime | float) -> str:
    """`2025-01-02T03:04:05.678Z` for an aware datetime or epoch seconds; naive datetimes are refused."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    elif moment.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
