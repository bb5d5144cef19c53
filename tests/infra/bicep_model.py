"""Reads the Bicep templates in infra/ with pycep-parser (syntax tree only, offline) for the infra tests."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
MAIN = INFRA / "main.bicep"

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
INTERPOLATION = re.compile(r"\$\{([^}]*)\}")

# Built-in role definition ids (Azure docs "Azure built-in roles").
ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Key Vault Administrator": "00482a5a-887f-4fb3-b363-3b7fe8e74483",
    "Cognitive Services OpenAI User": "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
    "Cognitive Services OpenAI Contributor": "a001fd3d-188f-4b5d-821b-7da978bf7442",
}


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@cache
def parse(path: Path) -> dict[str, Any]:
    tree = BicepParser().parse(text=path.read_text(encoding="utf-8"))
    if not isinstance(tree, dict):
        raise AssertionError(f"{path}: pycep returned {type(tree).__name__}")
    return tree


def resources(tree: dict[str, Any], type_: str | None = None) -> dict[str, dict[str, Any]]:
    found = tree.get("resources") or {}
    return {name: res for name, res in found.items() if type_ is None or res["type"].lower() == type_.lower()}


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource body; pycep nests it one level deeper under a condition (`= if (...) {...}`)."""
    config = resource["config"]
    if "loop_type" in config or config.get("condition") is not None:
        return config["config"]
    return config


def is_conditional(resource: dict[str, Any]) -> bool:
    return resource["config"].get("condition") is not None


def child_names(tree: dict[str, Any], type_: str) -> set[str]:
    """Literal names of the child resources of one type, expanding `for x in <array var>` loops."""
    vars_ = variables(tree)
    names: set[str] = set()
    for res in resources(tree, type_).values():
        loop = res["config"].get("loop_type")
        if loop:
            array = loop["detail"]["array_name"]
            names.update(v for v in vars_[array] if isinstance(v, str))
        else:
            names.add(body(res)["name"])
    return names


def leaves(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for value in node.values():
            yield from leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from leaves(value)
    else:
        yield node


def string_literals(node: Any, variables: dict[str, Any]) -> set[str]:
    """Every string an expression can evaluate to, with `var` references (and `var.key`) resolved."""
    out: set[str] = set()

    def visit(n: Any) -> None:
        if isinstance(n, dict):
            op = n.get("operator")
            if isinstance(op, dict) and op.get("type") == "property_accessor":
                operands = op["operands"]
                base, key = operands.get("operand_1"), operands.get("operand_2")
                if isinstance(base, str) and base in variables and isinstance(variables[base], dict):
                    visit(variables[base].get(key))
                    return
            for value in n.values():
                visit(value)
        elif isinstance(n, list):
            for value in n:
                visit(value)
        elif isinstance(n, str):
            out.add(n)
            if n in variables:
                visit(variables[n])

    visit(node)
    return out


def variables(tree: dict[str, Any]) -> dict[str, Any]:
    return {name: var["value"] for name, var in (tree.get("variables") or {}).items()}


@dataclass(frozen=True)
class RoleAssignment:
    file: Path
    symbol: str
    role_ids: frozenset[str]
    principal: Any
    scope_symbol: Any
    scope_type: str | None
    conditional: bool


def role_assignments() -> list[RoleAssignment]:
    found = []
    for path in bicep_files():
        tree = parse(path)
        vars_ = variables(tree)
        all_resources = resources(tree)
        for symbol, res in resources(tree, "Microsoft.Authorization/roleAssignments").items():
            b = body(res)
            props = b.get("properties", {})
            role_ids = {s.lower() for s in string_literals(props.get("roleDefinitionId"), vars_) if GUID.match(s)}
            scope = b.get("scope")
            scope_type = all_resources[scope]["type"] if isinstance(scope, str) and scope in all_resources else None
            found.append(
                RoleAssignment(
                    path, symbol, frozenset(role_ids), props.get("principalId"), scope, scope_type, is_conditional(res)
                )
            )
    return found


def assignments_to(main_param: str) -> list[RoleAssignment]:
    """Role assignments whose principal main.bicep wires to its own parameter `main_param` (e.g. principalId)."""
    calls = module_calls(parse(MAIN))
    found = []
    for assignment in role_assignments():
        call = calls.get(assignment.file.relative_to(INFRA).as_posix())
        if (
            call is not None
            and isinstance(assignment.principal, str)
            and call["params"].get(assignment.principal) == main_param
        ):
            found.append(assignment)
    return found


def decorators(param: dict[str, Any]) -> dict[str, Any]:
    """A parameter's decorators by type (`secure`, `allowed`, `min_value`, `metadata`, ...) -> argument."""
    return {d["type"]: d.get("argument") for d in param.get("decorators", [])}


def all_module_calls(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Every local module call of a template, in declaration order: the file it calls (`path`), its `symbol`, its
    `params`, its `condition` (None when unconditional) and whether it is `conditional`."""
    calls = []
    for symbol, module in (tree.get("modules") or {}).items():
        if module.get("type") != "local":
            continue
        config = module["config"]
        condition = config.get("condition")
        b = config["config"] if condition is not None else config
        calls.append(
            {
                "path": module["detail"]["path"],
                "symbol": symbol,
                "params": b.get("params", {}),
                "condition": condition,
                "conditional": condition is not None,
            }
        )
    return calls


def module_calls(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Local module calls of a template, keyed by the module file they call; a file called more than once (the
    second Azure OpenAI account) by its first call: all_module_calls() has the others."""
    calls: dict[str, dict[str, Any]] = {}
    for call in all_module_calls(tree):
        calls.setdefault(call["path"], call)
    return calls


def function_app() -> tuple[Path, dict[str, Any]]:
    sites = [
        (p, res)
        for p in bicep_files()
        for res in resources(parse(p), "Microsoft.Web/sites").values()
        if not res.get("existing")
    ]
    assert len(sites) == 1, f"expected exactly one Microsoft.Web/sites resource, found {len(sites)}"
    return sites[0]


def app_settings() -> dict[str, Any]:
    """name -> value expression of the Function App's app settings (siteConfig.appSettings)."""
    _, site = function_app()
    settings = body(site)["properties"]["siteConfig"]["appSettings"]
    assert isinstance(settings, list), "siteConfig.appSettings must be a literal list of {name, value}"
    out: dict[str, Any] = {}
    for entry in settings:
        name = entry["name"]
        assert isinstance(name, str) and "${" not in name, f"app setting name must be a literal: {name!r}"
        assert name not in out, f"app setting {name} is set twice"
        out[name] = entry["value"]
    return out


# ---- what the deployed Python touches ---------------------------------------------------------------------------


def deployed_python_files() -> list[Path]:
    files = [REPO / "function_app.py"] if (REPO / "function_app.py").exists() else []
    return files + sorted((REPO / "shared").rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names
