""".funcignore: the package `azd deploy` uploads is exactly what the app imports (plus the files it reads and the
platform's), computed with azd's own packaging rules (tests/infra/azd_package.py, read from the azd sources) on
the real tree, so caches a test run leaves behind, symlinks and azd's own restore venv count too.

azd applies `.funcignore` only from 1.18.0 (Azure/azure-dev#5383): azure.yaml requires it (test_bicep_syntax).
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path, PurePosixPath

from .azd_package import IGNORE_FILE, Ignorer, azd_restore_venv, package_files, parse
from .bicep_model import REPO

PLATFORM_FILES = {"function_app.py", "host.json", "requirements.txt"}
# What tools leave behind in whatever folder they run in; none of it may be deployed, wherever it lands.
TOOL_LEFTOVERS = [
    ".hypothesis/x",
    ".schemathesis/x",
    ".pytest_cache/v/x",
    ".mypy_cache/x",
    ".ruff_cache/x",
    "__pycache__/x.cpython-311.pyc",
    "x.pyc",
    ".tox/x",
    ".nox/x",
    ".cache/x",
    ".benchmarks/x",
    ".ipynb_checkpoints/x",
    "htmlcov/index.html",
    ".coverage",
    ".coverage.host.1",
    "coverage.xml",
    "run.log",
    ".DS_Store",
    "__azurite_db_queue__.json",
    "__blobstorage__/x",
    "__queuestorage__/x",
]
APP = ("function_app.py", "host.json", "requirements.txt", "shared/__init__.py")


def _ignorer(root: Path = REPO) -> Ignorer:
    return Ignorer(parse((REPO / IGNORE_FILE).read_text(encoding="utf-8")), str(root))


def _excluded(rel: str, *, is_dir: bool = False, root: Path = REPO) -> bool:
    """Whether azd leaves `rel` out: it or one of its folders matches (the walk never enters an excluded folder)."""
    ignorer, parts = _ignorer(root), PurePosixPath(rel).parts
    folders = [("/".join(parts[:i]), True) for i in range(1, len(parts))]
    return any(ignorer.absolute(f"{root}/{path}", folder) is not None for path, folder in [*folders, (rel, is_dir)])


def _tree(root: Path, files: tuple[str, ...]) -> Path:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / IGNORE_FILE).write_text((REPO / IGNORE_FILE).read_text())
    return root


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
    package = list(rel.parts[:-1])  # a module and a package's __init__ resolve against the same folder
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
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
            if (
                path.is_file()
                and path.suffix not in (".py", ".pyc")
                and "__pycache__" not in path.parts
                and re.search(rf"[\"']{re.escape(path.name)}[\"']", sources)
            ):
                data.add(path.relative_to(REPO).as_posix())
    return data


def needed_files() -> set[str]:
    modules = app_import_closure()
    return PLATFORM_FILES | modules | read_data_files(modules)


# ---- tests --------------------------------------------------------------------------------------------------------


def test_the_deployed_set_is_exactly_what_the_app_imports():
    deployed, needed = package_files(REPO), needed_files()
    assert {
        "function_app.py",
        "shared/__init__.py",
        "shared/settings/__init__.py",
        "shared/static/stream.html",
    } <= needed
    missing = sorted(needed - deployed)
    assert not missing, f".funcignore drops files the app needs: {missing}"
    extra = sorted(deployed - needed)
    assert not extra, f"would be deployed but the app never imports or reads them (add them to .funcignore): {extra}"


def test_tool_leftovers_are_never_deployed_wherever_they_land():
    for folder in ("", "shared/", "shared/webhooks/", "tests/"):
        for leftover in TOOL_LEFTOVERS:
            assert _excluded(folder + leftover), f"{folder + leftover} would be deployed"


def test_the_walk_leaves_caches_out_in_a_real_tree(tmp_path):
    """The same packaging on a scratch tree: a cache left inside shared/ by a test run stays out, the app stays in."""
    root = _tree(
        tmp_path / "app",
        (
            *APP,
            "shared/.hypothesis/examples/x",
            "shared/__pycache__/a.pyc",
            ".schemathesis/cassette.yaml",
            ".pytest_cache/v/cache/nodeids",
            "local.settings.example.json",
            "README.md",
            "tests/test_x.py",
            "shared/local.settings.json",
            ".azure/dev/.env",
        ),
    )
    assert package_files(root) == set(APP)


def test_dev_only_parts_are_ignored():
    for path in (
        "local/azurite.py",
        "tests/infra/test_parity.py",
        "bench/run_all.py",
        "client/pyproject.toml",
        "infra/main.bicep",
        "docs/images/x.png",
        "node_modules/x/index.js",
        ".venv/bin/python",
        ".azurite/db.json",
        ".local/venv-checkov/bin/checkov",
        ".local/secrets.env",
        "README.md",
        "infra/README.md",
        "package.json",
        "package-lock.json",
        "Makefile",
        ".ci/run",
        "local.settings.json",
        "local.settings.example.json",
        "requirements-dev.txt",
        "requirements-local.txt",
        "pyproject.toml",
        "azure.yaml",
        ".azure/dev/.env",
        ".github/workflows/x.yml",
    ):
        assert _excluded(path), f"{path} would be deployed"


def test_the_venv_azd_restore_creates_is_not_deployed(tmp_path):
    """`azd restore` makes `<folder>_env/` in the service folder; with a .funcignore azd no longer skips venvs."""
    root = _tree(
        tmp_path / "background-responses",
        (*APP, "background-responses_env/pyvenv.cfg", "background-responses_env/lib/site.py"),
    )
    assert package_files(root) == set(APP)
    assert _excluded(f"{azd_restore_venv(REPO)}/pyvenv.cfg")


def test_a_followed_symlink_escapes_the_ignore_file_so_every_symlink_here_is_excluded_at_the_link(tmp_path):
    """azd follows symlinks, and below a linked folder go-gitignore sees the target's paths, which it never
    matches: a linked folder is left out only by a line matching the link itself (the worktrees' .venv and
    node_modules are links)."""
    outside = tmp_path / "elsewhere"
    (outside / "__pycache__").mkdir(parents=True)
    (outside / "__pycache__" / "x.pyc").write_text("x")
    (outside / "mod.py").write_text("x")
    root = _tree(tmp_path / "app", APP)
    (root / ".venv").symlink_to(outside, target_is_directory=True)
    (root / "vendored").symlink_to(outside, target_is_directory=True)
    assert package_files(root) == {*APP, "vendored/mod.py", "vendored/__pycache__/x.pyc"}
    links = []
    for folder, dirs, files in os.walk(REPO):
        rel = Path(folder).relative_to(REPO)
        dirs[:] = [d for d in dirs if not _excluded((rel / d).as_posix(), is_dir=True)]
        links += [(rel / name).as_posix() for name in dirs + files if (Path(folder) / name).is_symlink()]
    assert not links, f"symlinks azd would follow into the package: {links}"


def test_the_ignore_file_stays_in_what_every_azd_from_1_18_reads_alike():
    text = (REPO / IGNORE_FILE).read_bytes().decode("utf-8")
    patterns = parse(text)  # refuses a BOM, negations, escapes and `**` inside a name
    assert {p.line for p in patterns} >= {".venv/", "node_modules/", ".local/", "tests/", "local/", "infra/"}


def test_the_go_gitignore_port_matches_as_go_gitignore_does():
    ignorer = Ignorer(parse("*.log\n/build\ndocs/*.md\n**/cache/**\nout/\n"), "/r")
    assert ignorer.absolute("/r/a/b/x.log", False)  # a name: any depth
    assert ignorer.absolute("/r/build", True) and not ignorer.absolute("/r/a/build", True)  # leading /: anchored
    assert ignorer.absolute("/r/docs/a.md", False) and not ignorer.absolute("/r/x/docs/a.md", False)  # a path
    assert not ignorer.absolute("/r/docs/sub/a.md", False)  # FNM_PATHNAME: * stops at /
    assert ignorer.absolute("/r/a/cache/b", False) and ignorer.absolute("/r/cache", True)
    assert ignorer.absolute("/r/out", True) and not ignorer.absolute("/r/out", False)  # folders only
    assert ignorer.absolute("/elsewhere/x.log", False) is None  # outside the base: never
