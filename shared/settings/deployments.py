"""PROVIDER_DEPLOYMENTS: the pool of model deployments runs are placed on (shared/provider/pool.py).

A JSON array, one object per deployment: `name` (required, unique, `[a-z0-9-]{1,32}`: it is recorded on each run),
`endpoint` (an Azure OpenAI resource endpoint for azure_openai, else an OpenAI-compatible `/v1` base URL),
`provider` (azure_openai, openai, emulator, or openai_compatible for the executor's servers; default:
MODEL_PROVIDER), `deployment` (the model or deployment name
sent as `model`; default: the caller's model), `api_key_setting` (the NAME of the app setting that holds its key:
no secret in this JSON; absent: Microsoft Entra ID for Azure), `priority` (default 0, lower first), `weight`
(default 1, the share within a priority), `requests_per_minute` / `tokens_per_minute` (that deployment's pacing
budgets; absent: PACING_*). Unset: one deployment, `default`, made of the single-provider settings.

The same pool serves the executor (RUN_BACKEND executor; executor.model_pool): its entries are then the
OpenAI-compatible servers its model calls go to, and may be of any provider (settings.model checks the pair).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SETTING = "PROVIDER_DEPLOYMENTS"
DEFAULT_DEPLOYMENT = "default"
POOL_PROVIDERS = ("azure_openai", "openai", "emulator")  # the providers with a background mode
EXECUTOR_PROVIDERS = (*POOL_PROVIDERS, "openai_compatible")  # what the executor's model call can reach
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
class DeploymentEntry:
    """One entry of PROVIDER_DEPLOYMENTS as written, its fields checked (`parse_entries`, the setting's kind)."""

    name: str
    endpoint: str
    provider: str | None = None
    deployment: str | None = None
    api_key_setting: str | None = None
    priority: int = 0
    weight: int = 1
    requests_per_minute: int = 0
    tokens_per_minute: int = 0


def parse_entries(raw: str) -> tuple[DeploymentEntry, ...]:
    """PROVIDER_DEPLOYMENTS' text as entries (empty: none); ValueError names the entry and the field at fault."""
    if not raw:
        return ()
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError("expected a JSON array of one or more deployment objects")
    parsed = tuple(_entry(i, entry) for i, entry in enumerate(entries, start=1))
    names = [e.name for e in parsed]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"name {duplicates[0]!r} is used by more than one deployment")
    return parsed


def _entry(i: int, entry: Any) -> DeploymentEntry:
    if not isinstance(entry, dict):
        raise ValueError(f"entry {i}: expected an object")
    if unknown := sorted(set(entry) - _FIELDS):
        raise ValueError(f"entry {i}: unknown field {unknown[0]!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"entry {i}: name must be 1-32 characters of [a-z0-9-], got {name!r}")
    provider = _text(entry, "provider", name)
    if provider is not None and provider not in EXECUTOR_PROVIDERS:
        raise ValueError(
            f"{name}: provider must be azure_openai, openai, emulator or openai_compatible, got {provider!r}"
        )
    endpoint = _text(entry, "endpoint", name)
    if not endpoint or not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"{name}: endpoint must be an http(s) base URL, got {endpoint!r}")
    key_setting = _text(entry, "api_key_setting", name)
    if key_setting is not None and not _SETTING_NAME.fullmatch(key_setting):
        raise ValueError(f"{name}: api_key_setting must be the name of an app setting, got {key_setting!r}")
    return DeploymentEntry(
        name=name,
        endpoint=endpoint,
        provider=provider,
        deployment=_text(entry, "deployment", name),
        api_key_setting=key_setting,
        priority=_whole(entry, "priority", name, 0, minimum=0),
        weight=_whole(entry, "weight", name, 1, minimum=1),
        requests_per_minute=_whole(entry, "requests_per_minute", name, 0, minimum=1),
        tokens_per_minute=_whole(entry, "tokens_per_minute", name, 0, minimum=1),
    )


def _text(entry: Mapping[str, Any], field_name: str, where: str) -> str | None:
    value = entry.get(field_name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {field_name} must be a non-empty string, got {value!r}")
    return value.strip()


def _whole(entry: Mapping[str, Any], field_name: str, where: str, default: int, *, minimum: int) -> int:
    value = entry.get(field_name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value > 1_000_000_000:
        raise ValueError(f"{where}: {field_name} must be a whole number of at least {minimum}, got {value!r}")
    return value
