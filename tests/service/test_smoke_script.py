"""The post-deploy smoke test (infra/smoke.py, infra/README.md "Smoke test after `azd up`") passes against the local
stack, with function keys on as in Azure, and fails, naming the step, when the facade refuses its key."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from ..stack import FACADE_KEYS, FUNCTION_KEY, Stack

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _smoke(stack: Stack, api_key: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMOKE_FUNCTION_KEY": FUNCTION_KEY, "SMOKE_API_KEY": api_key}
    return subprocess.run(
        [sys.executable, "-m", "infra.smoke", stack.host.base_url, "--timeout", "60"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_smoke_test_exercises_both_apis_to_the_end_and_resumes_the_stream(stack):
    result = _smoke(stack, FACADE_KEYS["alice"])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "POST /api/runs: 202, Location: /api/runs/run_" in out and ", Retry-After: " in out
    assert "completed after" in out and "a wrong key is refused (401)" in out
    assert "ending response.completed, the text matches" in out and out.rstrip().endswith("smoke test passed")
    assert FUNCTION_KEY not in out + result.stderr and FACADE_KEYS["alice"] not in out + result.stderr


def test_the_smoke_test_fails_when_the_facade_refuses_its_key(stack):
    result = _smoke(stack, secrets.token_urlsafe(32))
    assert result.returncode == 1
    assert "completed after" in result.stdout  # the native API passed first
    assert "FAIL  AuthenticationError" in result.stderr
