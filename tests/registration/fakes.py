"""In-memory stand-ins for the two things the registration hook writes outside the provider: the azd environment
and the app's side in Azure (Key Vault secret through ARM, app setting). They record every write, so a test can
assert that a second run wrote nothing."""

from __future__ import annotations

from collections.abc import Mapping

from infra.hooks.provider_webhook import RegistrationError


class MemoryEnvironment:
    def __init__(self, values: Mapping[str, str] | None = None, *, fail_sets: int = 0) -> None:
        self.values = dict(values or {})
        self.writes: list[dict[str, str]] = []
        self._fail_sets = fail_sets

    def get(self, name: str) -> str:
        return self.values.get(name) or ""

    async def set(self, values: Mapping[str, str]) -> None:
        if self._fail_sets:
            self._fail_sets -= 1
            raise RegistrationError("`azd env set` failed (injected)")
        self.writes.append(dict(values))
        self.values.update(values)


class MemoryApp:
    """Key Vault versions of the secret, the app setting, and what the app would resolve the setting to."""

    def __init__(self, secret_uri: str, *, setting: str = "", fail_store: int = 0) -> None:
        self.secret_uri = secret_uri
        self.setting_value = setting
        self.versions: list[str] = []
        self.writes: list[str] = []
        self._fail_store = fail_store

    async def setting(self) -> str:
        return self.setting_value

    async def store_secret(self, value: str) -> None:
        if self._fail_store:
            self._fail_store -= 1
            raise RegistrationError("Azure Resource Manager: PUT secret failed with HTTP 503 (injected)")
        self.writes.append("store_secret")
        self.versions.append(value)

    async def set_setting(self, value: str) -> None:
        self.writes.append("set_setting")
        self.setting_value = value

    async def refresh_references(self) -> str | None:
        self.writes.append("refresh_references")
        return "Resolved"

    def resolved(self) -> str:
        """PROVIDER_WEBHOOK_SECRETS as the app sees it: the latest Key Vault version behind the reference."""
        if self.setting_value == f"@Microsoft.KeyVault(SecretUri={self.secret_uri})":
            return self.versions[-1] if self.versions else "@unresolved"
        return self.setting_value
