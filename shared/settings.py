"""Every setting the service reads, validated once at start-up.

One table (`SETTINGS`) declares each setting: its name, default, whether it is a secret, and where it
matters. `Settings.from_env()` reads and validates them and names the bad one in its error. The Bicep
parity test reads the same table, so a setting added here must be provided by infra/ (or be optional).
"""
from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .webhooks.schedule import parse_schedule

# Fixed resource names; infra/ creates the same ones.
POLL_QUEUE = "runs-poll"
WEBHOOK_QUEUE = "runs-webhook"
RUNS_TABLE = "runs"
SESSIONS_TABLE = "sessions"
IDEMPOTENCY_TABLE = "idempotency"
INDEX_TABLE = "runindex"
PAYLOAD_CONTAINER = "run-payloads"
EXECUTE_QUEUE = "runs-execute"  # runs the function app executes itself (RUN_BACKEND=executor)
EVENTS_TABLE = "runevents"  # their event logs
STORAGE_CONNECTION = "AzureWebJobsStorage"

DEFAULT_EMULATOR_URL = "http://127.0.0.1:7070/v1"
# host.json sits next to function_app.py, one folder above this package (/home/site/wwwroot in Azure).
HOST_JSON = Path(__file__).resolve().parents[1] / "host.json"
# functionTimeout when host.json does not set one: the Flex Consumption default (30 min), the only plan infra/ uses.
FLEX_DEFAULT_FUNCTION_TIMEOUT_SECONDS = 1800.0
DEFAULT_WEBHOOK_SCHEDULE = "0,5,300,1800,7200,18000,36000,36000"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Setting:
    name: str
    description: str
    default: str | None = None
    secret: bool = False
    # "required": Azure must provide it; "optional": has a safe default or is only for some providers;
    # "local": used by the local stack / development only.
    in_azure: str = "optional"


# The Responses-API-compatible facade (/api/v1/responses, /api/openai/v1/responses).
FACADE_SETTINGS: tuple[Setting, ...] = (
    Setting("RESPONSES_API_KEYS", "Callers of the Responses API facade: space-separated `name:key` entries, "
            "`name:key:operator` for an operator (sees every run). Keys are 32+ characters of "
            "`[A-Za-z0-9_-]`; two entries with one name are one caller with two keys (rotation). Key Vault in "
            "Azure. Empty: the facade answers 401.", secret=True, in_azure="required"),
    Setting("RESPONSES_MAX_WAIT_SECONDS", "How long a facade create without `background` waits for the result "
            "before answering the in-progress Response (below Azure's 230 s HTTP limit).", "200"),
)

SETTINGS: tuple[Setting, ...] = (
    Setting(STORAGE_CONNECTION, "Storage connection string (Azurite: UseDevelopmentStorage=true). "
            "In Azure use the identity-based __*ServiceUri settings instead.", in_azure="local"),
    Setting(f"{STORAGE_CONNECTION}__blobServiceUri", "Blob endpoint for identity-based storage.", in_azure="required"),
    Setting(f"{STORAGE_CONNECTION}__queueServiceUri", "Queue endpoint for identity-based storage.", in_azure="required"),
    Setting(f"{STORAGE_CONNECTION}__tableServiceUri", "Table endpoint for identity-based storage.", in_azure="required"),
    Setting(f"{STORAGE_CONNECTION}__credential", "`managedidentity` in Azure.", in_azure="required"),
    Setting(f"{STORAGE_CONNECTION}__clientId", "Client id of the user-assigned identity.", in_azure="required"),
    Setting("AZURE_CLIENT_ID", "Client id of the user-assigned identity (azure-identity).", in_azure="required"),
    Setting("MODEL_PROVIDER", "`emulator`, `openai`, `azure_openai` or `openai_compatible`; inferred when empty "
            "(AZURE_OPENAI_ENDPOINT -> azure_openai, OPENAI_COMPATIBLE_BASE_URL -> openai_compatible, "
            "OPENAI_API_KEY -> openai, else emulator).", in_azure="required"),
    Setting("OPENAI_API_KEY", "OpenAI API key (provider openai).", secret=True),
    Setting("OPENAI_BASE_URL", "OpenAI base URL override (provider openai)."),
    Setting("AZURE_OPENAI_ENDPOINT", "Azure OpenAI resource endpoint, e.g. https://NAME.openai.azure.com "
            "(the v1 API path /openai/v1/ is appended)."),
    Setting("AZURE_OPENAI_API_KEY", "Azure OpenAI key; when empty, Microsoft Entra ID is used.", secret=True),
    Setting("EMULATOR_BASE_URL", "Base URL of the local Responses API emulator.", DEFAULT_EMULATOR_URL, in_azure="local"),
    Setting("DEFAULT_MODEL", "Model (Azure: deployment name) when a request names none.", "gpt-4.1-mini", in_azure="required"),
    Setting("PROVIDER_TIMEOUT_SECONDS", "Timeout of one provider HTTP call.", "30"),
    Setting("RUN_TOKEN_KEY", "HMAC keys for continuation tokens (32+ characters of randomness each), space-separated: "
            "the first signs, every one verifies, so a rotation keeps the previous key until its tokens are gone. "
            "Key Vault in Azure.",
            secret=True, in_azure="required"),
    Setting("POLL_INITIAL_DELAY_SECONDS", "First poll delay after a start.", "1"),
    Setting("POLL_MAX_DELAY_SECONDS", "Cap of the exponential poll backoff (bounds completion lag).", "10"),
    Setting("POLL_BACKOFF_MULTIPLIER", "Growth of the poll delay per poll.", "1.5"),
    Setting("RUN_DEADLINE_SECONDS", "A run still going after this is cancelled and ends `expired`.", "7200"),
    # Bound as %SWEEP_SCHEDULE% in function_app.py: the host needs it as an app setting, default or not.
    Setting("SWEEP_SCHEDULE", "NCRONTAB schedule of the sweeper that repairs lost poll chains.", "0 */1 * * * *",
            in_azure="required"),
    Setting("SWEEP_GRACE_SECONDS", "How overdue a poll or delivery must be before the sweeper repairs it.", "60"),
    Setting("MAX_PREFER_WAIT_SECONDS", "Upper bound for `Prefer: wait=N` on POST /api/runs.", "10"),
    Setting("MAX_REQUEST_BYTES", "Largest accepted request body.", str(1024 * 1024)),
    Setting("WEBHOOK_SIGNING_SECRETS", "Space-separated `whsec_` secrets; each signs every delivery "
            "(rotation). Key Vault in Azure. Empty: webhooks are off and a run with `webhook_url` gets a 400.",
            secret=True, in_azure="required"),
    Setting("WEBHOOK_ALLOW_HTTP", "Allow http:// webhook URLs (local development only).", "false"),
    Setting("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "Allow loopback/private webhook targets (local development only).", "false"),
    Setting("WEBHOOK_RETRY_SCHEDULE", "Comma-separated delays (s) before each delivery attempt.", DEFAULT_WEBHOOK_SCHEDULE),
    Setting("WEBHOOK_TIMEOUT_SECONDS", "Timeout of one delivery attempt.", "15"),
    Setting("RETENTION_DAYS", "Ended runs (with their blobs), idle sessions and old Idempotency-Keys are deleted "
            "this many days after they end or were last used.", "30"),
    # -- completion detection: how the service learns that a provider response ended --------------------------
    Setting("COMPLETION_STRATEGY", "`poll` (ask the provider with backoff), `push` (the provider's webhooks, with "
            "polling as a slow safety net) or `watch` (hold the provider's stream); empty: push when "
            "PROVIDER_WEBHOOK_SECRETS is set, else poll.", ""),
    Setting("PROVIDER_WEBHOOK_SECRETS", "Space-separated `whsec_` signing secrets of the provider's webhook endpoint "
            "(several during a rotation). Key Vault in Azure.", secret=True),
    Setting("SAFETY_POLL_INITIAL_SECONDS", "With push: the first safety-net poll after a start (a run shorter "
            "than this costs the provider one retrieve).", "30"),
    Setting("SAFETY_POLL_MAX_SECONDS", "With push: cap of the safety-net poll backoff (bounds the lag of a lost "
            "provider webhook).", "120"),
    Setting("WATCH_WINDOW_SECONDS", "With watch: how long one poll step holds the provider's stream (below "
            "functionTimeout).", "240"),
    Setting("STREAM_MAX_SECONDS", "A stream ends with a `reconnect` event after this (below Azure's 230 s).", "200"),
    Setting("STREAM_KEEPALIVE_SECONDS", "Idle time before an SSE keep-alive comment.", "15"),
    # -- runs the function app executes itself, for models without a background mode ------------------------
    Setting("OPENAI_COMPATIBLE_BASE_URL", "Base URL of an OpenAI-compatible server without background mode "
            "(vLLM, Ollama, LiteLLM, Azure AI Foundry models), e.g. https://host/v1 (provider openai_compatible)."),
    Setting("OPENAI_COMPATIBLE_API_KEY", "Its API key; when empty, Microsoft Entra ID is used "
            "(scope OPENAI_COMPATIBLE_ENTRA_SCOPE).", secret=True),
    Setting("OPENAI_COMPATIBLE_ENTRA_SCOPE", "Token scope for Entra ID with provider openai_compatible.",
            "https://cognitiveservices.azure.com/.default"),
    Setting("RUN_BACKEND", "`background` (the provider's background mode) or `executor` (the function app makes "
            "the streaming model call itself and keeps the events); empty: executor for openai_compatible, "
            "else background."),
    Setting("EXECUTOR_API", "What the executor calls: `chat_completions`, or `responses` (a Responses API "
            "without background mode, streamed).", "chat_completions"),
    Setting("EXECUTOR_MAX_ATTEMPTS", "Model calls an executor run may start (a host crash or a cut stream "
            "starts the next); then the run fails.", "3"),
    Setting("EXECUTOR_STALE_SECONDS", "An executor attempt silent this long is presumed dead (its host stopped); "
            "the poll chain dispatches the run again.", "30"),
    Setting("EXECUTOR_IDLE_TIMEOUT_SECONDS", "Longest silence of a model stream before it counts as cut "
            "(reasoning models may think minutes before their first token).", "300"),
    # -- telemetry (shared/telemetry): read by its setup at start-up; with none of these set, telemetry is off ----
    Setting("APPLICATIONINSIGHTS_CONNECTION_STRING", "Application Insights: traces, metrics and the `bgruns.*` "
            "log lines go there through the Azure Monitor OpenTelemetry distro.", in_azure="required"),
    Setting("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "`ClientId=<identity>;Authorization=AAD`: the exporter "
            "signs in to Application Insights with that managed identity (local auth is off).", in_azure="required"),
    Setting("PYTHON_ENABLE_OPENTELEMETRY", "`true`: the Python worker streams OpenTelemetry itself (no duplicate "
            "host log entries); the app configures the exporters. Read by the worker, not by the app. Not "
            "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY, with which the worker configures the distro itself, every "
            "automatic instrumentation on (infra/README.md, \"Telemetry\").", in_azure="required"),
    Setting("OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP/HTTP endpoint for traces and metrics (also the standard "
            "`OTEL_EXPORTER_OTLP_*` settings: per-signal endpoints, timeout, compression)."),
    Setting("OTEL_EXPORTER_OTLP_HEADERS", "Headers for the OTLP endpoint, e.g. an API key.", secret=True),
    Setting("OTEL_SERVICE_NAME", "`service.name` of the telemetry (Application Insights: the cloud role name).",
            "background-runs"),
    Setting("OTEL_TRACES_SAMPLER", "Trace sampler (whole runs: a run's steps follow its start's decision); the "
            "distro's default keeps up to 5 traces per second."),
    Setting("TELEMETRY_FILE", "Local development: write spans and metrics as OTLP/JSON lines to this file (read "
            "them with `python -m local.traces FILE`), or `console`.", in_azure="local"),
    *FACADE_SETTINGS,
)

_BY_NAME = {s.name: s for s in SETTINGS}


def declared_settings() -> tuple[Setting, ...]:
    return SETTINGS


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        default = _BY_NAME[name].default
        return default
    return value.strip()


def _number(env: Mapping[str, str], name: str, *, minimum: float = 0.0, integer: bool = False) -> float:
    raw = _raw(env, name)
    try:
        value = int(raw) if integer else float(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (_raw(env, name) or "").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


@dataclass(frozen=True)
class StorageSettings:
    connection_string: str | None = field(repr=False)  # may hold an account key
    blob_uri: str | None
    queue_uri: str | None
    table_uri: str | None
    client_id: str | None

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None


@dataclass(frozen=True)
class ProviderSettings:
    kind: str  # emulator | openai | azure_openai
    base_url: str | None
    api_key: str | None = field(repr=False)
    azure_endpoint: str | None
    client_id: str | None
    default_model: str
    timeout_seconds: float
    entra_scope: str | None = None  # openai_compatible with Entra ID

    @property
    def has_background_mode(self) -> bool:
        return self.kind != "openai_compatible"


BACKENDS = ("background", "executor")
EXECUTOR_APIS = ("chat_completions", "responses")


@dataclass(frozen=True)
class ExecutorSettings:
    backend: str  # what new runs use: background | executor
    api: str  # chat_completions | responses
    max_attempts: int
    stale_seconds: float
    idle_timeout_seconds: float
    function_timeout_seconds: float | None  # host.json functionTimeout; None: unbounded


STRATEGIES = ("poll", "push", "watch")


@dataclass(frozen=True)
class CompletionSettings:
    strategy: str  # poll | push | watch
    provider_webhook_secrets: tuple[str, ...] = field(repr=False)
    safety_poll_initial: float
    safety_poll_max: float
    watch_window: float


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings
    provider: ProviderSettings
    token_keys: tuple[bytes, ...] = field(repr=False)  # the first signs; all verify
    poll_initial_delay: float
    poll_max_delay: float
    poll_multiplier: float
    run_deadline: float
    sweep_grace: float
    max_prefer_wait: float
    max_request_bytes: int
    webhook_secrets: tuple[str, ...] = field(repr=False)
    webhook_allow_http: bool
    webhook_allow_private: bool
    webhook_schedule: tuple[float, ...]
    webhook_timeout: float
    retention_seconds: float
    stream_max_seconds: float
    stream_keepalive_seconds: float
    completion: CompletionSettings
    executor: ExecutorSettings
    facade: "FacadeSettings" = field(default_factory=lambda: FacadeSettings((), 200.0))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        refuse_unresolved_key_vault_references(env)
        stream_max_seconds = _number(env, "STREAM_MAX_SECONDS", minimum=1)
        check_stream_below_function_timeout(stream_max_seconds)
        provider = _provider(env)
        return cls(
            storage=_storage(env),
            provider=provider,
            token_keys=_token_keys(env),
            poll_initial_delay=_number(env, "POLL_INITIAL_DELAY_SECONDS", minimum=0.05),
            poll_max_delay=_number(env, "POLL_MAX_DELAY_SECONDS", minimum=0.1),
            poll_multiplier=_number(env, "POLL_BACKOFF_MULTIPLIER", minimum=1.0),
            run_deadline=_number(env, "RUN_DEADLINE_SECONDS", minimum=1),
            sweep_grace=_number(env, "SWEEP_GRACE_SECONDS", minimum=0.1),
            max_prefer_wait=_number(env, "MAX_PREFER_WAIT_SECONDS", minimum=0),
            max_request_bytes=int(_number(env, "MAX_REQUEST_BYTES", minimum=1024, integer=True)),
            webhook_secrets=_webhook_secrets(env),
            webhook_allow_http=_flag(env, "WEBHOOK_ALLOW_HTTP"),
            webhook_allow_private=_flag(env, "WEBHOOK_ALLOW_PRIVATE_ADDRESSES"),
            webhook_schedule=_schedule(env),
            webhook_timeout=_number(env, "WEBHOOK_TIMEOUT_SECONDS", minimum=0.1),
            retention_seconds=_number(env, "RETENTION_DAYS", minimum=1) * 86400,
            stream_max_seconds=stream_max_seconds,
            stream_keepalive_seconds=_number(env, "STREAM_KEEPALIVE_SECONDS", minimum=0.1),
            completion=_completion(env),
            facade=_facade(env),
            executor=_executor(env, provider),
        )


_KEY_VAULT_REFERENCE = re.compile(r"^\s*@Microsoft\.KeyVault\(", re.IGNORECASE)


def refuse_unresolved_key_vault_references(env: Mapping[str, str]) -> None:
    """A Key Vault reference the platform could not resolve reaches the app as its literal text.

    Taken as a value it would pass some checks (a 60-character RUN_TOKEN_KEY looks long enough), so any declared
    setting that still reads `@Microsoft.KeyVault(...)` is refused, by name; the value itself is not repeated.
    """
    for setting in SETTINGS:
        if _KEY_VAULT_REFERENCE.match(env.get(setting.name) or ""):
            raise SettingsError(
                f"{setting.name}: is an unresolved Key Vault reference (@Microsoft.KeyVault(...)); the platform "
                "could not read the secret. Check the app identity's Key Vault Secrets User role, "
                "keyVaultReferenceIdentity and the secret URI, then restart the app."
            )


_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d+):(?P<m>\d+):(?P<s>\d+(?:\.\d+)?)$")


def function_timeout_seconds(host_json: Path = HOST_JSON) -> float | None:
    """host.json `functionTimeout` in seconds; None when it is -1 (unbounded).

    Absent (or no host.json): the platform default of the plan, Flex Consumption's 30 minutes.
    """
    try:
        raw = json.loads(host_json.read_text(encoding="utf-8-sig")).get("functionTimeout")
    except FileNotFoundError:
        raw = None
    except ValueError as error:
        raise SettingsError(f"host.json: invalid JSON ({error})") from None
    if raw is None:
        return FLEX_DEFAULT_FUNCTION_TIMEOUT_SECONDS
    if str(raw).strip() == "-1":
        return None
    match = _TIMESPAN.match(str(raw).strip())
    if not match:
        raise SettingsError(f"host.json: functionTimeout {raw!r} is not a TimeSpan (hh:mm:ss) or -1")
    return (int(match["d"] or 0) * 86400 + int(match["h"]) * 3600 + int(match["m"]) * 60
            + float(match["s"]))


def _completion(env: Mapping[str, str]) -> CompletionSettings:
    secrets = _whsec_list(env, "PROVIDER_WEBHOOK_SECRETS")
    strategy = (_raw(env, "COMPLETION_STRATEGY") or ("push" if secrets else "poll")).lower()
    if strategy not in STRATEGIES:
        raise SettingsError(f"COMPLETION_STRATEGY: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "push" and not secrets:
        raise SettingsError("PROVIDER_WEBHOOK_SECRETS: required when COMPLETION_STRATEGY is push (the signing "
                            "secret of the provider's webhook endpoint)")
    window = _number(env, "WATCH_WINDOW_SECONDS", minimum=0.1)
    timeout = function_timeout_seconds()
    if strategy == "watch" and timeout is not None and window >= timeout - 30:
        raise SettingsError(f"WATCH_WINDOW_SECONDS: {window:g} must end at least 30 s before host.json "
                            f"functionTimeout ({timeout:g} s)")
    initial = _number(env, "SAFETY_POLL_INITIAL_SECONDS", minimum=0.05)
    return CompletionSettings(strategy, secrets, initial,
                              max(initial, _number(env, "SAFETY_POLL_MAX_SECONDS", minimum=0.1)), window)


def check_stream_below_function_timeout(stream_max_seconds: float, host_json: Path = HOST_JSON) -> None:
    """A stream must end (with its `reconnect` event) before the platform cuts the invocation.

    A streamed HTTP invocation lasts until its stream ends, so `functionTimeout` bounds it. With
    functionTimeout -1 there is no such bound and nothing to check (Azure's 230 s HTTP limit still applies).
    """
    timeout = function_timeout_seconds(host_json)
    if timeout is not None and stream_max_seconds >= timeout:
        raise SettingsError(
            f"STREAM_MAX_SECONDS: {stream_max_seconds:g} must be below host.json functionTimeout ({timeout:g} s), "
            "or the platform cuts streams before their reconnect event"
        )


def _storage(env: Mapping[str, str]) -> StorageSettings:
    prefix = STORAGE_CONNECTION
    conn = (env.get(prefix) or "").strip() or None
    uris = {kind: (env.get(f"{prefix}__{kind}ServiceUri") or "").strip() or None for kind in ("blob", "queue", "table")}
    client_id = (env.get(f"{prefix}__clientId") or "").strip() or None
    if (env.get(f"{prefix}__credential") or "").strip().lower() == "managedidentity":
        conn = None  # identity wins: a platform-injected connection string would fail with shared keys off
    if conn is None:
        missing = [f"{prefix}__{kind}ServiceUri" for kind, uri in uris.items() if uri is None]
        if missing:
            raise SettingsError(
                f"{prefix}: set a connection string, or all of {', '.join(missing)} for identity-based storage"
            )
        for kind, uri in uris.items():
            if not uri.startswith("https://"):
                raise SettingsError(f"{prefix}__{kind}ServiceUri: must be an https:// URL")
    return StorageSettings(conn, uris["blob"], uris["queue"], uris["table"], client_id)


def _provider(env: Mapping[str, str]) -> ProviderSettings:
    kind = (_raw(env, "MODEL_PROVIDER") or "").lower()
    if not kind:
        if _raw(env, "AZURE_OPENAI_ENDPOINT"):
            kind = "azure_openai"
        elif _raw(env, "OPENAI_COMPATIBLE_BASE_URL"):
            kind = "openai_compatible"
        elif _raw(env, "OPENAI_API_KEY"):
            kind = "openai"
        else:
            kind = "emulator"
    common = dict(
        client_id=_raw(env, "AZURE_CLIENT_ID"),
        default_model=_raw(env, "DEFAULT_MODEL"),
        timeout_seconds=_number(env, "PROVIDER_TIMEOUT_SECONDS", minimum=1),
    )
    if kind == "emulator":
        url = _raw(env, "EMULATOR_BASE_URL")
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"EMULATOR_BASE_URL: expected an http(s) URL, got {url!r}")
        return ProviderSettings("emulator", url.rstrip("/"), "emulator", None, **common)
    if kind == "openai":
        key = _raw(env, "OPENAI_API_KEY")
        if not key:
            raise SettingsError("OPENAI_API_KEY: required when MODEL_PROVIDER is openai")
        return ProviderSettings("openai", _raw(env, "OPENAI_BASE_URL"), key, None, **common)
    if kind == "azure_openai":
        endpoint = _raw(env, "AZURE_OPENAI_ENDPOINT")
        if not endpoint or not endpoint.startswith("https://"):
            raise SettingsError("AZURE_OPENAI_ENDPOINT: an https:// endpoint is required for azure_openai")
        base = endpoint.rstrip("/")
        if not base.endswith("/openai/v1"):
            base += "/openai/v1"
        return ProviderSettings("azure_openai", base + "/", _raw(env, "AZURE_OPENAI_API_KEY"), endpoint, **common)
    if kind == "openai_compatible":
        url = _raw(env, "OPENAI_COMPATIBLE_BASE_URL")
        if not url or not url.startswith(("http://", "https://")):
            raise SettingsError("OPENAI_COMPATIBLE_BASE_URL: an http(s) URL is required for openai_compatible")
        return ProviderSettings("openai_compatible", url.rstrip("/"), _raw(env, "OPENAI_COMPATIBLE_API_KEY"), None,
                                **common, entra_scope=_raw(env, "OPENAI_COMPATIBLE_ENTRA_SCOPE"))
    raise SettingsError(f"MODEL_PROVIDER: expected emulator, openai, azure_openai or openai_compatible, got {kind!r}")


def _executor(env: Mapping[str, str], provider: ProviderSettings) -> ExecutorSettings:
    backend = (_raw(env, "RUN_BACKEND") or "").lower() or ("background" if provider.has_background_mode else "executor")
    if backend not in BACKENDS:
        raise SettingsError(f"RUN_BACKEND: expected background or executor, got {backend!r}")
    if backend == "background" and not provider.has_background_mode:
        raise SettingsError(f"RUN_BACKEND: background needs a provider with a background mode; {provider.kind} has "
                            "none (use executor)")
    api = (_raw(env, "EXECUTOR_API") or "").lower()
    if api not in EXECUTOR_APIS:
        raise SettingsError(f"EXECUTOR_API: expected chat_completions or responses, got {api!r}")
    return ExecutorSettings(
        backend=backend, api=api,
        max_attempts=int(_number(env, "EXECUTOR_MAX_ATTEMPTS", minimum=1, integer=True)),
        stale_seconds=_number(env, "EXECUTOR_STALE_SECONDS", minimum=1),
        idle_timeout_seconds=_number(env, "EXECUTOR_IDLE_TIMEOUT_SECONDS", minimum=1),
        function_timeout_seconds=function_timeout_seconds(),
    )


def _token_keys(env: Mapping[str, str]) -> tuple[bytes, ...]:
    keys = (_raw(env, "RUN_TOKEN_KEY") or "").split()
    if not keys:
        raise SettingsError("RUN_TOKEN_KEY: required (32+ random bytes, e.g. `openssl rand -base64 32`)")
    for number, key in enumerate(keys, 1):
        if len(key) < 32:
            which = f" (key {number} of {len(keys)})" if len(keys) > 1 else ""
            raise SettingsError(f"RUN_TOKEN_KEY: too short{which}; use at least 32 characters of randomness")
    return tuple(key.encode() for key in keys)


def _webhook_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    return _whsec_list(env, "WEBHOOK_SIGNING_SECRETS")


def _whsec_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Space- or comma-separated Standard Webhooks secrets (`whsec_` + base64 of 24-64 bytes)."""
    raw = _raw(env, name) or ""
    secrets = tuple(s for s in raw.replace(",", " ").split() if s)
    for index, secret in enumerate(secrets):
        if not secret.startswith("whsec_"):
            raise SettingsError(f"{name}: entry {index + 1} does not start with whsec_")
        try:
            decoded = base64.b64decode(secret[6:] + "=" * (-len(secret[6:]) % 4), validate=True)
        except ValueError:
            raise SettingsError(f"{name}: entry {index + 1} is not base64 after whsec_") from None
        if not 24 <= len(decoded) <= 64:
            raise SettingsError(f"{name}: entry {index + 1} must decode to 24-64 bytes")
    return secrets


# -- The Responses API facade ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiKey:
    """One key of one facade caller. Runs are owned by the caller's name, so a caller keeps its runs when its key
    is rotated (two entries with the same name)."""

    caller: str
    key: str = field(repr=False)
    operator: bool = False


@dataclass(frozen=True)
class FacadeSettings:
    api_keys: tuple[ApiKey, ...] = field(repr=False)
    max_wait_seconds: float


FACADE_MAX_WAIT_LIMIT = 225.0  # Azure's front end cuts an HTTP request at about 230 s
CALLER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_API_KEY = re.compile(r"^[A-Za-z0-9_-]{32,256}$")


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """`name:key[:operator]` entries separated by spaces (or commas); the error never repeats a key."""
    keys: list[ApiKey] = []
    for index, entry in enumerate(raw.replace(",", " ").split(), start=1):
        parts = entry.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "operator"):
            raise SettingsError(f"RESPONSES_API_KEYS: entry {index} is not name:key or name:key:operator")
        name, key = parts[0], parts[1]
        if not CALLER_NAME.match(name):
            raise SettingsError(f"RESPONSES_API_KEYS: entry {index}: the caller name must be 1-64 characters of "
                                "[A-Za-z0-9_.-]")
        if not _API_KEY.match(key):
            raise SettingsError(f"RESPONSES_API_KEYS: entry {index} ({name}): the key must be 32-256 characters of "
                                "[A-Za-z0-9_-]")
        if any(existing.key == key for existing in keys):
            raise SettingsError(f"RESPONSES_API_KEYS: entry {index} ({name}) repeats the key of another entry")
        keys.append(ApiKey(name, key, len(parts) == 3))
    for name in {k.caller for k in keys}:
        if len({k.operator for k in keys if k.caller == name}) > 1:
            raise SettingsError(f"RESPONSES_API_KEYS: caller {name} is an operator in one entry and not in another")
    return tuple(keys)


def _facade(env: Mapping[str, str]) -> FacadeSettings:
    wait = _number(env, "RESPONSES_MAX_WAIT_SECONDS", minimum=0)
    if wait > FACADE_MAX_WAIT_LIMIT:
        raise SettingsError(f"RESPONSES_MAX_WAIT_SECONDS: at most {FACADE_MAX_WAIT_LIMIT:g} (Azure cuts HTTP "
                            f"requests at about 230 s), got {wait:g}")
    return FacadeSettings(parse_api_keys(_raw(env, "RESPONSES_API_KEYS") or ""), wait)


def _schedule(env: Mapping[str, str]) -> tuple[float, ...]:
    raw = _raw(env, "WEBHOOK_RETRY_SCHEDULE")
    try:
        return parse_schedule(raw)
    except ValueError:
        raise SettingsError(f"WEBHOOK_RETRY_SCHEDULE: expected comma-separated seconds, none negative, "
                            f"got {raw!r}") from None


def markdown_table() -> str:
    """The configuration table of the README (a test keeps the two equal)."""
    where = {"required": "set by infra", "optional": "optional", "local": "local only"}
    rows = ["| setting | default | in Azure | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default is not None else ""
        place = where[s.in_azure] + (" (secret, Key Vault)" if s.secret and s.in_azure == "required"
                                     else " (secret)" if s.secret else "")
        rows.append(f"| `{s.name}` | {default} | {place} | {s.description} |")
    return "\n".join(rows)
