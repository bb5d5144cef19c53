"""infra/README.md against the code it describes: what storage.bicep creates, which secrets the app reads from Key
Vault, and a smoke test that shows what its comments claim and runs the script `make test` checks."""

from __future__ import annotations

import json
import re
from itertools import pairwise

from .bicep_model import INFRA, app_settings, child_names, parse

README = (INFRA / "README.md").read_text(encoding="utf-8")
STORAGE = "Microsoft.Storage/storageAccounts"


def _row(file: str) -> str:
    return next(line for line in README.splitlines() if line.startswith(f"| `{file}` |"))


def _section(title: str) -> str:
    start = README.index(title)
    return README[start : README.index("\n## ", start + 1)]


def test_the_storage_row_names_every_queue_table_and_container_storage_bicep_creates():
    tree, row = parse(INFRA / "app" / "storage.bicep"), _row("app/storage.bicep")
    names = (
        child_names(tree, f"{STORAGE}/queueServices/queues")
        | child_names(tree, f"{STORAGE}/tableServices/tables")
        | child_names(tree, f"{STORAGE}/blobServices/containers")
    )
    literal = {name for name in names if re.fullmatch(r"[a-z0-9-]+", name)}  # not the computed deployment container
    assert {"runs-execute", "runindex", "runevents", "run-payloads"} <= literal
    for name in literal:
        mentioned = f"`{name}`" in row or (
            name.endswith("-poison") and f"`{name[: -len('-poison')]}`" in row and "`-poison` queues" in row
        )
        assert mentioned, f"infra/README.md's storage.bicep row does not name {name}"


def test_the_key_vault_cost_row_names_every_secret_the_app_reads():
    references = sorted(name for name, value in app_settings().items() if "@Microsoft.KeyVault(" in json.dumps(value))
    assert len(references) == 4
    row = next(line for line in README.splitlines() if line.startswith("| Key Vault (standard) |"))
    assert "three secrets" in row and "four once the provider webhook is registered" in row
    for name in references:
        assert f"`{name}`" in row, f"the Key Vault row does not name {name}"


def test_the_smoke_test_runs_the_checked_script_and_its_curls_show_what_they_claim():
    section = _section("## Smoke test after `azd up`")
    assert '.venv/bin/python -m infra.smoke "$AZURE_FUNCTION_APP_URL"' in section
    assert "export SMOKE_API_KEY=" in section and "export SMOKE_FUNCTION_KEY=" in section
    lines = re.sub(r"\\\n\s*", " ", section).splitlines()  # one line per command
    shown = 0
    for before, line in pairwise(lines):
        # A status line or a header claimed for a curl (in its comment, or the comment line after it) needs -i.
        claim = before.startswith("curl") and (re.search(r"#.*(202|Location:)", before) or line.startswith("# HTTP/"))
        if claim:
            shown += 1
            assert re.search(r"\s-s? ?-i\b|\s-i\b", before), f"shows no status or headers without -i: {before}"
    assert shown and 'echo "$RUN"' not in section
