"""No Azure OpenAI account where the Responses API is not offered (infra/hooks/openai_region.py before every provision,
the documented regions as data in infra/responses-api-regions.json), and the pairing it checks is the template's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import date

import pytest
import yaml

from infra.hooks import openai_region as hook

from .bicep_model import INFRA, MAIN, REPO, all_module_calls, decorators, module_calls, parse, variables

DOCUMENTED = hook.documented_regions()
PARAMETERS = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
FLEX_REGIONS = decorators(parse(MAIN)["parameters"]["location"])["allowed"]


def test_the_regions_are_data_with_their_source_and_dates():
    assert DOCUMENTED["source"].startswith("https://learn.microsoft.com/") and "responses" in DOCUMENTED["source"]
    assert date.fromisoformat(DOCUMENTED["documented"]) <= date.fromisoformat(DOCUMENTED["checked"])
    regions = DOCUMENTED["regions"]
    assert regions == sorted(set(regions)) and all(re.fullmatch(r"[a-z0-9]+", r) for r in regions)
    assert {"eastus2", "swedencentral"} <= set(regions) and "westeurope" not in regions


@pytest.mark.parametrize("region", FLEX_REGIONS)
def test_every_flex_region_is_refused_for_the_account_exactly_when_it_lacks_the_responses_api(region):
    problem = hook.refusal({"AZURE_LOCATION": region}, DOCUMENTED)
    if region in DOCUMENTED["regions"]:
        assert problem is None
    else:
        assert problem and f"created in {region}" in problem and "azd env set AZURE_OPENAI_LOCATION" in problem
        # The app may stay there, with the account elsewhere; or an existing account is used.
        assert hook.refusal({"AZURE_LOCATION": region, "AZURE_OPENAI_LOCATION": "swedencentral"}, DOCUMENTED) is None
        assert (
            hook.refusal(
                {"AZURE_LOCATION": region, "AZURE_OPENAI_EXISTING_ENDPOINT": "https://x.openai.azure.com/"}, DOCUMENTED
            )
            is None
        )


def test_an_account_region_without_the_responses_api_is_refused_wherever_the_app_is():
    problem = hook.refusal({"AZURE_LOCATION": "eastus2", "AZURE_OPENAI_LOCATION": "WestEurope"}, DOCUMENTED)
    assert problem and "westeurope (AZURE_OPENAI_LOCATION)" in problem


def test_the_pairing_checked_is_the_templates():
    """The account is created unless an existing endpoint is given, in openAiLocation or else location, and those
    parameters come from the azd environment variables the hook reads."""
    tree = parse(MAIN)
    call = module_calls(tree)["app/openai.bicep"]
    assert tree["modules"][call["symbol"]]["config"]["condition"] == "createOpenAi"
    assert variables(tree)["createOpenAi"]["function"] == {
        "type": "empty",
        "parameters": {"item_to_test": "existingOpenAiEndpoint"},
    }
    assert call["params"]["location"]["operator"] == {
        "type": "conditional",
        "operands": {
            "condition": {"function": {"type": "empty", "parameters": {"item_to_test": "openAiLocation"}}},
            "true_value": "location",
            "false_value": "openAiLocation",
        },
    }
    assert PARAMETERS["location"]["value"] == "${AZURE_LOCATION}"
    assert PARAMETERS["openAiLocation"]["value"] == "${AZURE_OPENAI_LOCATION=}"
    assert PARAMETERS["existingOpenAiEndpoint"]["value"] == "${AZURE_OPENAI_EXISTING_ENDPOINT=}"


def test_the_second_account_needs_the_responses_api_and_another_region_than_the_first():
    ok = {"AZURE_LOCATION": "eastus2", hook.SPILLOVER_VAR: "swedencentral"}
    assert hook.refusal(ok, DOCUMENTED) is None
    problem = hook.refusal({**ok, hook.SPILLOVER_VAR: "WestEurope"}, DOCUMENTED)
    assert problem and f"second Azure OpenAI account would be created in westeurope ({hook.SPILLOVER_VAR})" in problem
    # Its own region: the same one would share the first account's regional quota and its outages.
    same = hook.refusal({**ok, hook.SPILLOVER_VAR: "eastus2"}, DOCUMENTED)
    assert same and "the first account's region" in same
    moved = {**ok, "AZURE_OPENAI_LOCATION": "swedencentral"}
    assert "the first account's region" in (hook.refusal(moved, DOCUMENTED) or "")
    assert hook.refusal({**moved, hook.SPILLOVER_VAR: "eastus2"}, DOCUMENTED) is None
    # With an existing first account its region is unknown here: only the Responses API is checked.
    existing = {**ok, "AZURE_OPENAI_EXISTING_ENDPOINT": "https://x.openai.azure.com/", hook.SPILLOVER_VAR: "eastus2"}
    assert hook.refusal(existing, DOCUMENTED) is None
    # Both accounts wrong: both named.
    both = hook.refusal({"AZURE_LOCATION": "westeurope", hook.SPILLOVER_VAR: "northeurope"}, DOCUMENTED)
    assert both and "created in westeurope" in both and "created in northeurope" in both


def test_the_second_accounts_region_checked_is_the_templates():
    call = next(c for c in all_module_calls(parse(MAIN)) if c["symbol"] == "openAiSpillover")
    assert call["path"] == "app/openai.bicep" and call["condition"] == "createSpillover"
    assert call["params"]["location"] == "spilloverOpenAiLocation"
    assert PARAMETERS["spilloverOpenAiLocation"]["value"] == f"${{{hook.SPILLOVER_VAR}=}}"


def test_azd_runs_it_before_every_provision_and_stops_on_a_refusal():
    hooks = yaml.safe_load((REPO / "azure.yaml").read_text())["hooks"]["preprovision"]
    for shell in ("posix", "windows"):
        assert "-m infra.hooks.openai_region" in hooks[shell]["run"]
        assert hooks[shell].get("continueOnError", False) is False


@pytest.mark.parametrize(
    "env, code",
    [
        ({"AZURE_LOCATION": "westeurope"}, 1),
        ({"AZURE_LOCATION": "westeurope", hook.SWITCH_VAR: "off"}, 0),
        ({"AZURE_LOCATION": "eastus2"}, 0),
    ],
)
def test_the_hook_exits_non_zero_on_a_refusal(env, code):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    result = subprocess.run(
        [sys.executable, "-m", "infra.hooks.openai_region"],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == code, result.stderr
    assert ("ERROR: " in result.stderr) == (code == 1)


def test_the_readme_deploys_to_a_region_it_allows():
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    for region in re.findall(r"azd env set AZURE_LOCATION (\w+)", readme):
        assert hook.refusal({"AZURE_LOCATION": region}, DOCUMENTED) is None, region
    for region in re.findall(r"azd env set AZURE_OPENAI_LOCATION (\w+)", readme):
        assert region in DOCUMENTED["regions"], region


def test_the_readme_names_the_flex_regions_without_the_responses_api():
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    missing = ", ".join(region for region in FLEX_REGIONS if region not in DOCUMENTED["regions"])
    assert f"not in\n{missing}." in readme or f"not in {missing}." in readme.replace("\n", " ")
