"""Every setting the service knows, each declared once: name, meaning, default, kind (type and bounds), secret-ness,
where it matters in Azure, and the group that reads it.

`Settings.from_env` reads the values through these declarations, the README's configuration table is generated
from them, and the Bicep parity test (tests/infra/test_parity.py) checks infra/ against them, so a setting added
here must be provided by infra/ (or be optional).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from .deployments import parse_entries
from .names import STORAGE_CONNECTION
from .quotas import MAX_ACTIVE_LIMIT, caller_quotas
from .secrets import ApiKey, api_keys, token_keys, webhook_secrets
from .spec import Choice, Group, Number, Setting, Url, flag, retry_schedule

DEFAULT_EMULATOR_URL = "http://127.0.0.1:7070/v1"
DEFAULT_WEBHOOK_SCHEDULE = "0,5,300,1800,7200,18000,36000,36000"
FACADE_MAX_WAIT_LIMIT = 225.0  # Azure's front end cuts an HTTP request at about 230 s
PROVIDERS = ("emulator", "openai", "azure_openai", "openai_compatible")
STRATEGIES = ("poll", "push", "watch")
BACKENDS = ("background", "executor")
EXECUTOR_APIS = ("chat_completions", "responses")
HTTPS = Url(("https://",))


def _grouped(*rows: Group | Setting) -> tuple[Setting, ...]:
    """The settings in `rows`, each in the group named last before it."""
    settings: list[Setting] = []
    group: Group | None = None
    for row in rows:
        if isinstance(row, Setting):
            settings.append(replace(row, group=group))
        else:
            group = row
    return tuple(settings)


SETTINGS: tuple[Setting, ...] = _grouped(
    "storage",
    Setting(
        STORAGE_CONNECTION,
        "Storage connection string (Azurite: UseDevelopmentStorage=true). "
        "In Azure use the identity-based __*ServiceUri settings instead.",
        in_azure="local",
    ),
    Setting(
        f"{STORAGE_CONNECTION}__blobServiceUri",
        "Blob endpoint for identity-based storage.",
        kind=HTTPS,
        in_azure="required",
    ),
    Setting(
        f"{STORAGE_CONNECTION}__queueServiceUri",
        "Queue endpoint for identity-based storage.",
        kind=HTTPS,
        in_azure="required",
    ),
    Setting(
        f"{STORAGE_CONNECTION}__tableServiceUri",
        "Table endpoint for identity-based storage.",
        kind=HTTPS,
        in_azure="required",
    ),
    Setting(f"{STORAGE_CONNECTION}__credential", "`managedidentity` in Azure.", in_azure="required"),
    Setting(f"{STORAGE_CONNECTION}__clientId", "Client id of the user-assigned identity.", in_azure="required"),
    "provider",
    Setting("AZURE_CLIENT_ID", "Client id of the user-assigned identity (azure-identity).", in_azure="required"),
    Setting(
        "MODEL_PROVIDER",
        "`emulator`, `openai`, `azure_openai` or `openai_compatible`; inferred when empty "
        "(AZURE_OPENAI_ENDPOINT -> azure_openai, OPENAI_COMPATIBLE_BASE_URL -> openai_compatible, "
        "OPENAI_API_KEY -> openai, else emulator).",
        kind=Choice(PROVIDERS),
        in_azure="required",
    ),
    Setting("OPENAI_API_KEY", "OpenAI API key (provider openai).", secret=True),
    Setting("OPENAI_BASE_URL", "OpenAI base URL override (provider openai).", kind=Url()),
    Setting(
        "AZURE_OPENAI_ENDPOINT",
        "Azure OpenAI resource endpoint, e.g. https://NAME.openai.azure.com (the v1 API path /openai/v1/ is appended).",
        kind=HTTPS,
    ),
    Setting("AZURE_OPENAI_API_KEY", "Azure OpenAI key; when empty, Microsoft Entra ID is used.", secret=True),
    Setting(
        "EMULATOR_BASE_URL",
        "Base URL of the local Responses API emulator.",
        DEFAULT_EMULATOR_URL,
        Url(),
        in_azure="local",
    ),
    Setting(
        "DEFAULT_MODEL",
        "Model (Azure: deployment name) when a request names none.",
        "gpt-4.1-mini",
        in_azure="required",
    ),
    Setting("PROVIDER_TIMEOUT_SECONDS", "Timeout of one provider HTTP call.", "30", Number(minimum=1)),
    Setting(
        "PROVIDER_DEPLOYMENTS",
        "A pool of model deployments (JSON array; docs/configuration.md, section Several deployments): each "
        "`name`, `endpoint`, optional `provider`, `deployment`, `api_key_setting` (the name of the setting holding "
        "its key; absent: Entra ID for Azure), `priority` (lower first), `weight`, `requests_per_minute`, "
        "`tokens_per_minute`. Background runs and the executor's model calls alike (an `openai_compatible` entry "
        "serves the executor only). Empty: one deployment, `default`, from the settings above.",
        kind=parse_entries,
    ),
    "runs",
    Setting(
        "RUN_TOKEN_KEY",
        "HMAC keys for continuation tokens (32+ characters of randomness each), "
        "space-separated: the first signs, every one verifies, so a rotation keeps the previous key until "
        "its tokens are gone. Key Vault in Azure.",
        kind=token_keys,
        secret=True,
        in_azure="required",
    ),
    Setting("POLL_INITIAL_DELAY_SECONDS", "First poll delay after a start.", "1", Number(minimum=0.05)),
    Setting(
        "POLL_MAX_DELAY_SECONDS",
        "Cap of the exponential poll backoff (bounds completion lag).",
        "10",
        Number(minimum=0.1),
    ),
    Setting("POLL_BACKOFF_MULTIPLIER", "Growth of the poll delay per poll.", "1.5", Number(minimum=1.0)),
    Setting(
        "RUN_DEADLINE_SECONDS",
        "A run still going after this is cancelled and ends `expired`.",
        "7200",
        Number(minimum=1),
    ),
    Setting(
        "ADMISSION_MAX_WAIT_SECONDS",
        "How long a run the provider has no capacity for (429/503 at its start) "
        "may wait queued; then it ends `failed` with `capacity_wait_exceeded`. 0: such a start is refused with "
        "503 instead of queued.",
        "3600",
        Number(minimum=0),
    ),
    "host",  # bound as %SWEEP_SCHEDULE% in function_app.py: the host needs it as an app setting, default or not
    Setting(
        "SWEEP_SCHEDULE",
        "NCRONTAB schedule of the sweeper that repairs lost poll chains.",
        "0 */1 * * * *",
        in_azure="required",
    ),
    "runs",
    Setting(
        "SWEEP_GRACE_SECONDS",
        "How overdue a poll or delivery must be before the sweeper repairs it.",
        "60",
        Number(minimum=0.1),
    ),
    Setting("MAX_PREFER_WAIT_SECONDS", "Upper bound for `Prefer: wait=N` on POST /api/runs.", "10", Number(minimum=0)),
    Setting(
        "MAX_READ_WAIT_SECONDS",
        "Upper bound for `Prefer: wait=N` on reads of a run (GET /api/runs/{id}, "
        "the continuation-token poll, GET /v1/responses/{id}): the read is held until the run's status changes "
        "(long polling; below Azure's 230 s HTTP limit).",
        "60",
        Number(minimum=0, maximum=FACADE_MAX_WAIT_LIMIT),
    ),
    Setting(
        "MAX_REQUEST_BYTES", "Largest accepted request body.", str(1024 * 1024), Number(minimum=1024, integer=True)
    ),
    # -- per-caller quotas (shared/runs/quotas.py): 0 is unlimited, so they cost nothing until an operator sets them
    Setting(
        "CALLER_MAX_ACTIVE_RUNS",
        "Active runs one caller may have at a time (each facade caller; the native "
        "API's function-key callers together count as one); a start beyond it gets 429 `rate_limit_exceeded`. "
        "0: unlimited.",
        "0",
        Number(minimum=0, maximum=MAX_ACTIVE_LIMIT, integer=True),
    ),
    Setting(
        "CALLER_STARTS_PER_MINUTE",
        "Starts one caller may make per minute (a bucket of a minute's starts, "
        "refilled continuously); a start beyond it gets 429 `rate_limit_exceeded`. 0: unlimited.",
        "0",
        Number(minimum=0, maximum=1_000_000, integer=True),
    ),
    Setting(
        "CALLER_QUOTAS",
        "Per-caller overrides of the two above: space-separated `name:active:per_minute[:weight]` "
        "entries (0: unlimited), the facade caller's name or `@native` for the function-key callers, e.g. "
        "`batch:50:600 @native:20:0:2`. The weight (1-1000, default 1) is the caller's share of a model's "
        "starts when the provider pacing is the bottleneck: queued starts go in a fair order across callers.",
        kind=caller_quotas,
    ),
    # -- provider pacing (shared/runs/pacing.py): off unless a budget or PACING_ADAPTIVE is set ---------------------
    Setting(
        "PACING_REQUESTS_PER_MINUTE",
        "Creates per minute the service makes to each model (deployment), shared "
        "by every instance through Table storage; a start beyond it is queued (`admission.reason` `paced`, as "
        "a provider 429 queues it) until its turn, without calling the provider. Set it a little below the "
        "deployment's RPM. Needs ADMISSION_MAX_WAIT_SECONDS > 0. 0: no request budget.",
        "0",
        Number(minimum=0, maximum=1_000_000, integer=True),
    ),
    Setting(
        "PACING_TOKENS_PER_MINUTE",
        "Tokens per minute of creates to each model, counted as the provider "
        "estimates them at admission (prompt characters / 4 plus `max_output_tokens`, else 1024). 0: no "
        "token budget.",
        "0",
        Number(minimum=0, maximum=1_000_000_000, integer=True),
    ),
    Setting(
        "PACING_ADAPTIVE",
        "Learn each model's request rate from the provider: halve it on a rate-limit 429, "
        "grow it by 5 % a minute while starts go through, up to PACING_REQUESTS_PER_MINUTE when set. Until the "
        "first 429 nothing is paced.",
        "false",
        flag,
    ),
    Setting(
        "PACING_BURST",
        "How much of a minute's budget the pacing may spend at once, as a fraction (its bucket "
        "starts full and refills at the budget's rate): 0 spaces creates evenly; 1 matches a rolling one-minute "
        "window (OpenAI); keep 0 for Azure OpenAI, which counts RPM per 10 s (a burst there meets 429s).",
        "0",
        Number(minimum=0, maximum=1),
    ),
    "webhooks",
    Setting(
        "WEBHOOK_SIGNING_SECRETS",
        "Space-separated `whsec_` secrets; each signs every delivery "
        "(rotation). Key Vault in Azure. Empty: webhooks are off and a run with `webhook_url` gets a 400.",
        kind=webhook_secrets,
        secret=True,
        in_azure="required",
    ),
    Setting("WEBHOOK_ALLOW_HTTP", "Allow http:// webhook URLs (local development only).", "false", flag),
    Setting(
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES",
        "Allow loopback/private webhook targets (local development only).",
        "false",
        flag,
    ),
    Setting(
        "WEBHOOK_RETRY_SCHEDULE",
        "Comma-separated delays (s) before each delivery attempt.",
        DEFAULT_WEBHOOK_SCHEDULE,
        retry_schedule,
    ),
    Setting("WEBHOOK_TIMEOUT_SECONDS", "Timeout of one delivery attempt.", "15", Number(minimum=0.1)),
    "runs",
    Setting(
        "RETENTION_DAYS",
        "Ended runs (with their blobs), idle sessions and old Idempotency-Keys are "
        "deleted this many days after they end or were last used.",
        "30",
        Number(minimum=1),
    ),
    # -- completion detection: how the service learns that a provider response ended --------------------------
    "completion",
    Setting(
        "COMPLETION_STRATEGY",
        "`poll` (ask the provider with backoff), `push` (the provider's webhooks, "
        "with polling as a slow safety net) or `watch` (hold the provider's stream); empty: push when "
        "PROVIDER_WEBHOOK_SECRETS is set, else poll.",
        "",
        Choice(STRATEGIES),
    ),
    Setting(
        "PROVIDER_WEBHOOK_SECRETS",
        "Space-separated `whsec_` signing secrets of the provider's webhook "
        "endpoint (several during a rotation). Key Vault in Azure.",
        kind=webhook_secrets,
        secret=True,
    ),
    Setting(
        "SAFETY_POLL_INITIAL_SECONDS",
        "With push: the first safety-net poll after a start (a run shorter than this costs the provider one retrieve).",
        "30",
        Number(minimum=0.05),
    ),
    Setting(
        "SAFETY_POLL_MAX_SECONDS",
        "With push: cap of the safety-net poll backoff (bounds the lag of a lost provider webhook).",
        "120",
        Number(minimum=0.1),
    ),
    Setting(
        "WATCH_WINDOW_SECONDS",
        "With watch: how long one poll step holds the provider's stream (below functionTimeout).",
        "240",
        Number(minimum=0.1),
    ),
    "runs",
    Setting(
        "STREAM_MAX_SECONDS",
        "A stream ends with a `reconnect` event after this (below Azure's 230 s).",
        "200",
        Number(minimum=1),
    ),
    Setting("STREAM_KEEPALIVE_SECONDS", "Idle time before an SSE keep-alive comment.", "15", Number(minimum=0.1)),
    # -- runs the function app executes itself, for models without a background mode ------------------------
    "provider",
    Setting(
        "OPENAI_COMPATIBLE_BASE_URL",
        "Base URL of an OpenAI-compatible server without background mode "
        "(vLLM, Ollama, LiteLLM, Azure AI Foundry models), e.g. https://host/v1 (provider "
        "openai_compatible).",
        kind=Url(),
    ),
    Setting(
        "OPENAI_COMPATIBLE_API_KEY",
        "Its API key; when empty, Microsoft Entra ID is used (scope OPENAI_COMPATIBLE_ENTRA_SCOPE).",
        secret=True,
    ),
    Setting(
        "OPENAI_COMPATIBLE_ENTRA_SCOPE",
        "Token scope for Entra ID with provider openai_compatible.",
        "https://cognitiveservices.azure.com/.default",
    ),
    "executor",
    Setting(
        "RUN_BACKEND",
        "`background` (the provider's background mode) or `executor` (the function app makes "
        "the streaming model call itself and keeps the events); empty: executor for openai_compatible (or a "
        "PROVIDER_DEPLOYMENTS entry of it), else background.",
        kind=Choice(BACKENDS),
    ),
    Setting(
        "EXECUTOR_API",
        "What the executor calls: `chat_completions`, or `responses` (a Responses API "
        "without background mode, streamed).",
        "chat_completions",
        Choice(EXECUTOR_APIS),
    ),
    Setting(
        "EXECUTOR_MAX_ATTEMPTS",
        "Model calls an executor run may start (a host crash or a cut stream starts the next); then the run fails.",
        "3",
        Number(minimum=1, integer=True),
    ),
    Setting(
        "EXECUTOR_STALE_SECONDS",
        "An executor attempt silent this long is presumed dead (its host "
        "stopped); the poll chain dispatches the run again.",
        "30",
        Number(minimum=1),
    ),
    Setting(
        "EXECUTOR_IDLE_TIMEOUT_SECONDS",
        "Longest silence of a model stream before it counts as cut "
        "(reasoning models may think minutes before their first token).",
        "300",
        Number(minimum=1),
    ),
    # -- telemetry (shared/telemetry): read by its setup at start-up; with none of these set, telemetry is off ----
    "telemetry",
    Setting(
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "Application Insights: traces, metrics and the `bgruns.*` "
        "log lines go there through the Azure Monitor OpenTelemetry distro.",
        in_azure="required",
    ),
    Setting(
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
        "`ClientId=<identity>;Authorization=AAD`: the exporter "
        "signs in to Application Insights with that managed identity (local auth is off).",
        in_azure="required",
    ),
    "host",  # the Python worker reads it
    Setting(
        "PYTHON_ENABLE_OPENTELEMETRY",
        "`true`: the Python worker streams OpenTelemetry itself (no "
        "duplicate host log entries); the app configures the exporters. Read by the worker, not by the app. "
        "Not PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY, with which the worker configures the distro "
        'itself, every automatic instrumentation on (infra/README.md, "Telemetry").',
        in_azure="required",
    ),
    "telemetry",
    Setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTLP/HTTP endpoint for traces and metrics (also the standard "
        "`OTEL_EXPORTER_OTLP_*` settings: per-signal endpoints, timeout, compression).",
    ),
    Setting("OTEL_EXPORTER_OTLP_HEADERS", "Headers for the OTLP endpoint, e.g. an API key.", secret=True),
    Setting(
        "OTEL_SERVICE_NAME",
        "`service.name` of the telemetry (Application Insights: the cloud role name).",
        "background-runs",
    ),
    Setting(
        "OTEL_TRACES_SAMPLER",
        "Trace sampler (whole runs: a run's steps follow its start's decision); the "
        "distro's default keeps up to 5 traces per second.",
    ),
    Setting(
        "TELEMETRY_FILE",
        "Local development: write spans and metrics as OTLP/JSON lines to this file (read "
        "them with `python -m local.traces FILE`), or `console`.",
        in_azure="local",
    ),
    "facade",
    Setting(
        "RESPONSES_API_KEYS",
        "Callers of the Responses API facade: space-separated `name:key` entries, "
        "`name:key:operator` for an operator (sees every run). Keys are 32+ characters of "
        "`[A-Za-z0-9_-]`; two entries with one name are one caller with two keys (rotation). Key Vault in "
        "Azure. Empty: the facade answers 401.",
        kind=api_keys,
        secret=True,
        in_azure="required",
    ),
    Setting(
        "RESPONSES_MAX_WAIT_SECONDS",
        "How long a facade create without `background` waits for the result "
        "before answering the in-progress Response (below Azure's 230 s HTTP limit).",
        "200",
        Number(minimum=0, maximum=FACADE_MAX_WAIT_LIMIT),
    ),
)

BY_NAME = {s.name: s for s in SETTINGS}


def declared_settings() -> tuple[Setting, ...]:
    return SETTINGS


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """RESPONSES_API_KEYS read from `raw`; the error names the setting and never repeats a key."""
    keys: tuple[ApiKey, ...] = BY_NAME["RESPONSES_API_KEYS"].parse(raw)
    return keys


def markdown_table() -> str:
    """The configuration table of the README (a test keeps the two equal)."""
    where = {"required": "set by infra", "optional": "optional", "local": "local only"}
    rows = ["| setting | default | in Azure | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default is not None else ""
        place = where[s.in_azure] + (
            " (secret, Key Vault)" if s.secret and s.in_azure == "required" else " (secret)" if s.secret else ""
        )
        rows.append(f"| `{s.name}` | {default} | {place} | {s.description} |")
    return "\n".join(rows)


Read = Callable[[str], Any]


def reader(env: Mapping[str, str], *groups: Group) -> Read:
    """Reads the settings of `groups` from `env` by name, each as its declaration says (typed, checked, defaulted).

    Reading a setting of another group is a bug in the reader's caller: the declared group says who reads it.
    """

    def read(name: str) -> Any:
        setting = BY_NAME[name]
        if setting.group not in groups:
            raise LookupError(f"{name} belongs to {setting.group}, not to {', '.join(groups)}")
        return setting.parse(env.get(name))

    return read
