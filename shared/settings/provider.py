"""Which model provider the service talks to, and how: MODEL_PROVIDER, or inferred from the settings present."""

from __future__ import annotations

from dataclasses import dataclass, field

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
