"""Request and token budgets per model (deployment name), as OpenAI and Azure OpenAI enforce them.

Every model name has two budgets per window (``quota_window_s``, a minute by default): requests (``rpm_limit``)
and tokens (``tpm_limit``), or its own from ``model_limits``; 0 means unlimited. A request is admitted only if
both have room, and then costs 1 request and its token *estimate*, taken at admission as Azure OpenAI does:
the prompt's tokens (the ``usage.input_tokens`` the response will report, ceil(chars / 4)) plus the request's
output cap (``max_output_tokens`` / ``max_completion_tokens`` / ``max_tokens``, else
``quota_default_output_tokens``). The estimate is never corrected with real usage afterwards, so a large cap
costs budget even when it is not used.

Two window shapes (``quota_style``):
- ``openai``: a rolling window (a token bucket that refills continuously at limit / window, so a burst of the
  whole limit is admitted and then one request per window/limit). ``reset`` = time until the budget is full.
- ``azure``: tokens are counted in fixed windows (the count resets every window), requests in fixed periods of a
  sixth of the window (Azure evaluates RPM over 10-second periods: 60 RPM admits 10 per 10 s, so a burst is
  refused well before the minute's count is reached). ``reset`` = time until the current window/period ends.

Single-threaded (one event loop per emulator), so admission needs no locks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

STYLES = ("openai", "azure")
HEADER_MODES = ("openai", "azure_responses", "none")
REQUEST_PERIODS_PER_WINDOW = 6  # azure style: RPM evaluated over 10 s of a minute


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*`` (Go's format, ms resolution): ``250ms``, ``1s``,
    ``1.5s``, ``6m0s``, ``1h0m0s``."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass
class Budget:
    """One budget's state after an admission check: what the headers say and how long to wait."""

    limit: int
    cost: int
    used: float  # in the current window (rolling: what has not yet refilled)
    reset_s: float  # until the budget is back to its initial state (rolling) or the window ends (fixed)
    wait_s: float  # until this request would fit (0 = it fits now; inf = never)

    @property
    def fits(self) -> bool:
        return self.wait_s == 0.0

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.limit - self.used + 1e-9))


class _Rolling:
    """``used`` drains at limit / window per second (a token bucket counted from the other side)."""

    __slots__ = ("rate", "t", "used")

    def __init__(self) -> None:
        self.used, self.t, self.rate = 0.0, 0.0, 1.0

    def check(self, limit: int, cost: int, now: float, window_s: float, _periods: int) -> Budget:
        rate = limit / window_s
        used = max(0.0, self.used - (now - self.t) * rate)
        self.used, self.t, self.rate = used, now, rate
        excess = used + cost - limit
        # (a margin for float error: after sleeping exactly retry-after-ms the request must fit)
        wait = math.inf if cost > limit else excess / rate if excess > 1e-9 else 0.0
        return Budget(limit, cost, used, used / rate, wait)

    def take(self, budget: Budget) -> Budget:
        self.used = budget.used + budget.cost
        return replace(budget, used=self.used, reset_s=self.used / self.rate, wait_s=0.0)


class _Fixed:
    """A count that restarts every period (the window, or a sixth of it for requests in azure style)."""

    __slots__ = ("ends_in", "index", "used")

    def __init__(self) -> None:
        self.used, self.index, self.ends_in = 0.0, -1, 0.0

    def check(self, limit: int, cost: int, now: float, window_s: float, periods: int) -> Budget:
        period = window_s / periods
        allowance = max(1, round(limit / periods))
        index = math.floor(now / period)
        if index != self.index:
            self.used, self.index = 0.0, index
        ends_in = self.ends_in = (index + 1) * period - now
        if cost > allowance:
            wait = math.inf
        else:
            wait = ends_in if self.used + cost > allowance else 0.0
        return Budget(allowance, cost, self.used, ends_in if self.used else 0.0, wait)

    def take(self, budget: Budget) -> Budget:
        self.used = budget.used + budget.cost
        return replace(budget, used=self.used, reset_s=self.ends_in, wait_s=0.0)


@dataclass
class Verdict:
    """The outcome of one admission: ``refused`` is None (admitted), ``requests``, ``tokens`` or ``too_large``."""

    model: str
    refused: str | None
    requests: Budget | None
    tokens: Budget | None
    rpm: int = 0
    tpm: int = 0

    @property
    def retry_after_s(self) -> float | None:
        """Seconds until the request would be admitted; None when waiting cannot help (too large)."""
        if self.refused is None or self.refused == "too_large":
            return None
        return max(b.wait_s for b in (self.requests, self.tokens) if b is not None)


@dataclass
class Quotas:
    config: Any
    _windows: dict[tuple[str, str], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {"admitted": 0, "limited_requests": 0, "limited_tokens": 0, "too_large": 0, "tokens_admitted": 0}

    def reset(self) -> None:
        """Every window starts full again (``POST /_emulator/reset``)."""
        self._windows.clear()
        self.reset_stats()

    def limits(self, model: str) -> tuple[int, int]:
        cfg = self.config
        own = cfg.model_limits.get(model, {})
        return int(own.get("rpm", cfg.rpm_limit)), int(own.get("tpm", cfg.tpm_limit))

    @property
    def active(self) -> bool:
        cfg = self.config
        return bool(cfg.rpm_limit or cfg.tpm_limit or cfg.model_limits)

    def estimate(self, input_tokens: int, output_cap: Any) -> int:
        """Azure's admission estimate: prompt tokens plus the request's output cap (or the configured default)."""
        cap = (
            output_cap
            if isinstance(output_cap, int) and not isinstance(output_cap, bool) and output_cap > 0
            else self.config.quota_default_output_tokens
        )
        return int(input_tokens) + int(cap)

    def admit(self, model: str, tokens: int, now: float) -> Verdict:
        """Check both budgets; take from both only if both have room."""
        rpm, tpm = self.limits(model)
        req = self._check(model, "requests", rpm, 1, now)
        tok = self._check(model, "tokens", tpm, tokens, now)
        verdict = Verdict(model, None, req, tok, rpm, tpm)
        if tok is not None and tok.wait_s == math.inf:
            verdict.refused = "too_large"
            self.stats["too_large"] += 1
        elif req is not None and not req.fits:
            verdict.refused = "requests"
            self.stats["limited_requests"] += 1
        elif tok is not None and not tok.fits:
            verdict.refused = "tokens"
            self.stats["limited_tokens"] += 1
        else:
            if req is not None:
                verdict.requests = self._window(model, "requests").take(req)
            if tok is not None:
                verdict.tokens = self._window(model, "tokens").take(tok)
            self.stats["admitted"] += 1
            self.stats["tokens_admitted"] += tokens
        return verdict

    def _window(self, model: str, kind: str):
        key = (model, kind)
        win = self._windows.get(key)
        want = _Fixed if self.config.quota_style == "azure" else _Rolling
        if not isinstance(win, want):  # first use, or the style was changed at runtime
            win = self._windows[key] = want()
        return win

    def _check(self, model: str, kind: str, limit: int, cost: int, now: float) -> Budget | None:
        if limit <= 0:
            return None
        periods = REQUEST_PERIODS_PER_WINDOW if kind == "requests" and self.config.quota_style == "azure" else 1
        return self._window(model, kind).check(limit, cost, now, self.config.quota_window_s, periods)

    def describe(self, now: float) -> list[dict]:
        """Every model seen so far (or configured): its limits and what is left now, without taking anything."""
        models = {m for m, _ in self._windows} | set(self.config.model_limits)
        out = []
        for model in sorted(models):
            rpm, tpm = self.limits(model)
            req = self._check(model, "requests", rpm, 1, now)
            tok = self._check(model, "tokens", tpm, 0, now)
            out.append(
                {
                    "model": model,
                    "rpm": rpm,
                    "tpm": tpm,
                    "remaining_requests": req.remaining if req else None,
                    "reset_requests_s": round(req.reset_s, 3) if req else None,
                    "remaining_tokens": tok.remaining if tok else None,
                    "reset_tokens_s": round(tok.reset_s, 3) if tok else None,
                }
            )
        return out


# ------------------------------------------------------------------------------------------------
# Headers
# ------------------------------------------------------------------------------------------------

AZURE_RESPONSES_HEADERS = {
    # What Azure OpenAI's Responses API has been seen to send (MS Learn Q&A 5625878, Nov 2025); only the tokens
    # trio was reported, the requests trio is assumed to be alike.
    "x-ratelimit-limit-requests": "-1",
    "x-ratelimit-remaining-requests": "-1",
    "x-ratelimit-reset-requests": "0",
    "x-ratelimit-limit-tokens": "-1",
    "x-ratelimit-remaining-tokens": "-1",
    "x-ratelimit-reset-tokens": "0",
}


def ratelimit_headers(verdict: Verdict | None, mode: str) -> dict[str, str]:
    """``x-ratelimit-*`` for an answer, in OpenAI's format, Azure's broken Responses format, or none."""
    if mode == "none":
        return {}
    if mode == "azure_responses":
        return dict(AZURE_RESPONSES_HEADERS)
    out: dict[str, str] = {}
    if verdict is None:
        return out
    for kind, budget, per_minute in (
        ("requests", verdict.requests, verdict.rpm),
        ("tokens", verdict.tokens, verdict.tpm),
    ):
        if budget is None:
            continue
        out[f"x-ratelimit-limit-{kind}"] = str(per_minute)
        out[f"x-ratelimit-remaining-{kind}"] = str(budget.remaining)
        out[f"x-ratelimit-reset-{kind}"] = go_duration(budget.reset_s)
    return out


def retry_headers(seconds: float | None, mode: str) -> dict[str, str]:
    """``retry-after-ms`` and ``retry-after`` (whole seconds, rounded up) for a 429; Azure's Responses API sends
    neither, and waiting cannot fix a request that is too large."""
    if seconds is None or mode == "azure_responses":
        return {}
    ms = max(1, math.ceil(seconds * 1000))
    return {"retry-after-ms": str(ms), "retry-after": str(max(1, math.ceil(ms / 1000)))}


def refusal(verdict: Verdict, style: str, operation: str) -> tuple[str, str | None, str]:
    """(message, error type, error code) of a rate-limit 429, worded as OpenAI or Azure OpenAI words it. Azure's
    body carries ``code: "429"`` and no type (its error shape), OpenAI's ``rate_limit_exceeded`` and the budget."""
    kind = verdict.refused
    if kind == "too_large":
        message = (
            f"Request too large for {verdict.model} on tokens per min (TPM): Limit {verdict.tpm}, Requested "
            f"{verdict.tokens.cost}. The input or output tokens must be reduced in order to run successfully."
        )
        kind = "tokens"
    elif style == "azure":
        wait = math.ceil(verdict.retry_after_s or 0)
        message = (
            f"Requests to the {operation} Operation under Azure OpenAI API version v1 have exceeded "
            f"{'call' if kind == 'requests' else 'token'} rate limit of your current AIServices S0 pricing "
            f"tier. Please retry after {wait} second{'s' if wait != 1 else ''}."
        )
    else:
        budget = verdict.requests if kind == "requests" else verdict.tokens
        limit = verdict.rpm if kind == "requests" else verdict.tpm
        name = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        message = (
            f"Rate limit reached for {verdict.model} in organization org-emulator on {name}: Limit {limit}, "
            f"Used {math.ceil(budget.used)}, Requested {budget.cost}. Please try again in "
            f"{go_duration(budget.wait_s)}. Visit https://platform.openai.com/account/rate-limits to learn "
            f"more."
        )
    if style == "azure":
        return message + " (emulated)", None, "429"
    return message + " (emulated)", kind, "rate_limit_exceeded"
