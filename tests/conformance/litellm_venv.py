"""LiteLLM proxy's own venv (.local/venv-litellm), built from requirements-litellm.txt and checked before use.

LiteLLM's dependencies conflict with the service's, and its PyPI account was hijacked in March 2026 (1.82.7 and
1.82.8 carried a credential stealer that ran from a `.pth` file at every interpreter start-up, upstream
BerriAI/litellm#24518). So: one release (1.106.12) and every transitive dependency pinned with its sha256, wheels
only (nothing is built, so no package's code runs at install time), `--no-deps` (nothing unpinned comes along),
and an audit of what was installed, run by this interpreter (never the new venv's: its start-up would already run
a hostile `.pth`): a `.pth` file is allowed only from the venv's own setuptools, no `sitecustomize`/`usercustomize`.
A venv that fails the audit is removed.

`python -m tests.conformance.litellm_venv` (what `make test` runs through its .local/venv-litellm target) builds
it when requirements-litellm.txt changed; the conformance fixtures call `ensure()` too, so that `pytest
tests/conformance` works on its own. Standard library only: the Makefile runs it with the system python3.
"""
from __future__ import annotations

import csv
import fcntl
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV = REPO / ".local" / "venv-litellm"
REQUIREMENTS = HERE / "requirements-litellm.txt"
STAMP = VENV / ".installed"
PROXY_BIN = VENV / "bin" / "litellm"
# What `python -m venv` itself puts in (Python 3.11 seeds pip and setuptools; setuptools ships this .pth).
SEEDED = {"pip", "setuptools"}


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise RuntimeError(f"expected one site-packages in {venv}, found {found}")
    return found[0]


def audit(venv: Path) -> list[str]:
    """What is wrong with an installed venv: code that would run at every interpreter start-up."""
    site = site_packages(venv)
    owners: dict[str, set[str]] = {}  # file -> every package whose RECORD lists it
    for record in site.glob("*.dist-info/RECORD"):
        name = record.parent.name.split("-")[0].lower().replace("_", "-")
        with open(record, newline="", encoding="utf-8") as file:
            for row in csv.reader(file):
                if row:
                    owners.setdefault(row[0], set()).add(name)
    problems = []
    for pth in sorted(site.glob("*.pth")):
        owner = owners.get(pth.name) or {"no package"}
        if not owner <= SEEDED:
            problems.append(f"{pth.name} (from {', '.join(sorted(owner))}) would run at every start-up")
    for hook in ("sitecustomize", "usercustomize"):
        if (site / f"{hook}.py").exists() or (site / hook).is_dir():
            owner = owners.get(f"{hook}.py") or {"no package"}
            problems.append(f"{hook} would run at every start-up (from {', '.join(sorted(owner))})")
    return problems


def build() -> float:
    """Build the venv from the hashed requirements and audit it; returns the seconds it took."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--require-hashes", "--no-deps", "--only-binary", ":all:", "-r", str(REQUIREMENTS)],
                   check=True, timeout=900)
    problems = audit(VENV)
    if problems:
        shutil.rmtree(VENV, ignore_errors=True)
        raise RuntimeError("the LiteLLM venv failed its audit and was removed:\n  " + "\n  ".join(problems))
    STAMP.write_text(REQUIREMENTS.read_text())
    return time.monotonic() - started


def ensure() -> Path:
    """The proxy's executable, building the venv first when it is missing or its requirements changed."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "venv-litellm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions at once: install once
        if not (PROXY_BIN.exists() and STAMP.exists() and STAMP.read_text() == REQUIREMENTS.read_text()):
            seconds = build()
            print(f"built {VENV.relative_to(REPO)} in {seconds:.0f} s", file=sys.stderr)
    return PROXY_BIN


if __name__ == "__main__":
    ensure()
