"""`Prefer: wait=N` (RFC 7240): how long a request may be held for its answer, bounded by a setting, and the
`Preference-Applied` header that tells the caller how long it was allowed to be held."""

from __future__ import annotations

import re
from collections.abc import Mapping

_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+)")


def prefer_wait(headers: Mapping[str, str], maximum: float) -> float | None:
    """The seconds `Prefer: wait=N` asks for, at most `maximum`; None when the request carries no such preference."""
    match = _WAIT.search(headers.get("prefer", ""))
    return min(float(match.group(1)), maximum) if match else None


def wait_applied(seconds: float) -> dict[str, str]:
    """The header that says the wait was honoured, and for how long at most."""
    return {"Preference-Applied": f"wait={int(seconds)}"}
