""".funcignore: the deployed file set is exactly what the app imports (plus the files it reads and the platform's).

azd zips the service folder minus `.funcignore` (gitignore syntax, applied with github.com/denormal/go-gitignore;
once the file exists azd adds no exclusions of its own except `.azure/`, `local.settings.json` and the ignore
file itself). The walk below does the same on the real tree, so caches a test run leaves behind count too.
"""
from __future__ import annotations

import ast
import fnmatch
import os
import re
from pathlib import Path, PurePosixPath

from .bicep_model import REPO

PLATFORM_FILES = {"function_app.py", "host.json", "requirements.txt"}
# What tools leave behind in whatever folder they run in; none of it may be deployed, wherever it lands.
TOOL_LEFTOVERS = [".hypothesis/x", ".schemathesis/x", ".pytest_cache/v/x", ".mypy_cache/x", ".ruff_cache/x",
                  "__pycache__/x.cpython-311.pyc", "x.pyc", ".tox/x", ".nox/x", ".cache/x", ".benchmarks/x",
                  ".ipynb_checkpoints/x", "htmlcov/index.html", ".coverage", ".coverage.host.1", "coverage.xml",
                  "run.log", ".DS_Store", "__azurite_db_queue__.json", "__blobstorage__/x", "__queuestorage__/x"]


def _patterns(root: Path = REPO) -> list[str]:
    lines = (root / ".funcignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _ignored(path: str, patterns: list[str], *, is_dir: bool = False) -> bool:
    """gitignore subset: `name/` matches a directory at any depth, other patterns match any path part."""
    parts = PurePosixPath(path).parts
    for pattern in patterns:
        assert not pattern.startswith(("!", "/")) and "/" not in pattern.rstrip("/"), \
            f".funcignore pattern {pattern!r} needs a fuller matcher in this test"
        if pattern.endswith("/"):
            dirs = parts if is_dir else parts[:-1]
            if any(fnmatch.fnmatchcase(part, pattern[:-1]) for part in dirs):
                return True
        elif any(fnmatch.fnmatchcase(part, pattern) for part in parts):
            return True
    return False


def deployed_files(root: Path = REPO) -> set[str]:
    """Files azd would upload from `root` (symlinked folders such as .venv are pruned by name like azd does)."""
    patterns = _patterns(root)
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if d != ".azure" and not _ignored((rel / d).as_posix(), patterns, is_dir=True)]
        for name in files:
            path = (rel / name).as_posix()
            if name not in (".funcignore", "local.settings.json") and not _ignored(path, patterns):
                found.add(path)
    return found


# ---- what the app needs -------------------------------------------------------------------------------------------

def _module_file(dotted: str) -> Path | None:
    base = REPO.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    """Dotted names a module imports, relative imports resolved against its package."""
    rel = path.relative_to(REPO).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - (node.level - 1)] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" if module else alias.name for alias in node.names)
    return {name for name in names if name}


def app_import_closure() -> set[str]:
    """Every repository file the app imports, from function_app.py on (packages' __init__.py included)."""
    seen: set[Path] = set()
    todo = [REPO / "function_app.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return {p.relative_to(REPO).as_posix() for p in seen}


def read_data_files(modules: set[str]) -> set[str]:
    """Non-Python files next to the imported modules that their source names (e.g. shared/static/stream.html)."""
    sources = "\n".join((REPO / m).read_text(encoding="utf-8") for m in modules)
    packages = {PurePosixPath(m).parts[0] for m in modules if "/" in m}
    data = set()
    for package in packages:
        for path in (REPO / package).rglob("*"):
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts \
                    and re.search(rf"[\"']{re.escape(path.name)}[\"']", sources):
                data.add(path.relative_to(REPO).as_posix())
    return data


def needed_files() -> set[str]:
    modules = app_import_closure()
    return PLATFORM_FILES | modules | read_data_files(modules)


# ---- tests --------------------------------------------------------------------------------------------------------

def test_the_deployed_set_is_exactly_what_the_app_imports():
    deployed, needed = deployed_files(), needed_files()
    assert {"function_app.py", "shared/__init__.py", "shared/settings.py", "shared/static/stream.html"} <= needed
    missing = sorted(needed - deployed)
    assert not missing, f".funcignore drops files the app needs: {missing}"
    extra = sorted(deployed - needed)
    assert not extra, f"would be deployed but the app never imports or reads them (add them to .funcignore): {extra}"


def test_tool_leftovers_are_never_deployed_wherever_they_land():
    patterns = _patterns()
    for folder in ("", "shared/", "shared/webhooks/", "tests/"):
        for leftover in TOOL_LEFTOVERS:
            assert _ignored(folder + leftover, patterns), f"{folder + leftover} would be deployed"


def test_the_walk_sees_leftovers_in_a_real_tree(tmp_path):
    """The same walk on a scratch tree: a cache left inside shared/ by a test run stays out, the app stays in."""
    for rel in ("function_app.py", "host.json", "requirements.txt", "shared/__init__.py",
                "shared/.hypothesis/examples/x", "shared/__pycache__/a.pyc", ".schemathesis/cassette.yaml",
                ".pytest_cache/v/cache/nodeids", "local.settings.example.json", "README.md", "tests/test_x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    (tmp_path / ".funcignore").write_text((REPO / ".funcignore").read_text())
    assert deployed_files(tmp_path) == {"function_app.py", "host.json", "requirements.txt", "shared/__init__.py"}


def test_dev_only_parts_are_ignored():
    patterns = _patterns()
    for path in ("local/azurite.py", "tests/infra/test_parity.py", "bench/run_all.py", "client/pyproject.toml",
                 "infra/main.bicep", "docs/images/x.png", "node_modules/x/index.js", ".venv/bin/python",
                 ".azurite/db.json", ".local/venv-checkov/bin/checkov", "README.md", "infra/README.md", "package.json",
                 "package-lock.json", "Makefile", ".ci/run", "local.settings.json", "local.settings.example.json",
                 "requirements-dev.txt", "pyproject.toml", "azure.yaml", ".azure/dev/.env", ".github/workflows/x.yml"):
        assert _ignored(path, patterns), f"{path} would be deployed"
