"""What a reading of the templates against Flex Consumption and azd found (infra/README.md "Deployability review"),
checked on the parsed templates so it stays fixed."""

from __future__ import annotations

import json
import re

import pytest

from .bicep_model import (
    INFRA,
    MAIN,
    ROLES,
    app_settings,
    assignments_to,
    body,
    decorators,
    function_app,
    module_calls,
    parse,
    resources,
)

README = (INFRA / "README.md").read_text(encoding="utf-8")
PARAMETERS_FILE = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
VAULT = "Microsoft.KeyVault/vaults"

# "Flex Consumption plan deprecations" (Functions app settings reference): site properties and app settings that
# Flex rejects or ignores. ftpsState made newer stamps reject the whole site (ARM 51021).
FLEX_DEPRECATED_SITE_CONFIG = {
    "ftpsState",
    "alwaysOn",
    "linuxFxVersion",
    "windowsFxVersion",
    "javaVersion",
    "netFrameworkVersion",
    "powerShellVersion",
    "use32BitWorkerProcess",
    "functionAppScaleLimit",
    "preWarmedInstanceCount",
    "vnetRouteAllEnabled",
    "vnetContentShareEnabled",
    "vnetImagePullEnabled",
    "vnetBackupRestoreEnabled",
}
FLEX_DEPRECATED_SITE_PROPERTIES = {"containerSize", "dnsConfiguration", "isReserved", "isXenon", "reserved"}
FLEX_DEPRECATED_APP_SETTINGS = {
    "ENABLE_ORYX_BUILD",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTOVERVNET",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_DNS_SERVER",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
    "WEBSITE_VNET_ROUTE_ALL",
    "WEBSITE_TIME_ZONE",
    "TZ",
}


def _main_params() -> dict:
    return parse(MAIN)["parameters"]


def _mapped_variable(param: str) -> str:
    value = str(PARAMETERS_FILE[param]["value"])
    match = re.fullmatch(r"\$\{([A-Z0-9_]+)(?:=[^}]*)?\}", value)
    assert match, f"{param} is not mapped to an azd environment variable: {value!r}"
    return match.group(1)


def _section(title: str) -> str:
    """The text under a Markdown heading of infra/README.md, up to the next heading of the same or a higher level
    (lines inside ``` fences are never headings: shell comments start with # too)."""
    level = len(title.split(" ", 1)[0])
    lines, inside, fenced = [], False, False
    for line in README.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = not fenced and re.match(r"(#+) ", line)
        if inside and heading and len(heading.group(1)) <= level:
            break
        if inside:
            lines.append(line)
        inside = inside or line == title
    assert inside, f"infra/README.md has no {title!r} section"
    return "\n".join(lines)


# ---- 1. site configuration Flex accepts ----------------------------------------------------------------------------


def test_the_site_uses_nothing_flex_consumption_rejects():
    _, site = function_app()
    props = body(site)["properties"]
    site_config = props["siteConfig"]
    assert not FLEX_DEPRECATED_SITE_CONFIG & set(site_config), set(site_config) & FLEX_DEPRECATED_SITE_CONFIG
    assert not FLEX_DEPRECATED_SITE_PROPERTIES & set(props), set(props) & FLEX_DEPRECATED_SITE_PROPERTIES
    assert not FLEX_DEPRECATED_APP_SETTINGS & set(app_settings())
    # FTP stays off without ftpsState: basic publishing credentials are disabled for both endpoints.
    policies = {
        body(r)["name"]: body(r)["properties"]["allow"]
        for r in resources(
            parse(INFRA / "app" / "api.bicep"), "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
        ).values()
    }
    assert policies == {"ftp": False, "scm": False}


# ---- 2. HTTP concurrency ----------------------------------------------------------------------------------------


def test_http_per_instance_concurrency_is_set_deliberately():
    param = _main_params()["httpPerInstanceConcurrency"]
    marks = decorators(param)
    assert param["type"] == "int" and marks.get("min_value") == 1 and marks.get("max_value") == 1000
    # Flex's default for Python is 1: a stream or a `Prefer: wait` request would hold a whole instance.
    assert param["default"] > 1
    assert (
        module_calls(parse(MAIN))["app/api.bicep"]["params"]["httpPerInstanceConcurrency"]
        == "httpPerInstanceConcurrency"
    )
    _, site = function_app()
    scale = body(site)["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    assert scale["triggers"] == {"http": {"perInstanceConcurrency": "httpPerInstanceConcurrency"}}
    variable = _mapped_variable("httpPerInstanceConcurrency")
    assert f"`httpPerInstanceConcurrency` (`{variable}`) | {param['default']} |" in README
    assert f"`httpPerInstanceConcurrency` is set to\n**{param['default']}**" in README, (
        "the README's HTTP concurrency section must state the deployed default"
    )


# ---- 3. rotation steps against the roles the template grants ------------------------------------------------------

# What each `az keyvault secret` verb needs on the data plane, and the built-in roles that allow it.
SECRET_READ = {"Key Vault Secrets User", "Key Vault Secrets Officer", "Key Vault Administrator"}
SECRET_WRITE = {"Key Vault Secrets Officer", "Key Vault Administrator"}
SECRET_VERBS = {
    "show": SECRET_READ,
    "list": SECRET_READ,
    "download": SECRET_READ,
    "list-versions": SECRET_READ,
    "set": SECRET_WRITE,
    "delete": SECRET_WRITE,
    "purge": SECRET_WRITE,
    "recover": SECRET_WRITE,
    "set-attributes": SECRET_WRITE,
    "backup": SECRET_WRITE,
    "restore": SECRET_WRITE,
}


COMMAND = re.compile(r"\b(?:az keyvault secret [\w-]+|azd env config unset \S+|azd env set [A-Z0-9_]+)")


def _commands(text: str) -> list[list[str]]:
    """The `az keyvault secret ...`, `azd env config unset ...` and `azd env set ...` commands in the fenced bash
    blocks of `text` (comments removed; also inside $(...)), as word lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            code = re.split(r"(?:^|\s)#\s", line, maxsplit=1)[0]
            commands += [match.split() for match in COMMAND.findall(code)]
    return commands


def _granted_roles_on_vault(main_param: str) -> set[str]:
    by_id = {role_id: name for name, role_id in ROLES.items()}
    return {by_id[i] for a in assignments_to(main_param) if a.scope_type == VAULT for i in a.role_ids if i in by_id}


def test_every_key_vault_secret_command_in_the_readme_is_allowed_to_the_deploying_principal():
    commands = [c for c in _commands(README) if c[:3] == ["az", "keyvault", "secret"]]
    assert any(c[3] == "show" for c in commands), "the rotation procedure reads the current webhook secret"
    granted = _granted_roles_on_vault("principalId")
    assert "Key Vault Secrets User" in granted
    for command in commands:
        needed = SECRET_VERBS[command[3]]
        assert granted & needed, (
            f"`{' '.join(command[:4])}` needs one of {sorted(needed)} on the vault, but the "
            f"template grants principalId only {sorted(granted)} (403)"
        )


def test_rotation_steps_name_parameters_and_variables_of_the_template():
    rotation = _section("### Rotation")
    params = _main_params()
    commands = _commands(rotation)
    unset = [c[4] for c in commands if c[:4] == ["azd", "env", "config", "unset"]]
    assert {"infra.parameters.runTokenKey", "infra.parameters.webhookSecretMaterial"} <= set(unset)
    for key in unset:
        name = key.removeprefix("infra.parameters.")
        meta = (decorators(params[name]).get("metadata") or {}).get("azd", {})
        assert meta.get("type") == "generate", f"`azd env config unset {key}`: {name} is not generated by azd"
    variables = {_mapped_variable(p): p for p in PARAMETERS_FILE}
    set_vars = [c[3] for c in commands if c[:3] == ["azd", "env", "set"]]
    assert {"AZURE_WEBHOOK_PREVIOUS_SECRET", "AZURE_RUN_TOKEN_PREVIOUS_KEY"} <= set(set_vars)
    for variable in set_vars:
        assert variable in variables, f"`azd env set {variable}` sets nothing main.parameters.json reads"
    # The gap-free steps: Key Vault gets the new and the previous secret (key), both through the template.
    kv_params = module_calls(parse(MAIN))["app/keyvault.bicep"]["params"]
    for kv_param, previous in (
        ("webhookSigningSecrets", "AZURE_WEBHOOK_PREVIOUS_SECRET"),
        ("runTokenKey", "AZURE_RUN_TOKEN_PREVIOUS_KEY"),
    ):
        assert variables[previous] in json.dumps(kv_params[kv_param]), f"{kv_param} leaves out {previous}"
        assert "secure" in decorators(params[variables[previous]])


# ---- 4. azd down + azd up ----------------------------------------------------------------------------------------


def test_key_vault_purge_protection_is_a_parameter_that_never_sends_false():
    param = _main_params()["keyVaultPurgeProtection"]
    assert param["type"] == "bool" and param["default"] is False  # dev environments: the name frees up at once
    assert module_calls(parse(MAIN))["app/keyvault.bicep"]["params"]["purgeProtection"] == "keyVaultPurgeProtection"
    vault = next(iter(resources(parse(INFRA / "app" / "keyvault.bicep"), VAULT).values()))
    props = body(vault)["properties"]
    assert props["enableSoftDelete"] is True
    # ARM refuses enablePurgeProtection: false (also on a vault that never had it): true or absent only.
    assert props["enablePurgeProtection"] == {
        "operator": {
            "type": "conditional",
            "operands": {"condition": "purgeProtection", "true_value": True, "false_value": None},
        }
    }
    assert _mapped_variable("keyVaultPurgeProtection") == "KEY_VAULT_PURGE_PROTECTION"
    teardown = _section("## Tear down and re-create")
    assert "azd down --purge" in teardown and "az keyvault recover" in teardown
    assert "az cognitiveservices account recover" in teardown  # the Azure OpenAI account's 48 h soft delete


# ---- 6. regions --------------------------------------------------------------------------------------------------


def test_location_offers_only_flex_consumption_regions():
    param = _main_params()["location"]
    marks = decorators(param)
    allowed = marks.get("allowed") or []
    assert (marks.get("metadata") or {}).get("azd", {}).get("type") == "location"
    assert {"eastus", "eastus2", "northeurope", "swedencentral", "westus2", "uksouth"} <= set(allowed)
    assert all(re.fullmatch(r"[a-z0-9]+", region) and "euap" not in region for region in allowed), allowed
    assert PARAMETERS_FILE["location"]["value"] == "${AZURE_LOCATION}"
    for region in re.findall(r"AZURE_LOCATION (\w+)", README):
        assert region in allowed, f"infra/README.md deploys to {region}, which location does not allow"
    assert "az cognitiveservices model list" in _section("### Choosing a model that is still deployable")


# ---- 7. secrets in CI ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["runTokenKey", "webhookSecretMaterial"])
def test_generated_secrets_reach_ci_under_the_documented_names(param):
    variable = _mapped_variable(param)
    ci = _section("### CI/CD (`azd pipeline config`)")
    assert f"{variable}: ${{{{ secrets.{variable} }}}}" in ci, f"the workflow example does not pass {variable}"
    assert f"`{param}` (`{variable}`)" in README
