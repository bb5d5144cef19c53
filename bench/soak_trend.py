"""The soak's verdicts (bench/soak.py): does a per-minute series stay flat?

For each judged metric: the samples of the warm-up are left out; the **level** is the median of the first three
samples after it; the **trend** is the Theil-Sen slope (the median of the slopes between every pair of points)
over the second half of the steady samples, with its 90 % confidence interval (Sen 1968, from Kendall's tau).
Theil-Sen rather than least squares because the machine is shared: one minute disturbed by a neighbour's burst
moves a least-squares line, not a median of slopes (the least-squares slope is reported beside it).

A metric **fails** when its growth projected over an hour exceeds the tolerance (the larger of a share of the
level and an absolute amount, both per hour) *and* the growth is real (the interval's lower bound is above 0):
on a short run noise alone projects to large hourly figures either way, and a metric is not failed for noise.
`interval_per_hour` says how much a run of that length can tell: a pass whose upper bound is above the tolerance
is "flat within the noise", not proof (`tight` is False); the 60-minute run narrows it.

    python -m bench.soak_trend bench/results/soak.json   # the verdicts of a saved run again (and its plot)
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

Z90 = 1.6449  # two-sided 90 %
MIN_POINTS = 4  # fewer in the second half: the metric is not judged


@dataclass(frozen=True)
class Tolerance:
    relative_per_hour: float  # growth allowed per hour as a share of the level
    absolute_per_hour: float  # ... or this much, in the metric's unit, whichever is larger

    def allowed(self, level: float) -> float:
        return max(self.relative_per_hour * abs(level), self.absolute_per_hour)


@dataclass(frozen=True)
class Metric:
    key: str  # a key of each sample (bench/soak.py: derived per minute)
    label: str
    unit: str
    tolerance: Tolerance | None  # None: shown and plotted, not judged
    why: str = ""  # why this tolerance (or why not judged)


@dataclass
class Verdict:
    key: str
    label: str
    unit: str
    judged: bool
    passed: bool | None
    level: float | None
    last: float | None
    slope_per_hour: float | None  # Theil-Sen over the second half, per hour
    interval_per_hour: tuple[float, float] | None  # 90 % interval of that slope
    least_squares_per_hour: float | None
    allowed_per_hour: float | None
    points: int
    tight: bool | None  # the interval's upper bound is within the tolerance: flatness shown, not only assumed
    note: str = ""

    def line(self) -> str:
        """One line of the stdout summary."""
        mark = {True: "PASS", False: "FAIL", None: "info" if not self.judged else "----"}[self.passed]
        if self.level is None or self.slope_per_hour is None:
            return f"{mark}  {self.label:<44} {self.note}"
        lo, hi = self.interval_per_hour
        text = (
            f"{mark}  {self.label:<44} level {_fmt(self.level)} {self.unit}, last {_fmt(self.last)}, "
            f"trend {_signed(self.slope_per_hour)}/h (90 % {_signed(lo)}..{_signed(hi)})"
        )
        if self.allowed_per_hour is not None:
            text += f", allowed +{_fmt(self.allowed_per_hour)}/h"
            if self.passed and not self.tight:
                text += " [flat within the noise]"
        return text + (f"  {self.note}" if self.note else "")


def theil_sen(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Median slope of all pairs and its two-sided 90 % interval (ties in x are skipped)."""
    slopes = sorted(
        (ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]
    )
    n, count = len(xs), len(slopes)
    if count == 0:
        return 0.0, 0.0, 0.0
    c = Z90 * math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    # ranks (N - C)/2 and (N + C)/2 + 1 of the ordered slopes, 1-based; rounded outwards
    low = max(0, math.floor((count - c) / 2) - 1)
    high = min(count - 1, math.ceil((count + c) / 2))
    return statistics.median(slopes), slopes[low], slopes[high]


def least_squares(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0


def judge(metric: Metric, series: Iterable[tuple[float, float | None]], warmup_minutes: float) -> Verdict:
    """`series`: (minute, value) per sample; None values (nothing to divide by that minute) are skipped."""
    steady = [(t, v) for t, v in series if t > warmup_minutes and v is not None and math.isfinite(v)]
    judged = metric.tolerance is not None
    verdict = Verdict(
        metric.key, metric.label, metric.unit, judged, None, None, None, None, None, None, None, len(steady), None
    )
    if len(steady) < 3:
        verdict.note = f"only {len(steady)} samples after the warm-up"
        return verdict
    verdict.level = statistics.median(v for _, v in steady[:3])
    verdict.last = steady[-1][1]
    half = steady[len(steady) // 2 :]
    if len(half) < MIN_POINTS:
        verdict.note = f"second half has {len(half)} samples (< {MIN_POINTS}): run longer"
        return verdict
    xs, ys = [t for t, _ in half], [v for _, v in half]
    slope, low, high = theil_sen(xs, ys)
    verdict.slope_per_hour, verdict.interval_per_hour = 60 * slope, (60 * low, 60 * high)
    verdict.least_squares_per_hour = 60 * least_squares(xs, ys)
    if judged:
        allowed = metric.tolerance.allowed(verdict.level)
        verdict.allowed_per_hour = allowed
        verdict.passed = not (verdict.slope_per_hour > allowed and verdict.interval_per_hour[0] > 0)
        verdict.tight = verdict.interval_per_hour[1] <= allowed
    return verdict


def judge_all(metrics: Iterable[Metric], samples: list[dict[str, Any]], warmup_minutes: float) -> list[Verdict]:
    return [judge(m, [(s["minute"], s.get(m.key)) for s in samples], warmup_minutes) for m in metrics]


def summary_lines(verdicts: list[Verdict]) -> list[str]:
    judged = [v for v in verdicts if v.judged and v.passed is not None]
    failed = [v for v in judged if not v.passed]
    lines = [v.line() for v in verdicts]
    lines.append(
        f"{len(judged) - len(failed)} flat, {len(failed)} growing"
        + (f" ({', '.join(v.label for v in failed)})" if failed else "")
        + (
            f", {sum(1 for v in verdicts if v.judged and v.passed is None)} not judged (too few samples)"
            if any(v.judged and v.passed is None for v in verdicts)
            else ""
        )
    )
    return lines


def as_dicts(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    return [asdict(v) for v in verdicts]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    return f"{value:,.0f}" if magnitude >= 100 else f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "-") + _fmt(abs(value))


def main() -> None:
    import json
    from pathlib import Path

    from .soak import METRICS, plot

    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/soak.json")
    data = json.loads(path.read_text())
    verdicts = judge_all(METRICS, data["samples"], data["config"]["warmup_minutes"])
    print("\n".join(summary_lines(verdicts)))
    plot(data["samples"], verdicts, data["config"]["warmup_minutes"], path.with_suffix(".png"))


if __name__ == "__main__":
    main()
