from __future__ import annotations

import random

import pytest

from shared.webhooks import next_delay, parse_schedule

SCHEDULE = parse_schedule("0,5,300,1800,7200,18000,36000,36000")


def test_parse_schedule():
    assert SCHEDULE[:3] == (0.0, 5.0, 300.0) and len(SCHEDULE) == 8
    for bad in ["", "1,-2", "a,b"]:
        with pytest.raises(ValueError, match=f"^bad retry schedule '{bad}'$"):
            parse_schedule(bad)


def test_first_attempt_is_immediate_and_exhaustion_returns_none():
    assert next_delay(0, SCHEDULE) == 0.0
    assert next_delay(7, SCHEDULE) is not None
    assert next_delay(8, SCHEDULE) is None
    assert next_delay(8, SCHEDULE, retry_after=60) is None  # Retry-After never adds attempts
    with pytest.raises(ValueError, match="attempt_number must be >= 0"):
        next_delay(-1, SCHEDULE)


def test_jitter_stays_within_ten_percent_and_varies():
    rng = random.Random(42)
    delays = [next_delay(2, SCHEDULE, rng=rng) for _ in range(500)]
    assert all(270 <= d <= 330 for d in delays)
    assert min(delays) < 285 and max(delays) > 315  # really jittered, both directions
    assert len(set(delays)) > 400


def test_jitter_extremes_are_bounded_and_never_negative():
    class Edge:
        def __init__(self, pick):
            self.pick = pick

        def uniform(self, a, b):
            return a if self.pick == "low" else b

    assert next_delay(1, SCHEDULE, rng=Edge("low")) == pytest.approx(4.5)
    assert next_delay(1, SCHEDULE, rng=Edge("high")) == pytest.approx(5.5)
    assert next_delay(1, (5.0,) * 3, rng=Edge("low"), jitter=1.5) == 0.0


def test_retry_after_lengthens_but_never_shortens_and_is_capped():
    rng = random.Random(1)
    assert next_delay(1, SCHEDULE, retry_after=120, rng=rng) == 120  # 5 s slot, receiver asks 120 s
    assert 270 <= next_delay(2, SCHEDULE, retry_after=1, rng=rng) <= 330  # asks less: schedule wins
    assert next_delay(1, SCHEDULE, retry_after=10**9, rng=rng) == 36000  # capped at the largest entry
    small = (0.0, 0.01, 0.02)
    assert next_delay(1, small, retry_after=3600, rng=rng) == 0.02  # scaled-down schedule stays fast
    assert 4.5 <= next_delay(1, SCHEDULE, retry_after=-3, rng=rng) <= 5.5
