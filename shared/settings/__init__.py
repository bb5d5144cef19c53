"""Every setting the service reads, declared once and validated once at start-up.

- `table.py`: the declarations, one `Setting` each (name, meaning, default, kind with its bounds, secret-ness, where
  it matters in Azure, the group that reads it); the README's configuration table is generated from it and the
  Bicep parity test checks infra/ against it.
- `spec.py`: what a declaration is, and the kinds of value (number, flag, choice, URL) with their checks.
- `secrets.py`: the secret formats (token keys, `whsec_` secrets, the facade's API keys).
- `model.py`: `Settings.from_env()`, the typed groups, and the rules that join settings; `provider.py`: which
  model provider, inferred when unset; `host.py`: what host.json's functionTimeout bounds (read once).
- `deployments.py`: PROVIDER_DEPLOYMENTS' entries (the pool of model deployments); `provider.py` gives each its
  provider's settings (one deployment, `default`, when unset).
- `quotas.py`: the per-caller quotas' values (CALLER_QUOTAS' format) and the provider pacing's budgets.
- `names.py`: the fixed queue, table and container names infra/ creates.
"""

from .deployments import DEFAULT_DEPLOYMENT
from .host import FLEX_DEFAULT_FUNCTION_TIMEOUT_SECONDS, HOST_JSON, function_timeout_seconds
from .model import (
    CompletionSettings,
    ExecutorSettings,
    FacadeSettings,
    Settings,
    StorageSettings,
    refuse_unresolved_key_vault_references,
)
from .names import (
    EVENTS_TABLE,
    EXECUTE_QUEUE,
    IDEMPOTENCY_TABLE,
    INDEX_TABLE,
    PAYLOAD_CONTAINER,
    POLL_QUEUE,
    RUNS_TABLE,
    SESSIONS_TABLE,
    STORAGE_CONNECTION,
    WEBHOOK_QUEUE,
)
from .provider import DeploymentSettings, ProviderSettings
from .quotas import NATIVE_CALLER, PacingSettings, Quota, QuotaSettings
from .secrets import CALLER_NAME, ApiKey
from .spec import Setting, SettingsError
from .table import (
    BACKENDS,
    DEFAULT_EMULATOR_URL,
    DEFAULT_WEBHOOK_SCHEDULE,
    EXECUTOR_APIS,
    FACADE_MAX_WAIT_LIMIT,
    PROVIDERS,
    SETTINGS,
    STRATEGIES,
    declared_settings,
    markdown_table,
    parse_api_keys,
)

__all__ = [
    "BACKENDS",
    "CALLER_NAME",
    "DEFAULT_DEPLOYMENT",
    "DEFAULT_EMULATOR_URL",
    "DEFAULT_WEBHOOK_SCHEDULE",
    "EVENTS_TABLE",
    "EXECUTE_QUEUE",
    "EXECUTOR_APIS",
    "FACADE_MAX_WAIT_LIMIT",
    "FLEX_DEFAULT_FUNCTION_TIMEOUT_SECONDS",
    "HOST_JSON",
    "IDEMPOTENCY_TABLE",
    "INDEX_TABLE",
    "NATIVE_CALLER",
    "PAYLOAD_CONTAINER",
    "POLL_QUEUE",
    "PROVIDERS",
    "RUNS_TABLE",
    "SESSIONS_TABLE",
    "SETTINGS",
    "STORAGE_CONNECTION",
    "STRATEGIES",
    "WEBHOOK_QUEUE",
    "ApiKey",
    "CompletionSettings",
    "DeploymentSettings",
    "ExecutorSettings",
    "FacadeSettings",
    "PacingSettings",
    "ProviderSettings",
    "Quota",
    "QuotaSettings",
    "Setting",
    "Settings",
    "SettingsError",
    "StorageSettings",
    "declared_settings",
    "function_timeout_seconds",
    "markdown_table",
    "parse_api_keys",
    "refuse_unresolved_key_vault_references",
]
