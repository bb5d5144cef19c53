"""checkov (framework bicep) reports no failed check; every skip carries a written reason.

checkov 3.3.30 pins pycep-parser==0.5.1, which conflicts with requirements-dev.txt (pycep-parser==0.7.1), so it
lives in its own venv: .local/venv-checkov (created here on first use from tests/infra/requirements-checkov.txt;
`make` can create it ahead of time). CHECKOV_BIN overrides the executable.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .bicep_model import INFRA, REPO

HERE = Path(__file__).resolve().parent
VENV = REPO / ".local" / "venv-checkov"
REQUIREMENTS = HERE / "requirements-checkov.txt"


def _checkov_bin() -> Path:
    if os.environ.get("CHECKOV_BIN"):
        return Path(os.environ["CHECKOV_BIN"])
    exe = VENV / "bin" / "checkov"
    stamp = VENV / ".installed"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "venv-checkov.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist or two sessions: install once
        if not (exe.exists() and stamp.exists() and stamp.read_text() == REQUIREMENTS.read_text()):
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
            subprocess.run(
                [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                check=True,
                timeout=600,
            )
            stamp.write_text(REQUIREMENTS.read_text())
    return exe


@pytest.fixture(scope="module")
def checkov_report() -> dict:
    exe = _checkov_bin()
    proc = subprocess.run(
        [str(exe), "--directory", str(INFRA), "--framework", "bicep", "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOG_LEVEL": "ERROR"},
    )
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    assert bicep, f"no bicep report in checkov output: {proc.stdout[:2000]}"
    return bicep[0]


@pytest.mark.slow
def test_checkov_has_no_failed_checks(checkov_report):
    summary = checkov_report["summary"]
    assert summary["parsing_errors"] == 0, summary
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']}): {c['check_name']}"
        for c in checkov_report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["passed"] > 20, f"suspiciously few checks ran: {summary}"


@pytest.mark.slow
def test_every_skip_has_a_reason(checkov_report):
    for check in checkov_report["results"]["skipped_checks"]:
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) >= 20 and reason != "No comment provided", (
            f"{check['check_id']} on {check['resource']} is skipped without a real reason: {reason!r}"
        )
