"""Which model provider the service talks to, and how: MODEL_PROVIDER, or inferred from the settings present; and
the pool of deployments (PROVIDER_DEPLOYMENTS, parsed by deployments.py), each with its provider's settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .deployments import DEFAULT_DEPLOYMENT, SETTING, DeploymentEntry
from .spec import SettingsError
from .table import Read


@dataclass(frozen=True)
class ProviderSettings:
    kind: str  # emulator | openai | azure_openai | openai_compatible
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


def azure_v1_url(endpoint: str) -> str:
    """The v1 API base URL of an Azure OpenAI resource endpoint."""
    base = endpoint.rstrip("/")
    if not base.endswith("/openai/v1"):
        base += "/openai/v1"
    return base + "/"


def provider_kind(read: Read) -> str:
    """MODEL_PROVIDER; when empty, the first provider whose setting is present, else the local emulator."""
    kind: str | None = read("MODEL_PROVIDER")
    if kind:
        return kind
    if read("AZURE_OPENAI_ENDPOINT"):
        return "azure_openai"
    if read("OPENAI_COMPATIBLE_BASE_URL"):
        return "openai_compatible"
    if read("OPENAI_API_KEY"):
        return "openai"
    return "emulator"


def provider_settings(read: Read) -> ProviderSettings:
    kind = provider_kind(read)
    common = dict(
        client_id=read("AZURE_CLIENT_ID"),
        default_model=read("DEFAULT_MODEL"),
        timeout_seconds=read("PROVIDER_TIMEOUT_SECONDS"),
    )
    if kind == "emulator":
        return ProviderSettings(kind, read("EMULATOR_BASE_URL").rstrip("/"), "emulator", None, **common)
    if kind == "openai":
        key = read("OPENAI_API_KEY")
        if not key:
            raise SettingsError("OPENAI_API_KEY: required when MODEL_PROVIDER is openai")
        return ProviderSettings(kind, read("OPENAI_BASE_URL"), key, None, **common)
    if kind == "azure_openai":
        endpoint = read("AZURE_OPENAI_ENDPOINT")
        if not endpoint:
            raise SettingsError("AZURE_OPENAI_ENDPOINT: an https:// endpoint is required for azure_openai")
        return ProviderSettings(kind, azure_v1_url(endpoint), read("AZURE_OPENAI_API_KEY"), endpoint, **common)
    url = read("OPENAI_COMPATIBLE_BASE_URL")  # openai_compatible, the last of the kinds MODEL_PROVIDER accepts
    if not url:
        raise SettingsError("OPENAI_COMPATIBLE_BASE_URL: an http(s) URL is required for openai_compatible")
    return ProviderSettings(
        kind,
        url.rstrip("/"),
        read("OPENAI_COMPATIBLE_API_KEY"),
        None,
        **common,
        entra_scope=read("OPENAI_COMPATIBLE_ENTRA_SCOPE"),
    )


@dataclass(frozen=True)
class DeploymentSettings:
    """One deployment of the pool: how to reach it, and how placement and pacing treat it."""

    name: str
    provider: ProviderSettings  # its client's settings (base URL, key or Entra ID, timeout)
    model: str | None  # sent as `model` instead of the caller's (the Azure deployment name); None: the caller's
    priority: int = 0
    weight: int = 1
    requests_per_minute: int = 0  # its pacing budgets; 0: the service's PACING_* budget
    tokens_per_minute: int = 0
    implicit: bool = False  # PROVIDER_DEPLOYMENTS is unset: this is the single-provider settings' one deployment


def deployments(
    entries: tuple[DeploymentEntry, ...], env: Mapping[str, str], service: ProviderSettings
) -> tuple[DeploymentSettings, ...]:
    """The pool of `entries`, each with its provider's settings and key (read from the app setting it names); none:
    the service's one provider as `default`. SettingsError names the entry and the field (never a key's value)."""
    if not entries:
        return (DeploymentSettings(DEFAULT_DEPLOYMENT, service, None, implicit=True),)
    return tuple(_resolved(entry, env, service) for entry in entries)


def _resolved(entry: DeploymentEntry, env: Mapping[str, str], service: ProviderSettings) -> DeploymentSettings:
    where = f"{SETTING}: {entry.name}"
    kind = entry.provider or service.kind  # one without a background mode serves the executor only (settings.model)
    if kind == "azure_openai" and not entry.endpoint.startswith("https://"):
        raise SettingsError(f"{where}: endpoint must be an https:// Azure OpenAI endpoint, got {entry.endpoint!r}")
    base_url = azure_v1_url(entry.endpoint) if kind == "azure_openai" else entry.endpoint.rstrip("/")
    provider = ProviderSettings(
        kind,
        base_url,
        _key(where, entry.api_key_setting, env, kind),
        entry.endpoint if kind == "azure_openai" else None,
        service.client_id,
        service.default_model,
        service.timeout_seconds,
        service.entra_scope if kind == "openai_compatible" else None,
    )
    return DeploymentSettings(
        entry.name,
        provider,
        entry.deployment,
        entry.priority,
        entry.weight,
        entry.requests_per_minute,
        entry.tokens_per_minute,
    )


def _key(where: str, setting: str | None, env: Mapping[str, str], kind: str) -> str | None:
    """The deployment's key, read from the app setting it names (the emulator takes any key)."""
    if setting is None:
        if kind == "openai":
            raise SettingsError(f"{where}: api_key_setting is required for provider openai")
        return "emulator" if kind == "emulator" else None  # azure_openai: Microsoft Entra ID
    key = (env.get(setting) or "").strip()
    if not key:
        raise SettingsError(f"{where}: api_key_setting names {setting}, which is not set")
    return key
