""".funcignore keeps dev-only parts out of the deployment package and keeps the service in it."""
from __future__ import annotations

import fnmatch
from pathlib import PurePosixPath

from .bicep_model import REPO, deployed_python_files


def _patterns() -> list[str]:
    lines = (REPO / ".funcignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """gitignore-style subset: `dir/` matches a directory at any depth, other patterns match any path part."""
    parts = PurePosixPath(path).parts
    for pattern in patterns:
        if pattern.startswith("!"):
            continue
        if pattern.endswith("/"):
            if any(fnmatch.fnmatchcase(part, pattern[:-1]) for part in parts[:-1]):
                return True
        elif any(fnmatch.fnmatchcase(part, pattern) for part in parts):
            return True
    return False


def test_dev_only_parts_are_ignored():
    patterns = _patterns()
    for path in ("local/azurite.py", "tests/infra/test_parity.py", "bench/run_all.py", "client/pyproject.toml",
                 "infra/main.bicep", "node_modules/x/index.js", ".venv/bin/python", ".azurite/db.json",
                 ".local/venv-checkov/bin/checkov", "README.md", "infra/README.md", "package.json",
                 "package-lock.json", "Makefile", ".ci/run", "local.settings.json", "shared/__pycache__/x.pyc",
                 "requirements-dev.txt", "pyproject.toml", "azure.yaml", ".azure/dev/.env"):
        assert _ignored(path, patterns), f"{path} would be deployed"


def test_the_service_is_deployed():
    patterns = _patterns()
    needed = ["function_app.py", "host.json", "requirements.txt"]
    needed += [p.relative_to(REPO).as_posix() for p in deployed_python_files()]
    kept = [p for p in needed if _ignored(p, patterns)]
    assert not kept, f".funcignore drops files the app needs: {kept}"
