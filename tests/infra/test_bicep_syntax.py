"""Every Bicep file parses (pycep-parser: syntax only, offline) and the azd wiring is consistent."""
from __future__ import annotations

import json

import pytest

from .bicep_model import INFRA, MAIN, REPO, bicep_files, module_calls, parse


def test_the_expected_templates_exist():
    names = {p.relative_to(INFRA).as_posix() for p in bicep_files()}
    assert {"main.bicep", "app/api.bicep", "app/storage.bicep", "app/keyvault.bicep", "app/rbac.bicep",
            "app/openai.bicep", "app/openai-rbac.bicep"} <= names


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_parses(path):
    tree = parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{path.name}: no resources or modules"


def test_local_modules_exist_and_get_only_declared_params():
    for rel, call in module_calls(parse(MAIN)).items():
        target = INFRA / rel
        assert target.exists(), f"main.bicep calls missing module {rel}"
        declared = parse(target).get("parameters") or {}
        unknown = set(call["params"]) - set(declared)
        assert not unknown, f"main.bicep passes undeclared params {sorted(unknown)} to {rel}"
        missing = {name for name, p in declared.items() if p.get("default") is None and name not in call["params"]}
        assert not missing, f"main.bicep does not pass required params {sorted(missing)} to {rel}"


def test_parameters_file_matches_main_bicep():
    params = parse(MAIN)["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(given) <= set(params), f"unknown parameters in main.parameters.json: {set(given) - set(params)}"
    for name, param in params.items():
        decorators = {d["type"]: d.get("argument") for d in param.get("decorators", [])}
        azd = (decorators.get("metadata") or {}).get("azd", {})
        if "secure" in decorators:
            # azd only generates (and remembers) a value for a parameter that is absent from the parameters file
            # and has no default; a default built from newGuid() would rotate the secret on every provision.
            assert name not in given, f"secure parameter {name} must not be in main.parameters.json"
            assert param.get("default") is None, f"secure parameter {name} must not have a default"
            assert azd.get("type") == "generate", f"secure parameter {name} needs azd generate metadata"
        elif param.get("default") is None:
            assert name in given, f"required parameter {name} is neither in main.parameters.json nor defaulted"


def test_azure_yaml_deploys_the_repo_root_as_a_python_function():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((REPO / "azure.yaml").read_text())
    services = doc["services"]
    assert len(services) == 1
    (service,) = services.values()
    assert service == {"project": ".", "language": "python", "host": "function"}
    assert (REPO / "infra" / "main.bicep").exists() and (REPO / "infra" / "main.parameters.json").exists()
