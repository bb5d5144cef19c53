"""Register the deployed app with the model provider's webhooks; keep, rotate or drop the signing secret.

azd runs this after every provision (azure.yaml `hooks.postprovision`); by hand, from the repository root:

    python -m infra.hooks.provider_webhook [--rotate | --drop-previous]

Idempotent: a run that finds the endpoint for the app's URL, and the secret it signs with, changes nothing.
1. Find the endpoint for https://<app>/api/provider/webhooks in the provider's management API (Azure OpenAI
   `/openai/v1/dashboard/webhook_endpoints`, OpenAI `/v1/webhook_endpoints`), or create it for the four
   `response.*` events. The provider returns the signing secret only when it creates or rotates an endpoint.
   With a second Azure OpenAI account (main.bicep's AZURE_PROVIDER_DEPLOYMENTS), on every resource: each one
   signs with its own secret, and the setting holds them all (the app accepts a delivery any of them verifies).
2. Keep the secret in the azd environment (AZURE_PROVIDER_WEBHOOK_SECRETS) before anything else: main.bicep maps
   that variable to a secure parameter, so every later provision (and CI, azure.yaml pipeline.secrets) writes the
   same value to Key Vault. Which stored secret is a resource's own, its `signing_secret_hint` tells.
3. Write it to Key Vault through Azure Resource Manager (the deploying user's Contributor; on the data plane it has
   Key Vault Secrets User only) and point the app setting PROVIDER_WEBHOOK_SECRETS at it, which moves the app from
   polling to push; when the setting already points there, make App Service re-read its Key Vault references.

A rotation keeps the previous secret in the setting next to the new one (the provider signs with both for 24 h);
the first run at least 72 h later drops it (deliveries are retried for up to 72 h), --drop-previous at once.
AZURE_PROVIDER_WEBHOOKS=off deletes the endpoint and empties the setting: the app polls again.
Nothing here prints a secret; the provider's hint (`whsec_...abcd`) identifies one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import httpx
import openai
from azure.core.exceptions import ClientAuthenticationError

EVENT_TYPES = ("response.completed", "response.failed", "response.cancelled", "response.incomplete")
WEBHOOK_PATH = "/api/provider/webhooks"
APP_SETTING = "PROVIDER_WEBHOOK_SECRETS"
KEY_VAULT_SECRET = "provider-webhook-secrets"  # infra/app/keyvault.bicep declares the same name
# azd environment variables: the secret(s) (mapped to main.bicep's providerWebhookSecrets), when the last rotation
# kept a previous secret, whether Azure has yet to receive the value, and the on/off switch.
SECRETS_VAR = "AZURE_PROVIDER_WEBHOOK_SECRETS"
ROTATED_AT_VAR = "AZURE_PROVIDER_WEBHOOK_ROTATED_AT"
PENDING_VAR = "AZURE_PROVIDER_WEBHOOK_PENDING"
SWITCH_VAR = "AZURE_PROVIDER_WEBHOOKS"
# main.bicep's output: the app's PROVIDER_DEPLOYMENTS when it has a second Azure OpenAI account; the hook registers
# on every resource it names.
POOL_VAR = "AZURE_PROVIDER_DEPLOYMENTS"
# The provider keeps signing with the previous secret for 24 h (keep_old_secret_active_for_24_hours), and OpenAI
# retries a delivery for up to 72 h: a delivery first signed before the rotation may still arrive that late.
PREVIOUS_SECRET_KEPT_SECONDS = 72 * 3600
AZURE_ROLE = "Cognitive Services OpenAI Contributor"
COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
ARM = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
REQUIRED = (
    "AZURE_FUNCTION_APP_URL",
    "AZURE_PROVIDER_WEBHOOK_SECRET_URI",
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_RESOURCE_GROUP",
    "AZURE_FUNCTION_NAME",
    "AZURE_KEY_VAULT_NAME",
)


class RegistrationError(Exception):
    """Something the operator has to fix; the message says what, and never contains a secret."""


class ApiError(RegistrationError):
    """The management API answered an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class AccessDenied(RegistrationError):
    """The management API refused the credentials (401/403); a new role assignment may still be propagating."""


# ---- the provider's management API ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    event_types: tuple[str, ...]
    secret_hint: str | None


class ProviderEndpoints:
    """Webhook endpoints of an OpenAI project or an Azure OpenAI resource, through the official openai SDK (which
    retries 429/5xx and connection errors). Azure serves the same API and bodies under `/openai/v1/dashboard`, so
    the Azure client is the SDK with that prefix in its base URL and an Entra token (or key) as its API key."""

    def __init__(self, client: openai.AsyncOpenAI, *, flavour: str, where: str) -> None:
        self._client = client
        self.flavour = flavour
        self.where = where

    @classmethod
    def for_openai(cls, api_key: str, base_url: str | None = None, *, max_retries: int = 3) -> ProviderEndpoints:
        client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url or None, max_retries=max_retries, timeout=30)
        return cls(client, flavour="openai", where=str(client.base_url))

    @classmethod
    def for_azure(
        cls, endpoint: str, credential: str | Callable[[], Awaitable[str]], *, max_retries: int = 3
    ) -> ProviderEndpoints:
        resource = azure_resource(endpoint)
        client = openai.AsyncOpenAI(
            api_key=credential, base_url=f"{resource}/openai/v1/dashboard", max_retries=max_retries, timeout=30
        )
        return cls(client, flavour="azure_openai", where=resource)

    async def find(self, url: str) -> list[Endpoint]:
        async def listed() -> list[Endpoint]:
            return [_endpoint(ep) async for ep in self._client.webhooks.list(limit=100) if _same_url(ep.url, url)]

        return await self._call("list", listed())

    async def create(self, url: str, name: str) -> tuple[Endpoint, str]:
        created = await self._call(
            "create", self._client.webhooks.create(url=url, name=name, event_types=list(EVENT_TYPES))
        )
        return _endpoint(created), _signing_secret(created, "create")

    async def rotate(self, endpoint_id: str) -> tuple[Endpoint, str]:
        # Keep the old secret signing for 24 h as well, so the app verifies deliveries with either one meanwhile.
        try:
            rotated = await self._call(
                "rotate_secret",
                self._client.webhooks.rotate_secret(endpoint_id, keep_old_secret_active_for_24_hours=True),
            )
        except ApiError as error:
            if self.flavour == "azure_openai" and error.status in (404, 405):
                # Azure's webhook article documents create, list, update and delete only.
                raise ApiError(
                    f"{error} -- this Azure OpenAI resource does not offer rotate_secret; to get a new "
                    f"secret, turn push off and on again ({SWITCH_VAR}, infra/README.md)",
                    error.status,
                ) from None
            raise
        return _endpoint(rotated), _signing_secret(rotated, "rotate_secret")

    async def set_event_types(self, endpoint_id: str) -> Endpoint:
        return _endpoint(
            await self._call("update", self._client.webhooks.update(endpoint_id, event_types=list(EVENT_TYPES)))
        )

    async def delete(self, endpoint_id: str) -> None:
        await self._call("delete", self._client.webhooks.delete(endpoint_id))

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, what: str, pending: Awaitable[Any]) -> Any:
        try:
            return await pending
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            raise AccessDenied(self._denied(what, error)) from None
        except openai.APIStatusError as error:
            raise ApiError(
                f"{self.flavour} webhook endpoints: {what} failed with HTTP {error.status_code}: {_api_message(error)}",
                error.status_code,
            ) from None
        except openai.APIConnectionError as error:
            raise RegistrationError(
                f"{self.flavour} webhook endpoints: {what}: cannot reach {self.where} ({error.__class__.__name__})"
            ) from None

    def _denied(self, what: str, error: openai.APIStatusError) -> str:
        if self.flavour == "azure_openai":
            return (
                f"Azure OpenAI {self.where} refused {what} of webhook endpoints (HTTP {error.status_code}: "
                f"{_api_message(error)}). The signed-in identity needs {AZURE_ROLE} on the account (the template "
                "grants it to principalId; a new role assignment can take a few minutes to apply)."
            )
        return (
            f"OpenAI refused {what} of webhook endpoints (HTTP {error.status_code}: {_api_message(error)}). "
            "Use an API key of the project the app runs in, allowed to manage its webhooks."
        )


def azure_resource(endpoint: str) -> str:
    """https://NAME.openai.azure.com from an Azure OpenAI endpoint as the app's settings give it (with or without
    /openai or /openai/v1 and a trailing slash)."""
    return re.sub(r"/openai(/v1)?$", "", endpoint.strip().rstrip("/"))


def _endpoint(ep: Any) -> Endpoint:
    return Endpoint(ep.id, ep.url, tuple(ep.event_types or ()), getattr(ep, "signing_secret_hint", None))


def _signing_secret(ep: Any, what: str) -> str:
    secret = getattr(ep, "signing_secret", None)
    if not isinstance(secret, str) or not is_usable_secret(secret):
        # The app would refuse its settings with it (shared/settings/secrets.py checks the same), so it never gets it.
        raise RegistrationError(
            f"webhook endpoints: {what} answered without a usable signing_secret (whsec_ and base64 of 24-64 bytes)"
        )
    return secret


def is_usable_secret(secret: str) -> bool:
    """The Standard Webhooks form PROVIDER_WEBHOOK_SECRETS accepts: whsec_ + base64 (padding optional), 24-64 bytes."""
    if not secret.startswith("whsec_"):
        return False
    material = secret[len("whsec_") :]
    try:
        return 24 <= len(base64.b64decode(material + "=" * (-len(material) % 4), validate=True)) <= 64
    except ValueError:
        return False


def _api_message(error: openai.APIStatusError) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error") if isinstance(body.get("error"), dict) else body
    return str(inner.get("message") or error.message)[:300]


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


# ---- where the secret goes (faked in tests) ---------------------------------------------------------------------


class Environment(Protocol):
    """The azd environment: read a value ('' when unset), set several at once (persisted before returning)."""

    def get(self, name: str) -> str: ...

    async def set(self, values: Mapping[str, str]) -> None: ...


class AppSecrets(Protocol):
    """The app's side in Azure: the Key Vault secret and the app setting that references it."""

    async def setting(self) -> str:
        """The current PROVIDER_WEBHOOK_SECRETS app setting ('' when absent)."""

    async def store_secret(self, value: str) -> None:
        """Write the Key Vault secret (a new version)."""

    async def set_setting(self, value: str) -> None:
        """Change the app setting; a settings change restarts the app, which re-reads every Key Vault reference."""

    async def refresh_references(self) -> str | None:
        """Make the app re-read its Key Vault references now; the reference's status (`Resolved`) if known."""


# ---- what a run does ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a run did at one provider resource. secret_count and app_updated are the setting's, the same in every
    outcome of a run; the notes about the setting come with the last outcome."""

    action: str  # created | unchanged | adopted | rotated | dropped-previous | removed | off
    endpoint_id: str | None
    secret_hint: str | None  # the hint of the secret the provider signs with
    secret_count: int  # secrets in the setting (two per rotated resource during a rotation)
    app_updated: bool  # Key Vault and/or the app setting were written
    notes: tuple[str, ...] = ()
    where: str = ""  # the resource (or OpenAI's base URL)


@dataclass
class _Secrets:
    """PROVIDER_WEBHOOK_SECRETS while a run works through the resources: what the azd environment holds, and the
    secrets each resource was found (or made) to sign with."""

    stored: tuple[str, ...]
    held: tuple[str, ...]  # a superset of everything any resource may still sign with
    claimed: list[str]
    rotated: bool = False  # a rotation kept a resource's previous secret: AZURE_PROVIDER_WEBHOOK_ROTATED_AT = now


async def reconcile(
    providers: Sequence[ProviderEndpoints],
    env: Environment,
    app: AppSecrets,
    *,
    url: str,
    secret_uri: str,
    name: str,
    rotate: bool = False,
    drop_previous: bool = False,
    now: float | None = None,
    access_wait: float = 0.0,
    retry_delay: float = 5.0,
) -> list[Outcome]:
    """Make every provider resource, the azd environment, Key Vault and the app setting agree; change only what
    differs. The setting holds the secret each resource signs with (the app accepts a delivery any of them verifies),
    and for 72 h after a rotation the one it signed with before."""
    now = time.time() if now is None else now
    stored = split_secrets(env.get(SECRETS_VAR))
    state = _Secrets(stored, stored, [])
    found: list[tuple[str, Endpoint, list[str]]] = []
    for provider in providers:
        action, endpoint, notes = await _reconcile_resource(
            provider, env, state, url=url, name=name, rotate=rotate, now=now, wait=(access_wait, retry_delay)
        )
        found.append((action, endpoint, notes))
    # A stored secret no resource signs with is a previous one (kept while its rotation is recent) or stale.
    previous = tuple(s for s in stored if s not in state.claimed)
    expired = rotate or drop_previous or _previous_expired(env.get(ROTATED_AT_VAR), now)
    kept = () if expired else previous
    secrets = tuple(s for s in state.held if s in state.claimed or s in kept)
    shared: list[str] = []
    if kept:
        shared.append("the previous secret stays until 72 h after the rotation (or --drop-previous)")
    if secrets != state.held:
        await env.set(
            {
                SECRETS_VAR: " ".join(secrets),
                PENDING_VAR: "true",
                ROTATED_AT_VAR: str(int(now)) if state.rotated else env.get(ROTATED_AT_VAR) if kept else "",
            }
        )
    app_updated, status = await sync_app(env, app, " ".join(secrets), secret_uri)
    if status not in (None, "Resolved"):
        shared.append(f"the app's Key Vault reference reads {status!r}; restart the app if it does not resolve")
    # Nothing else changed, yet a secret went: the previous one of a rotation, or one no resource signs with.
    dropped = secrets != stored and all(action == "unchanged" for action, _, _ in found)
    outcomes = [
        Outcome(
            "dropped-previous" if dropped and action == "unchanged" else action,
            endpoint.id,
            endpoint.secret_hint,
            len(secrets),
            app_updated,
            tuple(notes),
            provider.where,
        )
        for provider, (action, endpoint, notes) in zip(providers, found, strict=True)
    ]
    outcomes[-1] = replace(outcomes[-1], notes=outcomes[-1].notes + tuple(shared))
    return outcomes


async def _reconcile_resource(
    provider: ProviderEndpoints,
    env: Environment,
    state: _Secrets,
    *,
    url: str,
    name: str,
    rotate: bool,
    now: float,
    wait: tuple[float, float],
) -> tuple[str, Endpoint, list[str]]:
    """One resource's endpoint for the app's URL, created or rotated when needed; its secret(s) go to state.claimed,
    and a new one to the azd environment at once (the provider never shows it again)."""
    found = await find_when_allowed(provider, url, *wait)
    notes: list[str] = []
    if len(found) > 1:
        notes.append(f"{len(found)} endpoints have this URL at {provider.where}; using {found[0].id}")
    if not found:
        endpoint, secret = await provider.create(url, name)
        await _hold(env, state, (secret,), now)
        return "created", endpoint, notes
    endpoint = found[0]
    if set(endpoint.event_types) != set(EVENT_TYPES):
        endpoint = await provider.set_event_types(endpoint.id)
        notes.append("event types set to " + ", ".join(EVENT_TYPES))
    # The hint tells this resource's secret from another resource's, and from a stale one (another machine rotated,
    # a secret typed by hand).
    current = next((s for s in state.stored if s not in state.claimed and hint_matches(endpoint.secret_hint, s)), None)
    if not rotate and current is not None:
        state.claimed.append(current)
        return "unchanged", endpoint, notes
    endpoint, secret = await provider.rotate(endpoint.id)
    await _hold(env, state, (secret, current) if rotate and current else (secret,), now)
    return ("rotated" if rotate else "adopted"), endpoint, notes


async def _hold(env: Environment, state: _Secrets, secrets: tuple[str, ...], now: float) -> None:
    """Claim a resource's new secret (and its previous one during a rotation) and keep it in the azd environment
    before anything else, next to everything held so far: a run that stops at the next resource loses nothing, and
    main.bicep writes the value from there."""
    state.claimed.extend(secrets)
    rotated = len(secrets) > 1
    state.rotated = state.rotated or rotated
    state.held = (secrets[0], *(s for s in state.held if s != secrets[0]))
    await env.set(
        {SECRETS_VAR: " ".join(state.held), PENDING_VAR: "true"} | ({ROTATED_AT_VAR: str(int(now))} if rotated else {})
    )


async def sync_app(env: Environment, app: AppSecrets, value: str, secret_uri: str) -> tuple[bool, str | None]:
    """Key Vault gets the value when the azd environment says it has not yet; the setting points at Key Vault."""
    reference = f"@Microsoft.KeyVault(SecretUri={secret_uri})"
    pending = env.get(PENDING_VAR) == "true"
    if pending:
        await app.store_secret(value)
    status, changed = None, pending
    if await app.setting() != reference:
        await app.set_setting(reference)  # poll -> push; the restart reads the new secret
        changed = True
    elif pending:
        status = await app.refresh_references()  # otherwise App Service re-reads references only every 24 h
    if pending:
        await env.set({PENDING_VAR: ""})
    return changed, status


async def turn_off(
    providers: Sequence[ProviderEndpoints],
    env: Environment,
    app: AppSecrets,
    *,
    url: str,
    access_wait: float = 0.0,
    retry_delay: float = 5.0,
) -> list[Outcome]:
    """Delete the endpoint at every resource (deliveries stop), forget the secrets, empty the setting (the app
    polls)."""
    removed = []
    for provider in providers:
        found = await find_when_allowed(provider, url, access_wait, retry_delay)
        for endpoint in found:
            await provider.delete(endpoint.id)
        removed.append((provider.where, found[0].id if found else None))
    if any(env.get(name) for name in (SECRETS_VAR, PENDING_VAR, ROTATED_AT_VAR)):
        await env.set({SECRETS_VAR: "", PENDING_VAR: "", ROTATED_AT_VAR: ""})
    changed = bool(await app.setting())
    if changed:
        await app.set_setting("")
    return [
        Outcome("removed" if endpoint_id else "off", endpoint_id, None, 0, changed, where=where)
        for where, endpoint_id in removed
    ]


async def find_when_allowed(provider: ProviderEndpoints, url: str, wait: float, delay: float) -> list[Endpoint]:
    """List the endpoints, waiting up to `wait` seconds while access is refused: a role assigned by the provision
    that ran just before this hook can take minutes to apply."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return await provider.find(url)
        except AccessDenied:
            if time.monotonic() + delay > deadline:
                raise
            print(
                f"provider webhook: access refused, retrying in {delay:g} s (a new role assignment may still "
                "be propagating)",
                file=sys.stderr,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


def split_secrets(value: str | None) -> tuple[str, ...]:
    return tuple(s for s in (value or "").replace(",", " ").split() if s)


def hint_matches(hint: str | None, secret: str) -> bool:
    """`whsec_...abcd` names the last characters of the secret; without a usable hint, assume it matches."""
    if not hint or "..." not in hint:
        return True
    tail = hint.rsplit("...", 1)[1]
    return not tail or secret.endswith(tail)


def _previous_expired(rotated_at: str, now: float) -> bool:
    if not rotated_at:
        return True  # no rotation recorded: a secret no resource signs with is stale
    try:
        return now - float(rotated_at) >= PREVIOUS_SECRET_KEPT_SECONDS
    except ValueError:
        return False  # unknown rotation time: keep it until --drop-previous


# ---- azd and Azure Resource Manager --------------------------------------------------------------------------------


class AzdEnvironment:
    """Values of the azd environment (under a hook azd also passes them as environment variables; run by hand,
    `azd env get-values` supplies them), written with `azd env set` (which a hook may call: azd re-reads the
    environment when the hook ends)."""

    def __init__(self, values: Mapping[str, str], *, azd: str, name: str | None) -> None:
        self._values = dict(values)
        self._azd = azd
        self._name = name

    @classmethod
    async def load(cls, environ: Mapping[str, str]) -> AzdEnvironment:
        azd = shutil.which("azd")
        if azd is None:
            raise RegistrationError("azd is not on PATH (https://aka.ms/azd-install)")
        name = environ.get("AZURE_ENV_NAME") or None
        out = await _run([azd, "env", "get-values", "--output", "json", *cls._target(name)])
        stored = {k: str(v) for k, v in json.loads(out or "{}").items()}
        # azd's values first; the process environment fills gaps (CI passes pipeline secrets to azd that way).
        merged = {**environ, **{k: v for k, v in stored.items() if v or not environ.get(k)}}
        return cls(merged, azd=azd, name=name or stored.get("AZURE_ENV_NAME"))

    def get(self, name: str) -> str:
        return self._values.get(name) or ""

    def values(self) -> dict[str, str]:
        return dict(self._values)

    async def set(self, values: Mapping[str, str]) -> None:
        # Through a private file, not the command line, where other local users could read a secret.
        fd, path = tempfile.mkstemp(prefix="azd-env-", suffix=".env")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(f'{key}="{value}"\n' for key, value in values.items())
            try:
                await _run([self._azd, "env", "set", "--file", path, *self._target(self._name)])
            except CommandFailed as error:
                if "unknown flag" not in error.stderr:
                    raise
                # An azd older than `env set --file`: one value per call, on the command line.
                for key, value in values.items():
                    await _run([self._azd, "env", "set", key, value, *self._target(self._name)])
        finally:
            Path(path).unlink(missing_ok=True)  # noqa: ASYNC240 - one small local file, the hook runs alone
        self._values.update(values)

    @staticmethod
    def _target(name: str | None) -> list[str]:
        return ["--environment", name] if name else []


async def _run(command: list[str]) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise CommandFailed(command, process.returncode, err.decode(errors="replace"))
    return out.decode()


class CommandFailed(RegistrationError):
    def __init__(self, command: list[str], code: int, stderr: str) -> None:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        # The first line names the problem (later ones are usage); values are never echoed from the command.
        super().__init__(f"`azd {' '.join(command[1:3])}` failed ({code}): {lines[0] if lines else 'no output'}")
        self.stderr = stderr


class ArmAppSecrets:
    """The Key Vault secret and the app setting through Azure Resource Manager (control plane, Contributor):
    `Microsoft.KeyVault/vaults/secrets` the way the Bicep deployment writes it, and the site's app settings."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        token: Callable[[], Awaitable[str]],
        *,
        subscription: str,
        resource_group: str,
        app: str,
        vault: str,
    ) -> None:
        self._http = http
        self._token = token
        group = f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers"
        self._site = f"{group}/Microsoft.Web/sites/{app}"
        self._secret = f"{group}/Microsoft.KeyVault/vaults/{vault}/secrets/{KEY_VAULT_SECRET}"

    async def setting(self) -> str:
        return (await self._settings()).get(APP_SETTING) or ""

    async def store_secret(self, value: str) -> None:
        await self._request(
            "PUT",
            self._secret,
            "2023-07-01",
            {"properties": {"value": value, "contentType": "text/plain", "attributes": {"enabled": True}}},
        )

    async def set_setting(self, value: str) -> None:
        settings = await self._settings()  # the PUT replaces every setting: send them all back
        settings[APP_SETTING] = value
        await self._request("PUT", f"{self._site}/config/appsettings", "2024-04-01", {"properties": settings})

    async def refresh_references(self) -> str | None:
        # Documented in "Use Key Vault references as app settings" (rotation): resolves every reference now.
        await self._request("POST", f"{self._site}/config/configreferences/appsettings/refresh", "2022-03-01")
        reference = await self._request(
            "GET", f"{self._site}/config/configreferences/appsettings/{APP_SETTING}", "2022-03-01"
        )
        return (reference.get("properties") or {}).get("status")

    async def _settings(self) -> dict[str, str]:
        listed = await self._request("POST", f"{self._site}/config/appsettings/list", "2024-04-01")
        return dict(listed.get("properties") or {})

    async def _request(self, method: str, path: str, api_version: str, body: dict | None = None) -> dict:
        for attempt in range(4):
            try:
                response = await self._http.request(
                    method,
                    ARM + path,
                    params={"api-version": api_version},
                    json=body,
                    headers={"Authorization": f"Bearer {await self._token()}"},
                )
            except httpx.HTTPError as error:
                raise RegistrationError(
                    f"Azure Resource Manager: cannot reach {ARM} ({error.__class__.__name__})"
                ) from None
            if response.status_code in (429, 500, 502, 503, 504) and attempt < 3:
                await asyncio.sleep(_retry_after(response, 2.0**attempt))
                continue
            if response.status_code >= 400:
                raise RegistrationError(
                    f"Azure Resource Manager: {method} {path.split('/providers/', 1)[-1]} "
                    f"failed with HTTP {response.status_code}: {_arm_message(response)}"
                )
            return response.json() if response.content else {}
        raise AssertionError("unreachable")


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return min(float(response.headers.get("retry-after", default)), 30.0)
    except ValueError:
        return default


def _arm_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return f"{error.get('code', '')}: {error.get('message', '')}"[:300]
    except ValueError:
        return response.text[:200]


# ---- command line ---------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.hooks.provider_webhook", description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--rotate",
        action="store_true",
        help="rotate the signing secret; the previous one stays in the setting for 72 h",
    )
    what.add_argument("--drop-previous", action="store_true", help="drop the previous secret now")
    parser.add_argument(
        "--wait-for-access",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to retry while the management API refuses access (default 300)",
    )
    parser.add_argument("--allow-http", action="store_true", help="accept an http:// app URL (local tests only)")
    return parser


def endpoint_url(values: Mapping[str, str], *, allow_http: bool = False) -> str:
    missing = [name for name in REQUIRED if not values.get(name)]
    if missing:
        raise RegistrationError(f"missing {', '.join(missing)} in the azd environment: run `azd provision` first")
    base = values["AZURE_FUNCTION_APP_URL"].rstrip("/")
    if not base.startswith("https://") and not (allow_http and base.startswith("http://")):
        raise RegistrationError(
            f"AZURE_FUNCTION_APP_URL must be https:// (the provider refuses other URLs), got {base!r}"
        )
    return base + WEBHOOK_PATH


def provider_from(values: Mapping[str, str], azure_token: Callable[[], Awaitable[str]] | None) -> ProviderEndpoints:
    """The provider the app uses, read as shared/settings/provider.py reads it: MODEL_PROVIDER, else
    AZURE_OPENAI_ENDPOINT means Azure OpenAI (Entra ID unless AZURE_OPENAI_API_KEY is set), else OPENAI_API_KEY means
    OpenAI."""
    kind = (values.get("MODEL_PROVIDER") or "").lower() or (
        "azure_openai" if values.get("AZURE_OPENAI_ENDPOINT") else "openai" if values.get("OPENAI_API_KEY") else ""
    )
    if kind == "azure_openai":
        if not values.get("AZURE_OPENAI_ENDPOINT"):
            raise RegistrationError("AZURE_OPENAI_ENDPOINT is not set")
        credential = values.get("AZURE_OPENAI_API_KEY") or azure_token
        if credential is None:
            raise RegistrationError("no Azure credential for Azure OpenAI")
        return ProviderEndpoints.for_azure(values["AZURE_OPENAI_ENDPOINT"], credential)
    if kind == "openai":
        if not values.get("OPENAI_API_KEY"):
            raise RegistrationError("OPENAI_API_KEY is required with MODEL_PROVIDER=openai")
        return ProviderEndpoints.for_openai(values["OPENAI_API_KEY"], values.get("OPENAI_BASE_URL"))
    raise RegistrationError(
        "no model provider: set AZURE_OPENAI_ENDPOINT (azure_openai) or OPENAI_API_KEY (openai), "
        f"or MODEL_PROVIDER; got {kind!r}"
        if kind
        else "no model provider: AZURE_OPENAI_ENDPOINT and OPENAI_API_KEY are both unset"
    )


def pool_resources(raw: str) -> list[str]:
    """The distinct Azure OpenAI resources of a PROVIDER_DEPLOYMENTS value (main.bicep's output
    AZURE_PROVIDER_DEPLOYMENTS), in its order; entries of other providers have no webhooks here."""
    if not raw.strip():
        return []
    try:
        entries = json.loads(raw)
    except ValueError:
        raise RegistrationError(f"{POOL_VAR} is not JSON: run `azd provision` again") from None
    if not isinstance(entries, list):
        raise RegistrationError(f"{POOL_VAR} must be a JSON array of deployments")
    resources: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict) or (entry.get("provider") or "azure_openai") != "azure_openai":
            continue
        endpoint = entry.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint.strip():
            raise RegistrationError(f"{POOL_VAR}: deployment {entry.get('name')!r} has no endpoint")
        if azure_resource(endpoint) not in resources:
            resources.append(azure_resource(endpoint))
    return resources


def providers_from(
    values: Mapping[str, str], azure_token: Callable[[], Awaitable[str]] | None
) -> list[ProviderEndpoints]:
    """Every resource whose webhooks the app receives: each Azure OpenAI resource of AZURE_PROVIDER_DEPLOYMENTS (the
    template's second account makes it), with Microsoft Entra ID (AZURE_OPENAI_API_KEY, if set, for the resource of
    AZURE_OPENAI_ENDPOINT only: a key is per resource); without it, the one provider_from() reads."""
    resources = pool_resources(values.get(POOL_VAR) or "")
    if not resources:
        return [provider_from(values, azure_token)]
    key = values.get("AZURE_OPENAI_API_KEY")
    primary = azure_resource(values.get("AZURE_OPENAI_ENDPOINT") or "")
    credentials = {resource: key if key and resource == primary else azure_token for resource in resources}
    for resource, credential in credentials.items():
        if credential is None:
            raise RegistrationError(f"no Azure credential for Azure OpenAI {resource}")
    return [
        ProviderEndpoints.for_azure(resource, credential) for resource, credential in credentials.items() if credential
    ]


def report(outcome: Outcome, url: str) -> str:
    done = {
        "created": "registered",
        "adopted": "took over (its secret was not in the azd environment: rotated)",
        "rotated": "rotated the signing secret of",
        "dropped-previous": "dropped the previous secret of",
        "unchanged": "unchanged:",
        "removed": "deleted",
        "off": "nothing registered for",
    }[outcome.action]
    lines = [f"provider webhook: {done} {url} at {outcome.where}"]
    if outcome.action in ("removed", "off"):
        lines.append(f"provider webhook: {APP_SETTING} is empty: the app polls")
    else:
        lines.append(
            f"provider webhook: endpoint {outcome.endpoint_id}, signing secret "
            f"{outcome.secret_hint or 'whsec_...'}, {outcome.secret_count} secret(s) in {APP_SETTING}"
            + ("; Key Vault and the app updated" if outcome.app_updated else "")
        )
    lines += [f"provider webhook: note: {note}" for note in outcome.notes]
    return "\n".join(lines)


async def run(
    args: argparse.Namespace,
    env: Environment,
    app: AppSecrets,
    providers: Sequence[ProviderEndpoints],
    values: Mapping[str, str],
) -> list[Outcome]:
    url = endpoint_url(values, allow_http=args.allow_http)
    if (values.get(SWITCH_VAR) or "on").lower() in ("off", "false", "0", "no"):
        outcomes = await turn_off(providers, env, app, url=url, access_wait=args.wait_for_access)
    else:
        outcomes = await reconcile(
            providers,
            env,
            app,
            url=url,
            secret_uri=values["AZURE_PROVIDER_WEBHOOK_SECRET_URI"],
            name=f"background-runs {values.get('AZURE_ENV_NAME', '')}".strip(),
            rotate=args.rotate,
            drop_previous=args.drop_previous,
            access_wait=args.wait_for_access,
        )
    for outcome in outcomes:
        print(report(outcome, url))
    if any(o.action in ("rotated", "adopted", "created", "dropped-previous") for o in outcomes):
        print(
            f"provider webhook: if a pipeline provisions this environment, run `azd pipeline config` again: it "
            f"holds a copy of {SECRETS_VAR}"
        )
    return outcomes


async def _main(argv: list[str] | None) -> int:
    from azure.identity.aio import (
        AzureCliCredential,
        AzureDeveloperCliCredential,
        ChainedTokenCredential,
        get_bearer_token_provider,
    )

    args = _parser().parse_args(argv)
    env = await AzdEnvironment.load(os.environ)
    values = env.values()
    endpoint_url(values, allow_http=args.allow_http)  # fail before any call when azd has not provisioned
    tenant = values.get("AZURE_TENANT_ID") or None
    # `azd auth login` (also in CI, with federated credentials), else `az login`.
    credential = ChainedTokenCredential(
        AzureDeveloperCliCredential(tenant_id=tenant), AzureCliCredential(tenant_id=tenant)
    )
    try:
        providers = providers_from(values, get_bearer_token_provider(credential, COGNITIVE_SERVICES_SCOPE))
        try:
            async with httpx.AsyncClient(timeout=60) as http:
                app = ArmAppSecrets(
                    http,
                    get_bearer_token_provider(credential, ARM_SCOPE),
                    subscription=values["AZURE_SUBSCRIPTION_ID"],
                    resource_group=values["AZURE_RESOURCE_GROUP"],
                    app=values["AZURE_FUNCTION_NAME"],
                    vault=values["AZURE_KEY_VAULT_NAME"],
                )
                await run(args, env, app, providers, values)
        finally:
            for provider in providers:
                await provider.close()
    finally:
        await credential.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(_main(argv))
    except ClientAuthenticationError as error:
        print(
            f"provider webhook: no Azure sign-in ({error.message.splitlines()[0] if error.message else error}); "
            "run `azd auth login`, then `azd hooks run postprovision`",
            file=sys.stderr,
        )
        return 1
    except RegistrationError as error:
        print(
            f"provider webhook: {error}\nprovider webhook: the app keeps completing runs (it polls until its "
            "setting points at a secret the provider signs with); fix the above and run `azd hooks run "
            "postprovision`, which picks up where this run stopped",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
