"""PROVIDER_DEPLOYMENTS: the pool of model deployments runs are placed on (shared/provider/pool.py).

A JSON array, one object per deployment: `name` (required, unique, `[a-z0-9-]{1,32}`: it is recorded on each run),
`endpoint` (an Azure OpenAI resource endpoint for azure_openai, else an OpenAI-compatible `/v1` base URL),
`provider` (azure_openai, openai or emulator; default: MODEL_PROVIDER), `deployment` (the model or deployment name
sent as `model`; default: the caller's model), `api_key_setting` (the NAME of the app setting that holds its key:
no secret in this JSON; absent: Microsoft Entra ID for Azure), `priority` (default 0, lower first), `weight`
(default 1, the share within a priority), `requests_per_minute` / `tokens_per_minute` (that deployment's pacing
budgets; absent: PACING_*). Unset: one deployment, `default`, made of the single-provider settings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .provider import ProviderSettings, azure_v1_url
from .spec import SettingsError

SETTING = "PROVIDER_DEPLOYMENTS"
DEFAULT_DEPLOYMENT = "default"
POOL_PROVIDERS = ("azure_openai", "openai", "emulator")  # the providers with a background mode
NAME = re.compile(r"[a-z0-9-]{1,32}")
_FIELDS = frozenset(
    {
        "name",
        "endpoint",
        "provider",
        "deployment",
        "api_key_setting",
        "priority",
        "weight",
        "requests_per_minute",
        "tokens_per_minute",
    }
)
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


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
    api_key_setting: str | None = field(default=None)  # where its key came from (the key is in `provider`)
    implicit: bool = False  # PROVIDER_DEPLOYMENTS is unset: this is the single-provider settings' one deployment


def deployments(raw: str, env: Mapping[str, str], service: ProviderSettings) -> tuple[DeploymentSettings, ...]:
    """The pool PROVIDER_DEPLOYMENTS describes (raw: its text); unset: the service's one provider as `default`.
    SettingsError names the setting, the entry and the field at fault (never a key's value)."""
    if not raw.strip():
        return (DeploymentSettings(DEFAULT_DEPLOYMENT, service, None, implicit=True),)
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as error:
        raise SettingsError(f"{SETTING}: not JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"{SETTING}: expected a JSON array of one or more deployment objects")
    pool = tuple(_entry(i, entry, env, service) for i, entry in enumerate(entries, start=1))
    names = [d.name for d in pool]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise SettingsError(f"{SETTING}: name {duplicates[0]!r} is used by more than one deployment")
    return pool


def _entry(i: int, entry: Any, env: Mapping[str, str], service: ProviderSettings) -> DeploymentSettings:
    where = f"{SETTING}: entry {i}"
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: expected an object")
    if unknown := sorted(set(entry) - _FIELDS):
        raise SettingsError(f"{where}: unknown field {unknown[0]!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise SettingsError(f"{where}: name must be 1-32 characters of [a-z0-9-], got {name!r}")
    where = f"{SETTING}: {name}"
    kind = _text(entry, "provider", where) or service.kind
    if kind not in POOL_PROVIDERS:
        raise SettingsError(
            f"{where}: provider must be azure_openai, openai or emulator (a provider with a background mode), "
            f"got {kind!r}"
        )
    endpoint = _text(entry, "endpoint", where)
    https_only = kind == "azure_openai"
    if not endpoint or not endpoint.startswith(("https://",) if https_only else ("http://", "https://")):
        expected = "an https:// Azure OpenAI endpoint" if https_only else "an http(s) base URL"
        raise SettingsError(f"{where}: endpoint must be {expected}, got {endpoint!r}")
    key_setting = _text(entry, "api_key_setting", where)
    key = _key(where, key_setting, env, kind)
    base_url = azure_v1_url(endpoint) if kind == "azure_openai" else endpoint.rstrip("/")
    provider = ProviderSettings(
        kind,
        base_url,
        key,
        endpoint if kind == "azure_openai" else None,
        service.client_id,
        service.default_model,
        service.timeout_seconds,
    )
    return DeploymentSettings(
        name=name,
        provider=provider,
        model=_text(entry, "deployment", where),
        priority=_whole(entry, "priority", where, 0, minimum=0),
        weight=_whole(entry, "weight", where, 1, minimum=1),
        requests_per_minute=_whole(entry, "requests_per_minute", where, 0, minimum=1),
        tokens_per_minute=_whole(entry, "tokens_per_minute", where, 0, minimum=1),
        api_key_setting=key_setting,
    )


def _key(where: str, setting: str | None, env: Mapping[str, str], kind: str) -> str | None:
    """The deployment's key, read from the app setting it names (the emulator takes any key)."""
    if setting is None:
        if kind == "openai":
            raise SettingsError(f"{where}: api_key_setting is required for provider openai")
        return "emulator" if kind == "emulator" else None  # azure_openai: Microsoft Entra ID
    if not _SETTING_NAME.fullmatch(setting):
        raise SettingsError(f"{where}: api_key_setting must be the name of an app setting, got {setting!r}")
    key = (env.get(setting) or "").strip()
    if not key:
        raise SettingsError(f"{where}: api_key_setting names {setting}, which is not set")
    return key


def _text(entry: Mapping[str, Any], field_name: str, where: str) -> str | None:
    value = entry.get(field_name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"{where}: {field_name} must be a non-empty string, got {value!r}")
    return value.strip()


def _whole(entry: Mapping[str, Any], field_name: str, where: str, default: int, *, minimum: int) -> int:
    value = entry.get(field_name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value > 1_000_000_000:
        raise SettingsError(f"{where}: {field_name} must be a whole number of at least {minimum}, got {value!r}")
    return value
