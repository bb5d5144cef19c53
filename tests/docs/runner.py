"""Run a document's runnable blocks as a reader would: in order, in one terminal, and compare what each prints with
the expected output shown after it.

    .venv/bin/python -m tests.docs.runner [DOCUMENT ...]   # against your own `make run`, exactly as written

The blocks of one document run in one `bash` session (`set -euo pipefail`) at the repository root, so a variable a
block sets is there in the next; a Python block is a script run with this Python (the repository's `.venv`), with
the session's exported variables. `substitutions` replace text in the blocks and in their expected output before
they run (the test stack's ports for 7070-7072, its secrets file for .local/secrets.env). Expected output matches
as doctest's ELLIPSIS and NORMALIZE_WHITESPACE do: `...` stands for any text, any run of whitespace for any other.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .markdown import REPO, Block, Document, documents

SHELL_LANGS = ("bash", "sh", "shell")
# What a new terminal has; nothing else of the test runner's environment (exported keys, provider settings) leaks in.
PASSED_ON = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TERM",
    "TMPDIR",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


@dataclass
class BlockRun:
    block: Block
    expected: Block | None
    output: str | None = None  # what it printed (None: never reached)
    finished: bool = False


@dataclass
class DocumentRun:
    doc: Document
    runs: list[BlockRun]
    returncode: int | None = None
    stderr: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def substitute(text: str, substitutions: Mapping[str, str]) -> str:
    for old, new in substitutions.items():
        text = text.replace(old, new)
    return text


def ellipsis_match(expected: str, actual: str) -> bool:
    """doctest's ELLIPSIS with NORMALIZE_WHITESPACE: `...` matches any text, whitespace runs match each other."""
    want, got = " ".join(expected.split()), " ".join(actual.split())
    pieces = want.split("...")
    if len(pieces) == 1:
        return want == got
    first, last = pieces[0], pieces[-1]
    if not got.startswith(first) or not got.endswith(last) or len(first) + len(last) > len(got):
        return False
    position, end = len(first), len(got) - len(last)
    for piece in pieces[1:-1]:  # each as early as it can: that leaves the most room for the rest
        found = got.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def run_document(
    doc: Document,
    *,
    substitutions: Mapping[str, str] | None = None,
    python: str = sys.executable,
    cwd: Path = REPO,
    timeout: float = 200.0,
) -> DocumentRun:
    substitutions = substitutions or {}
    runs = [BlockRun(block, expected) for block, expected in doc.runnable()]
    result = DocumentRun(doc, runs)
    unsupported = [r.block for r in runs if r.block.lang not in (*SHELL_LANGS, "python")]
    if unsupported:
        result.problems += [f"{b.where}: a runnable block must be bash or python, not {b.lang!r}" for b in unsupported]
        return result
    marker = f"@@docs-{secrets.token_hex(6)}"
    with tempfile.TemporaryDirectory(prefix="docs-blocks-") as folder:
        lines = ["set -euo pipefail"]
        for n, run in enumerate(runs):
            code = substitute(run.block.code, substitutions)
            file = Path(folder) / f"block{n}.{'py' if run.block.lang == 'python' else 'sh'}"
            file.write_text(code)
            command = f'"$DOCS_PYTHON" {file}' if run.block.lang == "python" else f"source {file}"
            lines += [f"printf '\\n{marker} {n} start\\n'", command, f"printf '\\n{marker} {n} end\\n'"]
        env = {name: value for name, value in os.environ.items() if name in PASSED_ON}
        env.update(DOCS_PYTHON=python, PYTHONUNBUFFERED="1")
        # Its own process group, so that a timeout stops whatever a block started too (a curl, a sleep).
        shell = subprocess.Popen(
            ["bash", "-c", "\n".join(lines)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, result.stderr = shell.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            stdout, stderr = shell.communicate()
            result.stderr = stderr + f"\n(timed out after {timeout:.0f} s)"
        result.returncode = shell.returncode
    _split(stdout, marker, runs)
    _judge(result, substitutions)
    return result


def _split(stdout: str, marker: str, runs: list[BlockRun]) -> None:
    current: int | None = None
    collected: list[str] = []
    for line in stdout.split("\n"):
        if line.startswith(marker):
            n, what = line[len(marker) :].split()
            if what == "start":
                current, collected = int(n), []
                runs[current].output = ""
            else:
                runs[int(n)].output, runs[int(n)].finished = "\n".join(collected).strip("\n"), True
                current = None
        elif current is not None:
            collected.append(line)
            runs[current].output = "\n".join(collected).strip("\n")


def _judge(result: DocumentRun, substitutions: Mapping[str, str]) -> None:
    for run in result.runs:
        block = run.block
        if run.output is None:
            result.problems.append(f"{block.where}: never ran (an earlier block failed)")
            break
        if not run.finished:
            result.problems.append(
                f"{block.where}: the {block.lang} block failed (exit status {result.returncode}).\n"
                f"--- it printed:\n{run.output}\n--- stderr (end):\n{result.stderr[-3000:]}"
            )
            break
        if run.expected is not None:
            expected = substitute(run.expected.code, substitutions)
            if not ellipsis_match(expected, run.output):
                result.problems.append(
                    f"{block.where}: what it printed does not match the expected output at {run.expected.where}.\n"
                    f"--- expected:\n{expected.strip()}\n--- printed:\n{run.output}"
                )


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or [str(p.relative_to(REPO)) for p in documents()]
    failed = 0
    for name in names:
        doc = Document.read(Path(name).resolve())
        if not doc.runnable():
            continue
        result = run_document(doc)
        print(f"{doc.path}: {len(result.runs)} runnable blocks, " + ("ok" if result.ok else "FAILED"))
        for problem in result.problems:
            print(problem, end="\n\n")
        failed += not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
