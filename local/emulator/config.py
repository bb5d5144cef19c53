"""Global emulator settings: one dataclass, readable from env vars, CLI flags and the runtime config API.

Every field ``foo_bar`` can be set with the env var ``EMULATOR_FOO_BAR`` or the CLI flag ``--foo-bar``,
and changed at runtime with ``POST /v1/_emulator/config {"foo_bar": ...}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .quotas import HEADER_MODES, STYLES


@dataclass
class EmulatorConfig:
    # --- time -------------------------------------------------------------------------------------
    time_scale: float = 1.0
    """Multiplier for every emulated duration (duration/queue). 0.01 makes a "60 s" run take 0.6 s.
    Captured per response at creation, so changing it later does not move existing timelines."""
    default_duration_ms: float = 2000.0
    """Created -> terminal, when the request has no ``emulator_duration_ms`` (before time scale)."""
    default_queue_ms: float = 100.0
    """Time spent ``queued`` when the request has no ``emulator_queue_ms`` (before time scale)."""
    default_output_chars: int = 200
    """Output text length when the request has no ``emulator_output_chars``."""
    max_deltas: int = 200
    """Default cap on the number of ``output_text.delta`` events (default count = min(chars/8, this))."""

    # --- protocol rules -----------------------------------------------------------------------------
    resume_window_s: float = 300.0
    """GET ?stream=true is refused (400) when the response is older than this (unscaled wall time)."""
    require_stream_for_resume: bool = False
    """True = like the real API's Limits #3: only responses created with stream=true can be re-streamed."""
    reject_background_store_false: bool = False
    """True = background=true + store=false is a 400 (older guide text)."""
    enforce_metadata_limits: bool = True
    """400 on more than 16 metadata pairs, keys > 64 chars or values > 512 chars (like the real API)."""
    background_mode: bool = True
    """False = a Responses API without background mode (like servers that only stream): ``background: true``
    is refused with a 400 ``unsupported_parameter``; plain and ``stream: true`` requests still work."""
    chat_metadata_requires_store: bool = True
    """Chat Completions: ``metadata`` without ``store: true`` is a 400, as on OpenAI ("The 'metadata' parameter
    is only allowed when 'store' is enabled."). False = accept it (vLLM/Ollama style)."""
    api_keys: str = ""
    """Comma list of accepted API keys (``Authorization: Bearer <key>`` or ``api-key: <key>``); a missing or
    other key is a 401 like the real API's. Empty = any key is accepted."""

    # --- retention -----------------------------------------------------------------------------------
    ttl_s: float = 3600.0
    """Finished responses (store=true) are forgotten this long after they became terminal (then 404)."""
    ttl_store_false_s: float = 600.0
    """Same for store=false responses (the real API keeps them ~10 minutes)."""
    max_responses: int = 200_000
    """Hard cap on records kept; the oldest finished (then oldest at all) are evicted first."""

    # --- global fault injection (fractions 0..1 of API requests) ------------------------------------
    fault_429_rate: float = 0.0
    fault_500_rate: float = 0.0
    fault_503_rate: float = 0.0
    stream_cut_rate: float = 0.0
    """Fraction of SSE connections that are cut abruptly after a random number of events."""
    slow_first_byte_rate: float = 0.0
    slow_first_byte_ms: float = 2000.0
    """Delay (unscaled) added before the first byte for the slow fraction."""
    retry_after_ms: float = 200.0
    """``retry-after-ms`` sent with injected 429s/503s (``retry-after`` carries the same, in seconds)."""
    seed: int = 0
    """Seed of the fault RNG (faults are a deterministic function of the seed and request order)."""
    fault_endpoints: str = "create,retrieve,stream,cancel,delete,input_items,chat"
    """Comma list of endpoints global faults apply to."""

    # --- quotas, as the real services enforce them (wall-clock; see quotas.py) -----------------------------
    rpm_limit: int = 0
    """Requests per window (``quota_window_s``) for each model name; 0 = unlimited. Creates and chat calls count
    (and retrieve/cancel/delete/input_items with ``quota_counts_gets``)."""
    tpm_limit: int = 0
    """Tokens per window for each model name, counted at admission: prompt tokens + the request's output cap
    (``max_output_tokens``/``max_completion_tokens``/``max_tokens``, else ``quota_default_output_tokens``); 0 =
    unlimited."""
    model_limits: dict = field(default_factory=dict)
    """Per model name: ``{"gpt-4.1": {"rpm": 60, "tpm": 100000}}``; a key left out falls back to rpm/tpm_limit."""
    quota_window_s: float = 60.0
    """Length of the quota "minute" (shorter makes the same limits faster for tests)."""
    quota_style: str = "openai"
    """``openai``: rolling window (the budget refills continuously); ``azure``: fixed windows, requests counted per
    sixth of the window (Azure evaluates RPM over 10 s) and 429 bodies worded as Azure's (``code: "429"``)."""
    quota_default_output_tokens: int = 1024
    """Output tokens a request without a cap is estimated at, for the token budget."""
    quota_counts_gets: bool = False
    """True = retrieve, cancel, delete and input_items cost a request (no tokens) of the response's model."""
    ratelimit_headers: str = "openai"
    """``openai``: ``x-ratelimit-limit|remaining|reset-requests|tokens`` on create/chat answers while a limit is set,
    ``retry-after-ms``/``retry-after`` on 429s; ``azure_responses``: on Responses routes the ``-1``/``0`` values
    Azure OpenAI's Responses API was seen to send, and no ``retry-after`` (Chat Completions keep OpenAI's);
    ``none``: no ``x-ratelimit-*`` at all (429s keep ``retry-after``)."""
    insufficient_quota: bool = False
    """True = creates and chat calls get 429 ``insufficient_quota`` (a billing state: no retry-after, waiting never
    helps); retrieve/cancel/delete still work."""

    # --- provider webhooks (wall-clock ms, multiplied by webhook_time_scale; not the response time scale) ---
    webhook_delay_ms: float = 0.0
    """Response end -> first delivery attempt (per response: metadata ``emulator_webhook_delay_ms``)."""
    webhook_drop_rate: float = 0.0
    """Fraction of deliveries never sent at all (a lost provider webhook; per response ``emulator_webhook_drop``)."""
    webhook_duplicate_rate: float = 0.0
    """Fraction of deliveries sent twice with the same webhook-id (per response ``emulator_webhook_duplicate``)."""
    webhook_retry_schedule_ms: str = "5000,30000,120000,600000,1800000"
    """Waits before each retry after a failed attempt (non-2xx, timeout, connection error); its length bounds
    the retries (default: 6 attempts over ~43 minutes, within the 1 h record TTL)."""
    webhook_time_scale: float = 1.0
    """Multiplier for webhook_delay_ms and the retry schedule (0.01 makes the whole schedule 100x faster)."""
    webhook_timeout_ms: float = 10000.0
    """Per-attempt timeout (Azure advises receivers to answer within 10 s)."""
    webhook_concurrency: int = 64
    """Deliveries in flight at once (start-up only)."""
    webhook_url: str = ""
    """Start-up only: register (or reuse) an endpoint with this url, e.g. the local function app's receiver."""
    webhook_secret: str = ""
    """Start-up only: the signing secret (whsec_...) for webhook_url; empty = generated (see
    GET /v1/_emulator/webhook_endpoints)."""
    webhook_event_types: str = "response.completed,response.failed,response.cancelled,response.incomplete"
    """Start-up only: event types of the webhook_url endpoint."""

    # --- persistence -----------------------------------------------------------------------------------
    db: str = ""
    """SQLite file; empty = memory only. A restarted emulator continues every in-flight response."""

    # fields that cannot be changed at runtime through the config API
    _STARTUP_ONLY: ClassVar[tuple[str, ...]] = (
        "db",
        "webhook_concurrency",
        "webhook_url",
        "webhook_secret",
        "webhook_event_types",
    )
    # fields with a fixed set of values
    _CHOICES: ClassVar[dict[str, Any]] = {"quota_style": STYLES, "ratelimit_headers": HEADER_MODES}
    # numeric fields with a lower bound (value >= bound, or > bound for the strictly positive ones)
    _AT_LEAST: ClassVar[dict[str, float]] = {"rpm_limit": 0, "tpm_limit": 0, "quota_default_output_tokens": 0}
    _ABOVE: ClassVar[dict[str, float]] = {"quota_window_s": 0}

    def update(self, values: Mapping[str, Any]) -> None:
        known = {f.name: f for f in fields(self)}
        for key in values:
            if key not in known:
                raise ValueError(f"unknown emulator setting '{key}'")
            if key in self._STARTUP_ONLY:
                raise ValueError(f"setting '{key}' can only be set at start-up")
        staged = {key: _coerce(known[key], raw, key) for key, raw in values.items()}
        for key, value in staged.items():  # all or nothing: a bad value changes no setting
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> EmulatorConfig:
        environ = os.environ if environ is None else environ
        cfg = cls()
        for f in fields(cls):
            env_name = "EMULATOR_" + f.name.upper()
            if env_name in environ:
                setattr(cfg, f.name, _coerce(f, environ[env_name], env_name))
        for key, value in overrides.items():
            if value is not None:
                if key not in {f.name for f in fields(cls)}:
                    raise ValueError(f"unknown emulator setting '{key}'")
                setattr(cfg, key, _coerce(next(f for f in fields(cls) if f.name == key), value, key))
        return cfg

    def fault_endpoint_set(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.fault_endpoints.split(",") if p.strip())


def _coerce(f: dataclasses.Field, raw: Any, name: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "dict":
        return _model_limits(raw, name)
    choices = EmulatorConfig._CHOICES.get(f.name)
    if choices is not None and str(raw) not in choices:
        raise ValueError(f"bad value for {name}: {raw!r} (expected one of {', '.join(choices)})")
    try:
        value = _parse(kind, raw)
    except (TypeError, ValueError):
        raise ValueError(f"bad value for {name}: {raw!r} (expected {kind})") from None
    low = EmulatorConfig._AT_LEAST.get(f.name)
    if low is not None and value < low:
        raise ValueError(f"bad value for {name}: {raw!r} (expected a number >= {low})")
    low = EmulatorConfig._ABOVE.get(f.name)
    if low is not None and value <= low:
        raise ValueError(f"bad value for {name}: {raw!r} (expected a number > {low})")
    return value


def _parse(kind: str, raw: Any) -> Any:
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(raw)
    if kind == "int":
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(raw)
        return int(raw)
    if kind == "float":
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
        return value
    return str(raw)


def _model_limits(raw: Any, name: str) -> dict[str, dict[str, int]]:
    """``{"model": {"rpm": n, "tpm": n}}`` from a dict or its JSON text; counts are integers >= 0."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise ValueError(f"bad value for {name}: expected a JSON object, got {raw!r}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"bad value for {name}: expected an object {{model: {{rpm, tpm}}}}, got {raw!r}")
    out: dict[str, dict[str, int]] = {}
    for model, limits in raw.items():
        if (
            not isinstance(limits, dict)
            or not set(limits) <= {"rpm", "tpm"}
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in limits.values())
        ):
            raise ValueError(
                f'bad value for {name}[{model!r}]: expected {{"rpm": n, "tpm": n}} with integers >= 0, got {limits!r}'
            )
        out[str(model)] = dict(limits)
    return out


def config_fields() -> list[dataclasses.Field]:
    return list(fields(EmulatorConfig))


__all__ = ["EmulatorConfig", "config_fields", "field"]
