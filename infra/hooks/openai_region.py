"""Refuse to provision an Azure OpenAI account in a region without the Responses API (the service's runs need it).

azd runs this before every provision (azure.yaml `hooks.preprovision`; a failure stops `azd provision` / `azd up`
before anything is created); by hand, from the repository root: `python -m infra.hooks.openai_region`.

The account the template creates lives in AZURE_OPENAI_LOCATION, or AZURE_LOCATION when that is empty
(main.bicep `openAiLocation`), and `location` allows every Flex Consumption region, several of which have no
Responses API. The regions that have it are data, with the page and date they were read from:
infra/responses-api-regions.json. With AZURE_OPENAI_EXISTING_ENDPOINT no account is created and nothing is
checked (that account's region is yours). The optional second account (AZURE_OPENAI_SPILLOVER_LOCATION, main.bicep
`spilloverOpenAiLocation`) needs the Responses API too, and a region other than the first account's: in the same
region it would share that account's regional quota and outage. When Microsoft adds a region before the file does,
AZURE_OPENAI_REGION_CHECK=off provisions anyway (and please update the file). Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

REGIONS_FILE = Path(__file__).resolve().parents[1] / "responses-api-regions.json"
SWITCH_VAR = "AZURE_OPENAI_REGION_CHECK"
SPILLOVER_VAR = "AZURE_OPENAI_SPILLOVER_LOCATION"


def documented_regions() -> dict:
    return json.loads(REGIONS_FILE.read_text(encoding="utf-8"))


def _value(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip().lower()


def refusal(env: Mapping[str, str], documented: dict) -> str | None:
    """Why these azd environment values would put a new Azure OpenAI account where the Responses API is not
    offered, or the second account in the first one's region; None when they would not."""
    problems = [p for p in (_first_account(env, documented), _spillover_account(env, documented)) if p]
    return "\n".join(problems) or None


def _first_region(env: Mapping[str, str]) -> str:
    """Where the template creates the first account (main.bicep `openAiLocation`, else `location`); '' when it
    creates none (an existing endpoint)."""
    if _value(env, "AZURE_OPENAI_EXISTING_ENDPOINT"):
        return ""
    return _value(env, "AZURE_OPENAI_LOCATION") or _value(env, "AZURE_LOCATION")


def _first_account(env: Mapping[str, str], documented: dict) -> str | None:
    region = _first_region(env)
    if not region or region in documented["regions"]:
        return None
    which = (
        "AZURE_OPENAI_LOCATION"
        if (env.get("AZURE_OPENAI_LOCATION") or "").strip()
        else "AZURE_LOCATION; AZURE_OPENAI_LOCATION is empty"
    )
    return (
        f"The Azure OpenAI account would be created in {region} ({which}), where Azure OpenAI does not offer the "
        f"Responses API that this service's runs use (background mode). Regions that offer it, per "
        f"{documented['source']} (documented {documented['documented']}, checked {documented['checked']}): "
        f"{', '.join(documented['regions'])}.\n"
        "Pick one for the account and keep the app where it is:  azd env set AZURE_OPENAI_LOCATION <region>\n"
        "or use an account you have:  azd env set AZURE_OPENAI_EXISTING_ENDPOINT https://<name>.openai.azure.com/\n"
        f"If Microsoft now lists {region}: azd env set {SWITCH_VAR} off (and update {REGIONS_FILE.name})."
    )


def _spillover_account(env: Mapping[str, str], documented: dict) -> str | None:
    region = _value(env, SPILLOVER_VAR)
    if not region:
        return None
    if region not in documented["regions"]:
        return (
            f"The second Azure OpenAI account would be created in {region} ({SPILLOVER_VAR}), where Azure OpenAI does "
            f"not offer the Responses API. Regions that offer it, per {documented['source']}: "
            f"{', '.join(documented['regions'])}.\n"
            f"Pick one of them other than the first account's:  azd env set {SPILLOVER_VAR} <region>\n"
            f"or do without the second account:  azd env set {SPILLOVER_VAR} ''\n"
            f"If Microsoft now lists {region}: azd env set {SWITCH_VAR} off (and update {REGIONS_FILE.name})."
        )
    if region == _first_region(env):
        return (
            f"The second Azure OpenAI account would be created in {region} ({SPILLOVER_VAR}), the first account's "
            "region: it would share that account's regional quota and its outages, so it could not take the runs "
            f"the first cannot. Pick another region with the Responses API:  azd env set {SPILLOVER_VAR} <region>"
        )
    return None


def main(env: Mapping[str, str] = os.environ) -> int:
    if (env.get(SWITCH_VAR) or "").strip().lower() == "off":
        print(f"{SWITCH_VAR}=off: the Azure OpenAI region is not checked.", file=sys.stderr)
        return 0
    problem = refusal(env, documented_regions())
    if problem:
        print(f"ERROR: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
