"""The two adapters the registration tests fake: Azure Resource Manager requests (checked on an httpx mock
transport: paths, api-versions, bodies, retries, errors) and `azd env` (a stand-in `azd` script on PATH that
records its arguments, so the test sees that a secret never reaches a command line)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import httpx
import pytest

from infra.hooks import provider_webhook as hook

SITE = "/subscriptions/sub/resourceGroups/rg-dev/providers/Microsoft.Web/sites/func-api-x"
SECRET = (
    "/subscriptions/sub/resourceGroups/rg-dev/providers/Microsoft.KeyVault/vaults/kv-x/secrets/provider-webhook-secrets"
)
WHSEC = "whsec_" + "A" * 43 + "="


class Arm:
    """Answers like ARM for the calls ArmAppSecrets makes; records every request."""

    def __init__(self, settings: dict[str, str], *, throttle: int = 0, deny: bool = False) -> None:
        self.settings = dict(settings)
        self.requests: list[httpx.Request] = []
        self._throttle = throttle
        self._deny = deny

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == "Bearer arm-token"
        if self._throttle:
            self._throttle -= 1
            return httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"code": "TooManyRequests"}})
        if self._deny:
            return httpx.Response(
                403,
                json={
                    "error": {"code": "AuthorizationFailed", "message": "no Microsoft.KeyVault/vaults/secrets/write"}
                },
            )
        path, method = request.url.path, request.method
        if (method, path) == ("POST", f"{SITE}/config/appsettings/list"):
            return httpx.Response(200, json={"properties": self.settings})
        if (method, path) == ("PUT", f"{SITE}/config/appsettings"):
            self.settings = json.loads(request.content)["properties"]
            return httpx.Response(200, json={"properties": self.settings})
        if (method, path) == ("PUT", SECRET):
            return httpx.Response(
                200, json={"properties": {"secretUri": "https://kv-x.vault.azure.net/secrets/provider-webhook-secrets"}}
            )
        if (method, path) == ("POST", f"{SITE}/config/configreferences/appsettings/refresh"):
            return httpx.Response(200, json={"value": []})
        if (method, path) == ("GET", f"{SITE}/config/configreferences/appsettings/PROVIDER_WEBHOOK_SECRETS"):
            return httpx.Response(200, json={"properties": {"status": "Resolved"}})
        return httpx.Response(404, json={"error": {"code": "NotFound", "message": path}})


async def arm_token() -> str:
    return "arm-token"


def app_secrets(arm: Arm, http: httpx.AsyncClient) -> hook.ArmAppSecrets:
    return hook.ArmAppSecrets(
        http, arm_token, subscription="sub", resource_group="rg-dev", app="func-api-x", vault="kv-x"
    )


async def test_the_secret_goes_to_key_vault_through_arm_and_the_setting_keeps_the_others():
    arm = Arm(
        {
            "RUN_TOKEN_KEY": "@Microsoft.KeyVault(SecretUri=https://kv-x.vault.azure.net/secrets/run-token-key)",
            "PROVIDER_WEBHOOK_SECRETS": "",
        }
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(arm)) as http:
        app = app_secrets(arm, http)
        assert await app.setting() == ""
        await app.store_secret(WHSEC)
        await app.set_setting("@Microsoft.KeyVault(SecretUri=https://kv-x.vault.azure.net/secrets/p)")
        assert await app.refresh_references() == "Resolved"

    put_secret = next(r for r in arm.requests if r.url.path == SECRET)
    assert put_secret.method == "PUT" and put_secret.url.host == "management.azure.com"
    assert put_secret.url.params["api-version"] == "2023-07-01"
    assert json.loads(put_secret.content) == {
        "properties": {"value": WHSEC, "contentType": "text/plain", "attributes": {"enabled": True}}
    }
    assert arm.settings["RUN_TOKEN_KEY"].startswith("@Microsoft.KeyVault(")  # the PUT replaced all: kept
    assert arm.settings["PROVIDER_WEBHOOK_SECRETS"].endswith("/secrets/p)")
    refresh = next(r for r in arm.requests if r.url.path.endswith("/refresh"))
    assert refresh.method == "POST" and refresh.url.params["api-version"] == "2022-03-01"


async def test_throttling_is_retried_and_a_refusal_is_named_without_the_secret():
    arm = Arm({}, throttle=2)
    async with httpx.AsyncClient(transport=httpx.MockTransport(arm)) as http:
        await app_secrets(arm, http).store_secret(WHSEC)
    assert len(arm.requests) == 3

    denied = Arm({}, deny=True)
    async with httpx.AsyncClient(transport=httpx.MockTransport(denied)) as http:
        with pytest.raises(hook.RegistrationError) as refused:
            await app_secrets(denied, http).store_secret(WHSEC)
    message = str(refused.value)
    assert "HTTP 403" in message and "AuthorizationFailed" in message and "Microsoft.KeyVault/vaults" in message
    assert WHSEC not in message and "/subscriptions/sub" not in message


# ---- azd env -------------------------------------------------------------------------------------------------------

FAKE_AZD = """#!/bin/sh
printf '%s\\n' "$*" >> "$AZD_LOG"
if [ "$1 $2" = "env get-values" ]; then
  printf '%s' "$AZD_VALUES"
  exit 0
fi
if [ "$1 $2 $3" = "env set --file" ]; then
  if [ -n "$AZD_NO_FILE_FLAG" ]; then
    echo "ERROR: unknown flag: --file" >&2
    exit 1
  fi
  cat "$4" >> "$AZD_LOG.files"
fi
if [ "$1 $2" = "auth token" ]; then
  echo "ERROR: not logged in, run azd auth login to login" >&2
  exit 1
fi
exit 0
"""


@pytest.fixture
def fake_azd(tmp_path: Path, monkeypatch) -> Path:
    script = tmp_path / "bin" / "azd"
    script.parent.mkdir()
    script.write_text(FAKE_AZD)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "azd.log"
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AZD_LOG", str(log))
    monkeypatch.setenv(
        "AZD_VALUES",
        json.dumps({"AZURE_ENV_NAME": "dev", "AZURE_KEY_VAULT_NAME": "kv-x", "AZURE_PROVIDER_WEBHOOK_SECRETS": ""}),
    )
    return log


async def test_azd_values_come_first_and_the_process_fills_the_gaps(fake_azd):
    env = await hook.AzdEnvironment.load(
        {
            "AZURE_ENV_NAME": "dev",
            "AZURE_KEY_VAULT_NAME": "from-process",
            "AZURE_PROVIDER_WEBHOOK_SECRETS": WHSEC,
            "OPENAI_API_KEY": "sk",
        }
    )
    assert env.get("AZURE_KEY_VAULT_NAME") == "kv-x"  # the environment's value wins
    assert env.get("AZURE_PROVIDER_WEBHOOK_SECRETS") == WHSEC  # CI passes pipeline secrets to azd this way
    assert env.get("OPENAI_API_KEY") == "sk"
    assert fake_azd.read_text().splitlines() == ["env get-values --output json --environment dev"]


async def test_secrets_reach_azd_through_a_file_never_the_command_line(fake_azd):
    env = await hook.AzdEnvironment.load({"AZURE_ENV_NAME": "dev"})
    await env.set({hook.SECRETS_VAR: f"{WHSEC} {WHSEC}", hook.PENDING_VAR: "true"})

    commands = fake_azd.read_text()
    assert WHSEC not in commands and "env set --file " in commands and commands.rstrip().endswith("--environment dev")
    written = Path(f"{fake_azd}.files").read_text()
    assert f'{hook.SECRETS_VAR}="{WHSEC} {WHSEC}"' in written and f'{hook.PENDING_VAR}="true"' in written
    assert env.get(hook.SECRETS_VAR) == f"{WHSEC} {WHSEC}"
    assert not list(Path(tempfile.gettempdir()).glob("azd-env-*.env"))  # the file is gone


async def test_an_azd_without_env_set_file_gets_one_value_per_call(fake_azd, monkeypatch):
    monkeypatch.setenv("AZD_NO_FILE_FLAG", "1")
    env = await hook.AzdEnvironment.load({"AZURE_ENV_NAME": "dev"})
    await env.set({hook.PENDING_VAR: "true"})
    assert fake_azd.read_text().splitlines()[-1] == f"env set {hook.PENDING_VAR} true --environment dev"


def test_the_module_runs_as_the_hook_runs_it_and_fails_cleanly_before_a_provision(fake_azd, tmp_path):
    """`python -m infra.hooks.provider_webhook` from the repository root (what azure.yaml runs): without the
    provision's outputs it stops before any call, says what is missing, and exits 1 (azd shows it and goes on)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_", "MODEL_PROVIDER"))}
    done = subprocess.run(
        [sys.executable, "-m", "infra.hooks.provider_webhook"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "missing AZURE_FUNCTION_APP_URL" in done.stderr and "azd provision" in done.stderr
    assert "the app keeps completing runs" in done.stderr
    assert fake_azd.read_text().splitlines() == ["env get-values --output json"]


def test_without_an_azure_sign_in_the_hook_says_to_log_in(fake_azd, monkeypatch):
    import subprocess
    import sys

    provisioned = {
        "AZURE_ENV_NAME": "dev",
        "AZURE_FUNCTION_APP_URL": "https://func-api-x.azurewebsites.net",
        "AZURE_PROVIDER_WEBHOOK_SECRET_URI": "https://kv-x.vault.azure.net/secrets/provider-webhook-secrets",
        "AZURE_SUBSCRIPTION_ID": "sub",
        "AZURE_RESOURCE_GROUP": "rg-dev",
        "AZURE_FUNCTION_NAME": "func-api-x",
        "AZURE_KEY_VAULT_NAME": "kv-x",
        "AZURE_OPENAI_ENDPOINT": "https://cog-x.openai.azure.com/",
    }
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_", "MODEL_PROVIDER"))}
    env["AZD_VALUES"] = json.dumps(provisioned)
    env["PATH"] = str(fake_azd.parent / "bin")  # no `az` either: the chain has no credential left
    done = subprocess.run(
        [sys.executable, "-m", "infra.hooks.provider_webhook"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "no Azure sign-in" in done.stderr and "azd auth login" in done.stderr
    assert "Traceback" not in done.stderr
    assert any(line.startswith("auth token") for line in fake_azd.read_text().splitlines())
