"""The venvs of the model servers the conformance tests run (their dependencies conflict with the service's), each
built from its requirements file when that changed, and audited before anything starts from it.

LITELLM (.local/venv-litellm, in `make test`): LiteLLM's PyPI account was hijacked in March 2026 (1.82.7 and 1.82.8
carried a credential stealer that ran from a `.pth` file at every interpreter start-up, upstream
BerriAI/litellm#24518). So: one release (1.106.12) and every transitive dependency pinned with its sha256, wheels
only (nothing is built, so no package's code runs at install time), `--no-deps` (nothing unpinned comes along).
TRANSFORMERS (.local/venv-transformers, opt-in: CONFORMANCE_TRANSFORMERS=1): torch and transformers pinned.

The audit runs in this interpreter, never the new venv's (its start-up would already run a hostile `.pth`): a
`.pth` file is allowed only from the venv's own seeded setuptools, no `sitecustomize`/`usercustomize`. A venv that
fails it is removed.

`python -m tests.conformance.tool_venvs litellm` is what `make test` runs (its .local/venv-litellm target); the
fixtures call `ensure()` too, so that `pytest tests/conformance` works on its own. Standard library only: the
Makefile runs it with the system python3.
"""

from __future__ import annotations

import csv
import fcntl
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# What `python -m venv` itself puts in (Python 3.11 seeds pip and setuptools; setuptools ships a .pth).
SEEDED = {"pip", "setuptools"}


@dataclass(frozen=True)
class ToolVenv:
    name: str
    requirements: Path
    executable: str  # the console script the tests start
    pip_args: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return REPO / ".local" / f"venv-{self.name}"

    @property
    def stamp(self) -> Path:
        return self.path / ".installed"

    def build(self) -> float:
        """Build the venv and audit it; returns the seconds it took."""
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(self.path)], check=True)
        subprocess.run(
            [
                str(self.path / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *self.pip_args,
                "-r",
                str(self.requirements),
            ],
            check=True,
            timeout=1800,
        )
        problems = audit(self.path)
        if problems:
            shutil.rmtree(self.path, ignore_errors=True)
            raise RuntimeError(f"the {self.name} venv failed its audit and was removed:\n  " + "\n  ".join(problems))
        self.stamp.write_text(self.requirements.read_text())
        return time.monotonic() - started

    def ensure(self) -> Path:
        """The server's executable, building the venv first when it is missing or its requirements changed."""
        exe = self.path / "bin" / self.executable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f"venv-{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions at once: install once
            if not (exe.exists() and self.stamp.exists() and self.stamp.read_text() == self.requirements.read_text()):
                seconds = self.build()
                print(f"built {self.path.relative_to(REPO)} in {seconds:.0f} s", file=sys.stderr)
        return exe


LITELLM = ToolVenv(
    "litellm", HERE / "requirements-litellm.txt", "litellm", ("--require-hashes", "--no-deps", "--only-binary", ":all:")
)
TRANSFORMERS = ToolVenv("transformers", HERE / "requirements-transformers.txt", "transformers")
VENVS = {venv.name: venv for venv in (LITELLM, TRANSFORMERS)}


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


if __name__ == "__main__":
    for name in sys.argv[1:] or ["litellm"]:
        VENVS[name].ensure()
