"""Every Bicep file parses (pycep-parser: syntax only, offline) and the azd wiring is consistent."""

from __future__ import annotations

import json
import re

import pytest

from shared import settings as service_settings

from .bicep_model import INFRA, MAIN, REPO, all_module_calls, bicep_files, decorators, parse


def test_the_expected_templates_exist():
    names = {p.relative_to(INFRA).as_posix() for p in bicep_files()}
    assert {
        "main.bicep",
        "app/api.bicep",
        "app/storage.bicep",
        "app/keyvault.bicep",
        "app/rbac.bicep",
        "app/openai.bicep",
        "app/openai-rbac.bicep",
    } <= names


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_parses(path):
    tree = parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{path.name}: no resources or modules"


def test_local_modules_exist_and_get_only_declared_params():
    for call in all_module_calls(parse(MAIN)):
        rel = call["path"]
        target = INFRA / rel
        assert target.exists(), f"main.bicep calls missing module {rel}"
        declared = parse(target).get("parameters") or {}
        unknown = set(call["params"]) - set(declared)
        assert not unknown, f"main.bicep passes undeclared params {sorted(unknown)} to {rel} ({call['symbol']})"
        missing = {name for name, p in declared.items() if p.get("default") is None and name not in call["params"]}
        assert not missing, f"main.bicep does not pass required params {sorted(missing)} to {rel} ({call['symbol']})"


ENV_REFERENCE = re.compile(r"^\$\{(?P<var>[A-Z][A-Z0-9_]*)(?:=(?P<default>[^}]*))?\}$")


def test_parameters_file_matches_main_bicep():
    params = parse(MAIN)["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(given) <= set(params), f"unknown parameters in main.parameters.json: {set(given) - set(params)}"
    app_settings = {s.name for s in service_settings.declared_settings()}
    for name, param in params.items():
        marks = decorators(param)
        azd = (marks.get("metadata") or {}).get("azd", {})
        if "secure" in marks:
            # One azd environment variable each, normally unset: azd then generates the value once (no default, a
            # `generate` tag) and remembers it, and `azd pipeline config` can carry it into CI as a secret of that
            # name. A `${VAR=default}` would stop the generation; a newGuid() default would rotate on every provision.
            match = ENV_REFERENCE.match(str((given.get(name) or {}).get("value", "")))
            assert match, f"secure parameter {name} must be mapped to exactly one ${{VARIABLE}} in main.parameters.json"
            assert match["var"] not in app_settings, (
                f"{name}: {match['var']} is an app setting name; a developer's local value would reach Azure"
            )
            if param.get("default") is None:
                assert match["default"] is None, f"{name}: a default in main.parameters.json stops azd generating it"
                assert azd.get("type") == "generate", f"secure parameter {name} needs azd generate metadata"
            else:
                assert param["default"] == "", f"secure parameter {name} may only default to empty"
        elif param.get("default") is None:
            assert name in given, f"required parameter {name} is neither in main.parameters.json nor defaulted"


def test_parameter_file_defaults_match_the_bicep_defaults():
    """`${VAR=default}` in main.parameters.json is what azd deploys; it must not drift from main.bicep's default."""
    params = parse(MAIN)["parameters"]
    for name, entry in json.loads((INFRA / "main.parameters.json").read_text())["parameters"].items():
        match = ENV_REFERENCE.match(str(entry.get("value")))
        default = params[name].get("default")
        if match and match["default"] not in (None, "") and isinstance(default, (str, int, bool)):
            expected = str(default).lower() if isinstance(default, bool) else str(default)
            assert match["default"] == expected, (
                f"{name}: main.parameters.json says {match['default']!r}, main.bicep {expected!r}"
            )


def test_azure_yaml_deploys_the_repo_root_as_a_python_function():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((REPO / "azure.yaml").read_text())
    services = doc["services"]
    assert len(services) == 1
    (service,) = services.values()
    assert service == {"project": ".", "language": "python", "host": "function"}
    assert (REPO / "infra" / "main.bicep").exists() and (REPO / "infra" / "main.parameters.json").exists()


def test_azure_yaml_requires_an_azd_that_understands_the_template():
    """.funcignore is applied from azd 1.18.0 (Azure/azure-dev#5383; before it .local/secrets.env, tests/ and
    node_modules/ are uploaded); `generate` metadata needs 1.8.0, `azd pipeline config` carrying it 1.16.0."""
    yaml = pytest.importorskip("yaml")
    required = yaml.safe_load((REPO / "azure.yaml").read_text())["requiredVersions"]["azd"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)\.(\d+)", required.strip())
    assert match, f"requiredVersions.azd should be a lower bound like '>= 1.18.0', got {required!r}"
    assert tuple(map(int, match.groups())) >= (1, 18, 0), "azd before 1.18.0 ignores .funcignore"
    assert (REPO / ".funcignore").is_file()
    uses_generate = any(
        (decorators(p).get("metadata") or {}).get("azd", {}).get("type") == "generate"
        for p in parse(MAIN)["parameters"].values()
    )
    assert uses_generate, "no generate metadata left: revisit the azd lower bound"
