"""The provider webhook registration (infra/hooks/provider_webhook.py) and the templates agree: the secret travels
azd environment -> main.bicep parameter -> Key Vault secret -> app setting, the first provision gives an empty
setting (the app polls) rather than a reference to a secret that does not exist yet, azure.yaml runs the hook after
every provision and carries the secret into CI, and the deploying principal may manage webhook endpoints."""

from __future__ import annotations

import ast
import json
import re
import sys

import pytest

from infra.hooks import provider_webhook as hook

from .bicep_model import (
    INFRA,
    MAIN,
    REPO,
    ROLES,
    app_settings,
    assignments_to,
    body,
    decorators,
    module_calls,
    parse,
    resources,
    variables,
)

PARAMETERS = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
README = (INFRA / "README.md").read_text(encoding="utf-8")
OPENAI_ACCOUNT = "Microsoft.CognitiveServices/accounts"


def _empty_test(node) -> str | None:
    """The parameter `empty(p)` tests, when node is exactly that call."""
    function = node.get("function") if isinstance(node, dict) else None
    return function["parameters"]["item_to_test"] if function and function.get("type") == "empty" else None


def _conditional(node) -> dict:
    assert isinstance(node, dict) and node.get("operator", {}).get("type") == "conditional", node
    return node["operator"]["operands"]


def test_the_secret_is_a_secure_parameter_mapped_to_the_variable_the_hook_writes():
    param = parse(MAIN)["parameters"]["providerWebhookSecrets"]
    assert "secure" in decorators(param) and param["default"] == ""  # empty on the first provision
    assert PARAMETERS["providerWebhookSecrets"]["value"] == f"${{{hook.SECRETS_VAR}}}"
    assert (
        module_calls(parse(MAIN))["app/keyvault.bicep"]["params"]["providerWebhookSecrets"] == "providerWebhookSecrets"
    )


def test_key_vault_declares_the_secret_only_once_it_has_a_value():
    tree = parse(INFRA / "app" / "keyvault.bicep")
    [secret] = [
        r
        for r in resources(tree, "Microsoft.KeyVault/vaults/secrets").values()
        if body(r)["properties"]["value"] == "providerWebhookSecrets"
    ]
    condition = secret["config"]["condition"]
    assert condition["operator"]["type"] == "not"
    assert _empty_test(condition["operator"]["operands"]["bool_value"]) == "providerWebhookSecrets"
    assert variables(tree)[body(secret)["name"]] == hook.KEY_VAULT_SECRET  # the name the hook writes via ARM
    uri = tree["outputs"]["providerWebhookSecretsSecretUri"]["value"]
    assert uri.endswith(f"secrets/${{{body(secret)['name']}}}") and "vaultUri" in uri


def test_the_app_setting_is_empty_until_the_hook_has_stored_a_secret():
    setting = _conditional(app_settings()[hook.APP_SETTING])
    param = _empty_test(setting["condition"])
    assert setting["true_value"] == "" and setting["false_value"] == f"@Microsoft.KeyVault(SecretUri=${{{param}}})"
    wired = _conditional(module_calls(parse(MAIN))["app/api.bicep"]["params"][param])
    assert _empty_test(wired["condition"]) == "providerWebhookSecrets" and wired["true_value"] == ""
    assert "providerWebhookSecretsSecretUri" in json.dumps(wired["false_value"])


def test_the_hook_reads_what_the_provision_leaves_in_the_azd_environment():
    outputs = set(parse(MAIN)["outputs"])
    set_by_azd = {"AZURE_SUBSCRIPTION_ID", "AZURE_ENV_NAME"}
    assert set(hook.REQUIRED) <= outputs | set_by_azd, set(hook.REQUIRED) - outputs - set_by_azd
    assert {"AZURE_OPENAI_ENDPOINT", hook.POOL_VAR, "AZURE_TENANT_ID"} <= outputs
    mapped = {p["value"] for p in PARAMETERS.values()}
    # State of the hook only, never a parameter: a stale value in CI must not change a deployment.
    for variable in (hook.ROTATED_AT_VAR, hook.PENDING_VAR, hook.SWITCH_VAR):
        assert not any(variable in value for value in mapped), variable


def test_azure_yaml_runs_the_hook_after_every_provision_and_carries_the_secret_into_ci():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((REPO / "azure.yaml").read_text())
    hooks = doc["hooks"]["postprovision"]
    assert set(hooks) == {"posix", "windows"}
    assert hooks["posix"]["shell"] == "sh" and hooks["windows"]["shell"] == "pwsh"
    for shell in hooks.values():
        assert "-m infra.hooks.provider_webhook" in shell["run"]
        # The app works without the webhooks (it polls), so a failed registration must not stop `azd up` before
        # the code is deployed; azd prints the failure and `azd hooks run postprovision` retries.
        assert shell["continueOnError"] is True and shell["interactive"] is False
    assert hook.SECRETS_VAR in doc["pipeline"]["secrets"]
    assert {hook.ROTATED_AT_VAR, hook.SWITCH_VAR} <= set(doc["pipeline"]["variables"])
    assert "AZURE_PROVIDER_WEBHOOK_SECRETS: ${{ secrets.AZURE_PROVIDER_WEBHOOK_SECRETS }}" in README


def test_the_deploying_principal_may_manage_webhook_endpoints_on_both_kinds_of_account():
    contributor = ROLES["Cognitive Services OpenAI Contributor"]
    granted = {
        a.file.name
        for a in assignments_to("principalId")
        if contributor in a.role_ids and a.scope_type == OPENAI_ACCOUNT
    }
    assert {"rbac.bicep", "openai-rbac.bicep"} <= granted, granted
    assert hook.AZURE_ROLE == "Cognitive Services OpenAI Contributor" and hook.AZURE_ROLE in README


def test_the_hook_needs_only_what_the_dev_requirements_install():
    tree = ast.parse((REPO / "infra" / "hooks" / "provider_webhook.py").read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
    }
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    requirements = (REPO / "requirements.txt").read_text()
    pinned = {"httpx": "httpx==", "openai": "openai==", "azure": "azure-identity=="}
    assert third_party <= set(pinned), third_party
    assert all(pinned[name] in requirements for name in third_party)


def test_the_readme_says_how_to_rotate_drop_and_turn_push_off():
    section = README.split("## Provider webhooks", 1)[1].split("\n## ", 1)[0]
    for needle in (
        "--rotate",
        "--drop-previous",
        f"azd env set {hook.SWITCH_VAR} off",
        "72 h",
        "azd hooks run postprovision",
        "configreferences",
        hook.AZURE_ROLE,
        "azd pipeline config",
    ):
        assert needle in section, needle
    assert re.search(r"Secrets User", section)
