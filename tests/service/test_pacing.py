"""Provider pacing end to end (issue 23 item 2): a host with PACING_REQUESTS_PER_MINUTE on Azurite of its own,
against the emulator enforcing a request quota on the model. A burst over the quota is accepted whole; the
pacing, not the provider's 429s, spaces the creates, so the provider refuses few of them (goal: at most 5 %),
and every run completes with exactly one provider response."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from local.azurite import start_for_tests
from shared.runs.pacing import DEFAULT_OUTPUT_TOKENS, estimate_tokens
from tests.stack import wait_for_run

QUICK = {"emulator_duration_ms": "300", "emulator_output_chars": "40"}
QUOTA_DEFAULTS = {"model_limits": {}, "quota_window_s": 60.0, "insufficient_quota": False}
PACED_RPM = 60  # the host's budget: one create a second
BURST = 20


@pytest.fixture(scope="module")
def paced_host(stack):
    """A host pacing every model at PACED_RPM, on storage of its own (hosts sharing a queue take each other's
    messages)."""
    azurite = start_for_tests(f"pacing-{time.time_ns()}")
    host = stack.start_host(
        "pacing", AzureWebJobsStorage=azurite.connection_string, PACING_REQUESTS_PER_MINUTE=str(PACED_RPM)
    )
    yield httpx.Client(base_url=host.base_url, timeout=30, headers=stack.key_headers)
    host.stop()
    azurite.stop()


@pytest.fixture
def quota(stack):
    yield lambda model, rpm, window_s: stack.emulator.set_quota(model=model, rpm=rpm, quota_window_s=window_s)
    stack.emulator.configure(**QUOTA_DEFAULTS)


def test_a_burst_over_the_quota_is_paced_so_the_provider_refuses_few_creates(stack, quota, paced_host):
    model = "pace-burst"
    quota(model, 4, 3.0)  # 80 a minute, a burst of 4: below the burst offered, above the host's pace
    with ThreadPoolExecutor(BURST) as pool:
        answers = list(
            pool.map(
                lambda i: paced_host.post("/api/runs", json={"input": prompt(i), "model": model, "metadata": QUICK}),
                range(BURST),
            )
        )
    assert [a.status_code for a in answers] == [202] * BURST, [a.text for a in answers if a.status_code != 202]
    paced = [a.json() for a in answers if a.json().get("admission", {}).get("reason") == "paced"]
    assert len(paced) >= BURST - 2  # one create a second: all but the first (or two) waited for a slot
    finals = [wait_for_run(paced_host, a.json()["id"], timeout=120) for a in answers]
    assert [f["status"] for f in finals] == ["completed"] * BURST
    responses = [stack.provider_responses(f["id"]) for f in finals]
    assert [len(r) for r in responses] == [1] * BURST  # exactly once at the provider
    # The provider's 429s the service met: every create answered "not now" is one more attempt of its run.
    refused = sum(max(0, (f.get("admission") or {}).get("attempts", 1) - 1) for f in finals)
    assert refused <= math.floor(0.05 * BURST), [f.get("admission") for f in finals]
    created_at = sorted(r[0]["created_at"] for r in responses)
    spread = created_at[-1] - created_at[0]
    assert spread >= (BURST - 1) * 60 / PACED_RPM - 2  # paced: the creates span the burst at one a second
    # The token estimate's prompt part (characters / 4) against the provider's count of the prompt.
    for i, final in enumerate(finals):
        assert final["usage"]["input_tokens"] == estimate_tokens({"input": prompt(i)}) - DEFAULT_OUTPUT_TOKENS


def prompt(i: int) -> str:
    return f"burst {i}: " + "tell me something " * (i + 1)
