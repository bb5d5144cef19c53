"""`Settings`: every setting the service reads, typed and grouped, validated once at start-up.

`Settings.from_env()` reads each value as the table declares it, adds the rules that join several settings (what
is inferred when empty, what one setting requires of another, what host.json bounds), and names the bad setting
in its error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .host import (
    HOST_JSON,
    check_stream_below_function_timeout,
    check_watch_window_below_function_timeout,
    function_timeout_seconds,
)
from .names import STORAGE_CONNECTION
from .provider import DeploymentSettings, ProviderSettings, deployments, provider_settings
from .quotas import NATIVE_CALLER, PacingSettings, Quota, QuotaSettings
from .secrets import ApiKey
from .spec import SettingsError
from .table import SETTINGS, Read, reader


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

    def service_uris(self) -> tuple[str, str, str]:
        """Blob, queue and table endpoints of identity-based storage (the parser requires all three)."""
        if self.blob_uri is None or self.queue_uri is None or self.table_uri is None:
            raise SettingsError(f"{STORAGE_CONNECTION}: identity-based storage needs the blob, queue and table URIs")
        return self.blob_uri, self.queue_uri, self.table_uri


@dataclass(frozen=True)
class ExecutorSettings:
    backend: str  # what new runs use: background | executor
    api: str  # chat_completions | responses
    max_attempts: int
    stale_seconds: float
    idle_timeout_seconds: float
    function_timeout_seconds: float | None  # host.json functionTimeout; None: unbounded


@dataclass(frozen=True)
class CompletionSettings:
    strategy: str  # poll | push | watch
    provider_webhook_secrets: tuple[str, ...] = field(repr=False)
    safety_poll_initial: float
    safety_poll_max: float
    watch_window: float


@dataclass(frozen=True)
class FacadeSettings:
    api_keys: tuple[ApiKey, ...] = field(repr=False)
    max_wait_seconds: float


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings
    provider: ProviderSettings
    deployments: tuple[DeploymentSettings, ...]  # the pool runs are placed on (PROVIDER_DEPLOYMENTS)
    token_keys: tuple[bytes, ...] = field(repr=False)  # the first signs; all verify
    poll_initial_delay: float
    poll_max_delay: float
    poll_multiplier: float
    run_deadline: float
    admission_max_wait: float
    sweep_grace: float
    max_prefer_wait: float
    max_read_wait: float
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
    facade: FacadeSettings
    quotas: QuotaSettings
    pacing: PacingSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, host_json: Path = HOST_JSON) -> Settings:
        """The settings in `env` (default: the process environment); SettingsError names the first bad one."""
        env = os.environ if env is None else env
        refuse_unresolved_key_vault_references(env)
        function_timeout = function_timeout_seconds(host_json)  # read once: three rules need it
        read = reader(env, "runs", "webhooks")
        stream_max_seconds = read("STREAM_MAX_SECONDS")
        check_stream_below_function_timeout(stream_max_seconds, function_timeout)
        provider = provider_settings(reader(env, "provider"))
        pool = deployments(reader(env, "provider")("PROVIDER_DEPLOYMENTS"), env, provider)
        facade = reader(env, "facade")
        return cls(
            storage=_storage(reader(env, "storage")),
            provider=provider,
            deployments=pool,
            token_keys=read("RUN_TOKEN_KEY"),
            poll_initial_delay=read("POLL_INITIAL_DELAY_SECONDS"),
            poll_max_delay=read("POLL_MAX_DELAY_SECONDS"),
            poll_multiplier=read("POLL_BACKOFF_MULTIPLIER"),
            run_deadline=read("RUN_DEADLINE_SECONDS"),
            admission_max_wait=read("ADMISSION_MAX_WAIT_SECONDS"),
            sweep_grace=read("SWEEP_GRACE_SECONDS"),
            max_prefer_wait=read("MAX_PREFER_WAIT_SECONDS"),
            max_read_wait=read("MAX_READ_WAIT_SECONDS"),
            max_request_bytes=read("MAX_REQUEST_BYTES"),
            webhook_secrets=read("WEBHOOK_SIGNING_SECRETS"),
            webhook_allow_http=read("WEBHOOK_ALLOW_HTTP"),
            webhook_allow_private=read("WEBHOOK_ALLOW_PRIVATE_ADDRESSES"),
            webhook_schedule=read("WEBHOOK_RETRY_SCHEDULE"),
            webhook_timeout=read("WEBHOOK_TIMEOUT_SECONDS"),
            retention_seconds=read("RETENTION_DAYS") * 86400,
            stream_max_seconds=stream_max_seconds,
            stream_keepalive_seconds=read("STREAM_KEEPALIVE_SECONDS"),
            completion=_completion(reader(env, "completion"), function_timeout),
            facade=FacadeSettings(facade("RESPONSES_API_KEYS"), facade("RESPONSES_MAX_WAIT_SECONDS")),
            executor=_executor(reader(env, "executor"), provider, pool, function_timeout),
            quotas=_quotas(read, facade("RESPONSES_API_KEYS")),
            pacing=PacingSettings(
                read("PACING_REQUESTS_PER_MINUTE"),
                read("PACING_TOKENS_PER_MINUTE"),
                read("PACING_ADAPTIVE"),
                read("PACING_BURST"),
            ),
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


def _storage(read: Read) -> StorageSettings:
    """A connection string (Azurite), or the managed identity with the three service URIs (Azure)."""
    prefix = STORAGE_CONNECTION
    client_id = read(f"{prefix}__clientId")
    # Identity wins: a platform-injected connection string would fail with shared keys off.
    identity = (read(f"{prefix}__credential") or "").lower() == "managedidentity"
    if not identity and (conn := read(prefix)):
        return StorageSettings(conn, None, None, None, client_id)
    uris = {kind: read(f"{prefix}__{kind}ServiceUri") for kind in ("blob", "queue", "table")}
    if missing := [f"{prefix}__{kind}ServiceUri" for kind, uri in uris.items() if uri is None]:
        raise SettingsError(
            f"{prefix}: set a connection string, or all of {', '.join(missing)} for identity-based storage"
        )
    return StorageSettings(None, uris["blob"], uris["queue"], uris["table"], client_id)


def _completion(read: Read, function_timeout: float | None) -> CompletionSettings:
    secrets = read("PROVIDER_WEBHOOK_SECRETS")
    strategy = read("COMPLETION_STRATEGY") or ("push" if secrets else "poll")
    if strategy == "push" and not secrets:
        raise SettingsError(
            "PROVIDER_WEBHOOK_SECRETS: required when COMPLETION_STRATEGY is push (the signing "
            "secret of the provider's webhook endpoint)"
        )
    window = read("WATCH_WINDOW_SECONDS")
    if strategy == "watch":
        check_watch_window_below_function_timeout(window, function_timeout)
    initial = read("SAFETY_POLL_INITIAL_SECONDS")
    return CompletionSettings(strategy, secrets, initial, max(initial, read("SAFETY_POLL_MAX_SECONDS")), window)


def _quotas(read: Read, api_keys: tuple[ApiKey, ...]) -> QuotaSettings:
    """The default quota and the overrides, each naming a configured caller (a misspelt name would leave its caller
    at the default unnoticed)."""
    overrides = read("CALLER_QUOTAS")
    callers = {key.caller for key in api_keys} | {NATIVE_CALLER}
    if unknown := sorted(set(overrides) - callers):
        raise SettingsError(
            f"CALLER_QUOTAS: {', '.join(unknown)} is not a caller of RESPONSES_API_KEYS "
            f"(nor {NATIVE_CALLER}, the function-key callers)"
        )
    return QuotaSettings(Quota(read("CALLER_MAX_ACTIVE_RUNS"), read("CALLER_STARTS_PER_MINUTE")), overrides)


def _executor(
    read: Read, provider: ProviderSettings, pool: tuple[DeploymentSettings, ...], function_timeout: float | None
) -> ExecutorSettings:
    """The executor's settings, and which backend new runs use: background when every deployment has a background
    mode, else the executor (whose model calls go to the same pool: executor.model_pool)."""
    without = [d for d in pool if not d.provider.has_background_mode]
    backend = read("RUN_BACKEND") or ("executor" if without else "background")
    if backend == "background" and without:
        if without[0].implicit:
            raise SettingsError(
                f"RUN_BACKEND: background needs a provider with a background mode; {provider.kind} has none "
                "(use executor)"
            )
        raise SettingsError(
            f"PROVIDER_DEPLOYMENTS: {without[0].name}: provider {without[0].provider.kind} has no background mode, "
            "so it can serve only the executor (RUN_BACKEND executor)"
        )
    return ExecutorSettings(
        backend=backend,
        api=read("EXECUTOR_API"),
        max_attempts=read("EXECUTOR_MAX_ATTEMPTS"),
        stale_seconds=read("EXECUTOR_STALE_SECONDS"),
        idle_timeout_seconds=read("EXECUTOR_IDLE_TIMEOUT_SECONDS"),
        function_timeout_seconds=function_timeout,
    )
