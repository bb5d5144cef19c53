"""Refuse to provision an Azure OpenAI account in a region without the Responses API (the service's runs need it).

azd runs this before every provision (azure.yaml `hooks.preprovision`; a failure stops `azd provision` / `azd up`
before anything is created); by hand, from the repository root: `python -m infra.hooks.openai_region`.

The account the template creates lives in AZURE_OPENAI_LOCATION, or AZURE_LOCATION when that is empty
(main.bicep `openAiLocation`), and `location` allows every Flex Consumption region, several of which have no
Responses API. The regions that have it are data, with the page and date they were read from:
infra/responses-api-regions.json. With AZURE_OPENAI_EXISTING_ENDPOINT no account is created and nothing is
checked (that account's region is yours). When Microsoft adds a region before the file does,
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


def documented_regions() -> dict:
    return json.loads(REGIONS_FILE.read_text(encoding="utf-8"))


def refusal(env: Mapping[str, str], documented: dict) -> str | None:
    """Why these azd environment values would put the new Azure OpenAI account where the Responses API is not
    offered, or None."""
    if (env.get("AZURE_OPENAI_EXISTING_ENDPOINT") or "").strip():
        return None
    region = ((env.get("AZURE_OPENAI_LOCATION") or "").strip() or (env.get("AZURE_LOCATION") or "").strip()).lower()
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
