"""The soak's verdicts (bench/soak_trend.py): a flat series passes, a leak fails, and neither the warm-up, one
disturbed minute nor plain noise decides the verdict."""

from __future__ import annotations

import random

from bench.soak_trend import Metric, Tolerance, judge, theil_sen

RSS = Metric("worker.rss_mib", "worker RSS", "MiB", Tolerance(0.05, 8.0))  # 5 %/h or 8 MiB/h


def minutes(values: list[float]) -> list[tuple[float, float]]:
    return [(minute + 1.0, value) for minute, value in enumerate(values)]


def test_a_flat_noisy_series_passes_and_a_steady_leak_fails():
    rng = random.Random(7)
    flat = [150 + rng.uniform(-1.5, 1.5) for _ in range(60)]
    leaking = [150 + 0.5 * minute + rng.uniform(-1.5, 1.5) for minute in range(60)]  # 30 MiB/h

    kept, leak = judge(RSS, minutes(flat), warmup_minutes=5), judge(RSS, minutes(leaking), warmup_minutes=5)

    assert kept.passed and kept.tight and abs(kept.slope_per_hour) < kept.allowed_per_hour
    assert leak.passed is False and leak.interval_per_hour[0] > 0
    assert 25 < leak.slope_per_hour < 35 and leak.allowed_per_hour == 8.0


def test_the_warm_up_and_one_disturbed_minute_do_not_decide():
    ramp_then_flat = [100 + 10 * minute for minute in range(5)] + [150.0] * 20
    spiked = list(ramp_then_flat)
    spiked[-3] = 400.0  # a neighbour's burst in the second half

    verdict = judge(RSS, minutes(spiked), warmup_minutes=5)

    assert verdict.level == 150.0
    assert verdict.passed and verdict.slope_per_hour == 0.0
    assert verdict.least_squares_per_hour > verdict.allowed_per_hour  # least squares would have failed it


def test_noise_alone_is_not_a_leak_however_steep_its_median_slope():
    values = [100.0] * 6 + [100, 130, 95, 125, 110, 135]

    verdict = judge(RSS, minutes(values), warmup_minutes=0)

    assert verdict.slope_per_hour > verdict.allowed_per_hour and verdict.interval_per_hour[0] < 0
    assert verdict.passed and not verdict.tight


def test_too_few_samples_and_unjudged_metrics_give_no_verdict():
    short = judge(RSS, minutes([150.0] * 8), warmup_minutes=5)
    info = judge(Metric("azurite.rss_mib", "Azurite RSS", "MiB", None), minutes([100 + m for m in range(30)]), 5)

    assert short.passed is None and "run longer" in short.note
    assert info.passed is None and not info.judged and info.slope_per_hour == 60.0


def test_theil_sen_recovers_an_exact_line():
    assert theil_sen([1, 2, 3, 4, 5], [3, 5, 7, 9, 11]) == (2, 2, 2)
