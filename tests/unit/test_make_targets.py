"""`make run` installs only what it runs; `make test` adds the test-only tools (Makefile, requirements-*.txt).

The Makefile is read with `make -n -B` (print every command a target would run, as if nothing were installed;
nothing is executed), and what `make run` imports is checked against what requirements-local.txt installs."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
TEST_ONLY = ("checkov", "litellm", "apt-get", "chromium", "requirements-dev.txt", "pytest", "playwright")
TEST_ONLY_PACKAGES = {"pytest", "playwright", "schemathesis", "hypothesis", "checkov", "pycep-parser", "matplotlib"}


def _commands(target: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_make_run_installs_only_what_it_runs():
    commands = _commands("run")
    assert "pip install -q -r requirements-local.txt" in commands and "npm ci" in commands
    assert "local.azurite --check-node" in commands and "-m local.make_run" in commands
    installed = [word for word in TEST_ONLY if word in commands]
    assert not installed, f"make run installs test-only tools: {installed}"


def test_make_test_installs_the_test_tools_on_top():
    commands = _commands("test")
    for word in ("requirements-local.txt", "requirements-dev.txt", "venv-checkov", "apt-get", "chromium", "pytest"):
        assert word in commands, word
    assert _commands("test-tools").count("pip install") >= 2  # the dev venv and checkov's, listed in TEST_TOOLS


def test_make_test_runs_the_linters_before_the_suite():
    commands = _commands("test").splitlines()
    checks = ["-m ruff check .", "-m ruff format --check .", "-m mypy", "-m pytest"]
    at = [next((i for i, line in enumerate(commands) if line.endswith(check)), None) for check in checks]
    assert None not in at and at == sorted(at), dict(zip(checks, at, strict=True))


def test_make_unit_runs_only_folders_that_start_no_stack():
    (command,) = [line for line in _commands("unit").splitlines() if "-m pytest" in line]
    paths = command.split("-m pytest -q ", 1)[1].split()
    assert paths[0] == "tests/unit" and all((REPO / path).exists() for path in paths), paths
    assert not {"tests/service", "tests/facade", "tests/browser", "tests/chaos"} & set(paths)


# ---- what requirements-local.txt installs covers what make run imports --------------------------------------------


def _requirements(path: Path) -> list[Requirement]:
    out: list[Requirement] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out += _requirements(path.parent / line[3:].strip())
        elif line:
            out.append(Requirement(line))
    return out


def _closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution pip installs for these requirements (from the installed metadata)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for extra in sorted(requirement.extras) or [""]:
            for raw in metadata.requires(requirement.name) or []:
                dependency = Requirement(raw)
                if dependency.marker is None or dependency.marker.evaluate({"extra": extra}):
                    todo.append(dependency)
    return seen


def _third_party_imports(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("local", "shared", "function_app")}


def test_requirements_local_installs_everything_make_run_imports_and_no_test_tool():
    sources = [
        REPO / "function_app.py",
        *sorted((REPO / "shared").rglob("*.py")),
        *sorted(p for p in (REPO / "local").rglob("*.py") if "tests" not in p.parts),
    ]
    installed = _closure(_requirements(REPO / "requirements-local.txt"))
    by_module = metadata.packages_distributions()
    missing = {
        module: by_module.get(module)
        for module in _third_party_imports(sources)
        if not {canonicalize_name(d) for d in by_module.get(module, [])} & installed
    }
    assert not missing, f"make run imports these, which requirements-local.txt does not install: {missing}"
    assert not installed & TEST_ONLY_PACKAGES, "make run would install test-only packages"


def test_the_readme_states_the_node_that_the_pinned_azurite_declares():
    import json

    pinned = json.loads((REPO / "package.json").read_text())["devDependencies"]["azurite"]
    installed = REPO / "node_modules" / "azurite" / "package.json"
    if not installed.exists():
        pytest.skip("Azurite is not installed (npm ci)")
    azurite = json.loads(installed.read_text())
    assert azurite["version"] == pinned
    floor = re.fullmatch(r">=\s*(\d+)(?:\.\d+){0,2}", azurite["engines"]["node"])
    assert floor, f"engines.node {azurite['engines']['node']!r}: state the Node it needs in README.md"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    two_commands = readme[readme.index("## Two commands") : readme.index("```bash", readme.index("## Two commands"))]
    assert f"Node.js {floor.group(1)} or newer" in two_commands
    assert f"Azurite {'.'.join(pinned.split('.')[:2])}" in two_commands


def test_an_older_node_than_azurite_declares_is_named():
    from local.azurite import engine_problem

    assert engine_problem(">=22.0.0", "v20.20.2\n") == "Node.js v20.20.2 is older than 22.0.0"
    assert engine_problem(">=22", "v21.7.3") == "Node.js v21.7.3 is older than 22.0.0"
    assert engine_problem(">=22.0.0", "v22.0.0") is None and engine_problem(">=22.0.0", "v24.1.0") is None
    assert engine_problem("^18 || >=20", "v16.0.0") is None  # ranges other than a lower bound are npm's to judge
