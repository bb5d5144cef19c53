"""The optional second Azure OpenAI account (main.bicep `spilloverOpenAiLocation`): nothing extra by default; when set,
the first account's model in another region with its own capacity, the same roles as on the first, the app setting
PROVIDER_DEPLOYMENTS listing both (the first before it), and the output the provider webhook hook reads to register
on both resources."""

from __future__ import annotations

import json
import re

import pytest

from infra.hooks import openai_region
from infra.hooks import provider_webhook as hook
from shared import settings as service_settings

from .bicep_model import INFRA, MAIN, ROLES, all_module_calls, app_settings, assignments_to, parse, variables

PARAMETERS = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
OPENAI_ACCOUNT = "Microsoft.CognitiveServices/accounts"


def _calls(path: str) -> dict[str, dict]:
    return {call["symbol"]: call for call in all_module_calls(parse(MAIN)) if call["path"] == path}


def _conditional(node) -> dict:
    assert isinstance(node, dict) and node.get("operator", {}).get("type") == "conditional", node
    return node["operator"]["operands"]


def _module_output(node) -> tuple[str, str]:
    """(module symbol, output name) of `symbol.outputs.name`."""
    operands = node["operator"]["operands"]
    inner = operands["operand_2"]["operator"]["operands"]
    assert inner["operand_1"] == "outputs", node
    return operands["operand_1"], inner["operand_2"]


def test_the_default_creates_no_second_account():
    tree = parse(MAIN)
    param = tree["parameters"]["spilloverOpenAiLocation"]
    assert (
        param["default"] == ""
        and PARAMETERS["spilloverOpenAiLocation"]["value"] == "${AZURE_OPENAI_SPILLOVER_LOCATION=}"
    )
    assert variables(tree)["createSpillover"] == {
        "operator": {
            "type": "not",
            "operands": {
                "bool_value": {"function": {"type": "empty", "parameters": {"item_to_test": "spilloverOpenAiLocation"}}}
            },
        }
    }
    accounts = _calls("app/openai.bicep")
    assert set(accounts) == {"openAi", "openAiSpillover"}, set(accounts)
    assert accounts["openAi"]["condition"] == "createOpenAi"  # as before: the one account of the default
    assert accounts["openAiSpillover"]["condition"] == "createSpillover"
    assert _calls("app/openai-rbac.bicep")["spilloverOpenAiRbac"]["condition"] == "createSpillover"
    # Without it the app's PROVIDER_DEPLOYMENTS is empty: one deployment, from AZURE_OPENAI_ENDPOINT.
    setting = _conditional(variables(tree)["providerDeploymentsSetting"])
    assert setting["condition"] == "createSpillover" and setting["false_value"] == ""


def test_the_second_account_is_the_first_ones_model_in_its_own_region_with_its_own_capacity():
    accounts = _calls("app/openai.bicep")
    first, second = accounts["openAi"]["params"], accounts["openAiSpillover"]["params"]
    for same in ("deploymentName", "modelName", "modelVersion", "deploymentSku", "tags"):
        assert second[same] == first[same], same
    assert second["location"] == "spilloverOpenAiLocation"
    assert second["deploymentCapacity"] == "spilloverOpenAiDeploymentCapacity"
    assert second["name"] != first["name"] and "resourceToken" in second["name"]
    # A custom subdomain (= the name) is at most 64 characters; resourceToken is 13.
    assert len(second["name"].replace("${resourceToken}", "x" * 13)) <= 64
    capacity = parse(MAIN)["parameters"]["spilloverOpenAiDeploymentCapacity"]
    assert (
        PARAMETERS["spilloverOpenAiDeploymentCapacity"]["value"]
        == f"${{AZURE_OPENAI_SPILLOVER_DEPLOYMENT_CAPACITY={capacity['default']}}}"
    )


def test_the_app_and_the_deploying_principal_get_the_same_roles_on_the_second_account():
    call = _calls("app/openai-rbac.bicep")["spilloverOpenAiRbac"]
    account = _conditional(call["params"]["openAiAccountName"])
    assert account["condition"] == "createSpillover"
    assert _module_output(account["true_value"]) == ("openAiSpillover", "name")
    assert call["params"]["managedIdentityPrincipalId"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "identity",
                "operand_2": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "outputs", "operand_2": "principalId"},
                    }
                },
            },
        }
    }
    assert call["params"]["userPrincipalId"] == "principalId"
    contributor = ROLES["Cognitive Services OpenAI Contributor"]
    assert any(
        a.file.name == "openai-rbac.bicep" and contributor in a.role_ids and a.scope_type == OPENAI_ACCOUNT
        for a in assignments_to("principalId")
    )
    # The app starts once its roles exist on both accounts.
    api = parse(MAIN)["modules"]["api"]["config"]
    assert {"rbac", "spilloverOpenAiRbac"} <= set(api["dependsOn"])


def _deployments_as_the_template_writes_them(first: str, second: str) -> list[dict]:
    """main.bicep's providerDeployments with its two expressions evaluated: the first account's endpoint (new or
    existing: the openAiEndpoint variable) and the second account's module output."""
    entries = variables(parse(MAIN))["providerDeployments"]
    assert len(entries) == 2 and entries[0]["endpoint"] == "openAiEndpoint"
    spill = _conditional(entries[1]["endpoint"])
    assert spill["condition"] == "createSpillover" and _module_output(spill["true_value"]) == (
        "openAiSpillover",
        "endpoint",
    )
    assert {e["deployment"] for e in entries} == {"openAiDeploymentName"}
    endpoints = {"primary": first, "spillover": second}
    return [{**e, "endpoint": endpoints[e["name"]], "deployment": "gpt-4.1-mini"} for e in entries]


def test_provider_deployments_lists_the_first_account_before_the_second_with_entra_id():
    entries = _deployments_as_the_template_writes_them(
        "https://cog-a.openai.azure.com/", "https://cog-spill-a.openai.azure.com/"
    )
    assert [(e["name"], e["priority"]) for e in entries] == [("primary", 0), ("spillover", 1)]
    for entry in entries:
        assert re.fullmatch(r"[a-z0-9-]{1,32}", entry["name"])
        assert entry["provider"] == "azure_openai" and entry["weight"] >= 1
        assert "api_key_setting" not in entry  # Microsoft Entra ID: the accounts have local auth off
    tree = parse(MAIN)
    setting = _conditional(variables(tree)["providerDeploymentsSetting"])
    assert setting["true_value"] == {
        "function": {"type": "string", "parameters": {"value_to_convert": "providerDeployments"}}
    }
    # The app setting and the output the hook reads are the same value.
    assert app_settings()["PROVIDER_DEPLOYMENTS"] == "providerDeployments"
    assert _calls("app/api.bicep")["api"]["params"]["providerDeployments"] == "providerDeploymentsSetting"
    assert tree["outputs"][hook.POOL_VAR]["value"] == "providerDeploymentsSetting"


def test_the_hook_registers_on_both_resources_the_template_lists():
    entries = _deployments_as_the_template_writes_them(
        "https://cog-a.openai.azure.com/", "https://cog-spill-a.openai.azure.com/"
    )
    assert hook.pool_resources(json.dumps(entries)) == [
        "https://cog-a.openai.azure.com",
        "https://cog-spill-a.openai.azure.com",
    ]
    assert hook.pool_resources("") == []  # the default: the hook registers on AZURE_OPENAI_ENDPOINT alone


def test_the_readme_shows_what_the_template_writes_and_a_region_the_check_allows():
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    start = readme.index("### A second Azure OpenAI account")
    section = readme[start : readme.index("\n### ", start + 1)]
    shown = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    written = _deployments_as_the_template_writes_them(
        "https://cog-<token>.openai.azure.com/", "https://cog-spill-<token>.openai.azure.com/"
    )
    assert shown == written
    for needle in (openai_region.SPILLOVER_VAR, "AZURE_OPENAI_SPILLOVER_DEPLOYMENT_CAPACITY", "postprovision", "quota"):
        assert needle in section, needle
    regions = re.findall(rf"azd env set {openai_region.SPILLOVER_VAR} (\w+)", readme)
    assert regions
    for region in regions:
        assert (
            openai_region.refusal(
                {"AZURE_LOCATION": "eastus2", openai_region.SPILLOVER_VAR: region}, openai_region.documented_regions()
            )
            is None
        )


def test_the_app_reads_the_value_the_template_writes():
    """Live once shared/settings declares PROVIDER_DEPLOYMENTS (issue #24, the pool): the template's JSON and its
    empty default must both pass the app's own parser."""
    declared = {s.name: s for s in service_settings.declared_settings()}
    if "PROVIDER_DEPLOYMENTS" not in declared:
        pytest.skip("shared/settings does not declare PROVIDER_DEPLOYMENTS yet")
    setting = declared["PROVIDER_DEPLOYMENTS"]
    assert setting.in_azure != "local" and not setting.secret
    written = _deployments_as_the_template_writes_them(
        "https://cog-a.openai.azure.com/", "https://cog-spill-a.openai.azure.com/"
    )
    assert len(setting.parse(json.dumps(written))) == 2
    assert not setting.parse("")  # one account: empty, the deployment of AZURE_OPENAI_ENDPOINT
