"""The per-caller quotas' settings (shared/runs/quotas.py applies them): a cap on a caller's active runs and a rate
of its starts, a default for every caller and overrides by caller name.

CALLER_QUOTAS lists the overrides as `name:active:per_minute[:weight]` entries; `@native` (not a possible facade
caller name) names the native API's callers, all function keys together. 0 means unlimited. The weight (default 1)
is the caller's share in the fair order of the starts the provider pacing spaces (shared/runs/fairness.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .secrets import CALLER_NAME

NATIVE_CALLER = "@native"  # the native API's callers (function keys), one caller for the quotas
MAX_ACTIVE_LIMIT = 1000  # the slots of one caller are read with one query, and a query page holds 1,000 rows
MAX_WEIGHT = 1000


@dataclass(frozen=True)
class Quota:
    max_active: int = 0  # active runs at a time; 0: unlimited
    per_minute: int = 0  # starts per minute (a bucket of a minute's starts, refilled continuously); 0: unlimited
    weight: int = 1  # its share when the pacing orders starts across callers (not a limit)

    @property
    def unlimited(self) -> bool:
        return not (self.max_active or self.per_minute)


@dataclass(frozen=True)
class QuotaSettings:
    default: Quota = Quota()
    overrides: dict[str, Quota] = field(default_factory=dict)

    def of(self, caller: str) -> Quota:
        return self.overrides.get(caller, self.default)

    @property
    def caps_active(self) -> bool:
        """Some caller's active runs are capped (so slots are kept, and the sweeper reclaims lost ones)."""
        return bool(self.default.max_active or any(q.max_active for q in self.overrides.values()))


@dataclass(frozen=True)
class PacingSettings:
    """The provider pacing's budgets per model (shared/runs/pacing.py); 0: none. Off unless one is set."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    adaptive: bool = False  # learn a request rate from 429s (AIMD) and the provider's headers
    burst: float = 0.0  # the bucket's depth, as a fraction of a minute's budget (0: evenly spaced, no burst)

    @property
    def enabled(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.adaptive)


def _count(entry: int, what: str, raw: str, maximum: int) -> int:
    if not raw.isdigit() or int(raw) > maximum:
        raise ValueError(f"entry {entry}: {what} must be a whole number from 0 (unlimited) to {maximum}, got {raw!r}")
    return int(raw)


def caller_quotas(raw: str) -> dict[str, Quota]:
    """`name:active:per_minute[:weight]` entries separated by spaces (or commas); a name once."""
    overrides: dict[str, Quota] = {}
    for index, entry in enumerate(raw.replace(",", " ").split(), start=1):
        parts = entry.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"entry {index} ({entry!r}) is not name:active:per_minute[:weight]")
        name, active, rate, weight = [*parts, "1"][:4]
        if name != NATIVE_CALLER and not CALLER_NAME.match(name):
            raise ValueError(f"entry {index}: {name!r} is neither a caller name ([A-Za-z0-9_.-]) nor {NATIVE_CALLER}")
        if name in overrides:
            raise ValueError(f"entry {index}: caller {name} is named twice")
        if _count(index, "weight", weight, MAX_WEIGHT) < 1:
            raise ValueError(f"entry {index}: weight must be a whole number from 1 to {MAX_WEIGHT}, got {weight!r}")
        overrides[name] = Quota(
            _count(index, "active", active, MAX_ACTIVE_LIMIT),
            _count(index, "per_minute", rate, 1_000_000),
            int(weight),
        )
    return overrides
