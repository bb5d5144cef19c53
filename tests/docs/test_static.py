"""The docs without a stack: every code block parses, and every file, setting, Make target, Python symbol and
section they name exists (tests/docs/references.py); and the checks catch the rot that issue 28 found."""

from __future__ import annotations

import ast
import json
import re
import subprocess

import pytest
import yaml

from .markdown import REPO, Document, documents
from .references import Repository, check_all, check_document, section_references_in_code

DOCS = [str(path.relative_to(REPO)) for path in documents()]


def test_every_document_names_only_files_settings_targets_and_symbols_that_exist():
    findings = check_all([Document.read(name) for name in DOCS])
    assert not findings, "\n".join(map(str, findings))


def test_the_code_points_only_at_sections_the_docs_have():
    findings = section_references_in_code(Repository())
    assert not findings, "\n".join(map(str, findings))


def syntax_problem(lang: str, code: str) -> str | None:
    """Why a block of that language does not parse (None: it does, or the language is not checked)."""
    if lang in ("bash", "sh", "shell"):  # a <placeholder> the reader fills in is a word, not a redirection
        code = re.sub(r"<([A-Za-z][\w-]*)>", r"__\1__", code)
        done = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
        return done.stderr.strip() or None if done.returncode else None
    try:
        if lang == "python":
            compile(code, "<block>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        elif lang in ("yaml", "yml"):
            yaml.safe_load(code)
        elif lang == "json":
            json.loads(code)
    except (SyntaxError, ValueError, yaml.YAMLError) as error:
        return str(error)
    return None


@pytest.mark.parametrize("name", DOCS)
def test_every_code_block_parses(name):
    problems = [
        f"{block.where} ({block.lang}): {problem}"
        for block in Document.read(name).blocks
        if (problem := syntax_problem(block.lang, block.code))
    ]
    assert not problems, "\n".join(problems)


# -- the checks catch what issue 28 found ----------------------------------------------------------------------------
STALE_BENCH_README = {  # bench/README.md as it was, one claim each
    "a module that moved": "Why: `shared/lifecycle.py next_poll_delay` grows the interval to the cap.",
    "a method that never was": "On top: `Lifecycle.schedule_poll` rounds every delay up to whole seconds.",
    "a default that changed": "The bench host runs the production defaults (`POLL_MAX_DELAY_SECONDS=30`, ...).",
    "a section that does not exist": "`GET /api/metrics` should give this, but its counter stays at 0 (see *Known "
    "issues*).",
    "a schedule the chaos run does not use": "The chaos run uses a webhook schedule `0,1,2,4,8,16`.",
    "a setting that does not exist": "The cap is `POLL_MAXIMUM_DELAY_SECONDS`.",
    "a Make target that does not exist": "Run `make benchmarks`.",
    "a module that cannot run": "Run `python -m bench.everything`.",
    "a test that does not exist": "`tests/unit/test_sweeper.py::test_the_sweeper_scans_every_run` holds it.",
    "an attribute the module lacks": "through `shared.runs.RunStore`",
    "a link to a moved document": "see [the design](design.md)",
    "a link to a missing heading": "see [known issues](#known-issues)",
    "a section of another document": '(infra/README.md, "Rollback")',
}


@pytest.mark.parametrize("claim", STALE_BENCH_README, ids=list(STALE_BENCH_README))
def test_the_checks_find_each_stale_claim_issue_28_found(claim):
    doc = Document.from_text("bench/README.md", f"# Benchmarks\n\n{STALE_BENCH_README[claim]}\n")
    assert check_document(doc, Repository()), f"not found: {STALE_BENCH_README[claim]}"


def test_the_same_claims_made_right_pass():
    doc = Document.from_text(
        "bench/README.md",
        "\n\n".join(
            [
                "# Benchmarks",
                "## Known issues",
                "Why: `shared/runs/poll_chain.py Backoff.delay` grows the interval to the cap; "
                "`PollScheduler.schedule` sends the message.",
                "The bench host runs the production defaults (`POLL_MAX_DELAY_SECONDS=10`, ...).",
                "It counts now (see *Known issues*); `make bench`, `python -m bench.chaos`, [the API](../docs/api.md), "
                "[known issues](#known-issues), `shared.runs.store.RunStore`, `bench/chaos.py` `CHAOS_HOST_ENV`.",
                "The chaos run uses a webhook schedule `0,1,2,4,8,16,32,64,64`.",
                "`tests/unit/test_sweeper.py::test_the_sweeper_reads_only_the_open_runs_however_many_have_ended` "
                "holds it.",
                '(infra/README.md, "Rotation")',
            ]
        )
        + "\n",
    )
    findings = check_document(doc, Repository())
    assert not findings, "\n".join(map(str, findings))


def test_a_block_that_does_not_parse_is_named():
    assert syntax_problem("python", "python -m local.emulator --port 7070\n")
    assert syntax_problem("bash", "if true; then echo\n")
    assert syntax_problem("python", "await asyncio.sleep(1)\n") is None  # top-level await is how the docs show it
