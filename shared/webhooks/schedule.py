"""Retry timing for webhook deliveries.

`schedule[i]` is the delay before attempt i+1 (the default "0,5,300,1800,7200,18000,36000,36000" is
Svix's: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h ≈ 27.6 h in total). Tests scale it
down simply by passing a small schedule.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

DEFAULT_JITTER = 0.1  # ±10 %


def parse_schedule(text: str) -> tuple[float, ...]:
    """ "0,5,300" -> (0.0, 5.0, 300.0); raises ValueError on an empty, negative or non-finite entry."""
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:  # a word among the numbers: name the schedule, as for the other bad entries
        delays = ()
    if not delays or any(not 0 <= d < float("inf") for d in delays):
        raise ValueError(f"bad retry schedule {text!r}")
    return delays


def next_delay(
    attempt_number: int,
    schedule: Sequence[float],
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
    jitter: float = DEFAULT_JITTER,
) -> float | None:
    """Seconds to wait before the next attempt, after `attempt_number` attempts were made.

    None when the schedule is exhausted (Retry-After never adds attempts). Non-zero delays get
    ±`jitter` so endpoints recovering from an outage are not hit by every retry at once; a zero
    delay stays zero. A receiver's Retry-After can only lengthen the wait — never shorten it — and is
    capped at the schedule's largest entry, so one header cannot stretch the delivery window past
    what the schedule allows (and a scaled-down test schedule stays fast).
    """
    if attempt_number < 0:
        raise ValueError("attempt_number must be >= 0")
    if attempt_number >= len(schedule):
        return None
    base = float(schedule[attempt_number])
    delay = base * (rng or random).uniform(1 - jitter, 1 + jitter) if base > 0 else 0.0
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(float(retry_after), max(schedule)))
    return max(delay, 0.0)
