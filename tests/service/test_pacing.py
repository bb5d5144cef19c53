"""Provider pacing end to end (issue 23 item 2): a host with PACING_REQUESTS_PER_MINUTE on Azurite of its own,
against the emulator enforcing a request quota on the model. A burst over the quota is accepted whole; the
pacing, not the provider's 429s, spaces the creates, so the provider refuses few of them (goal: at most 5 %),
and every run completes with exactly one provider response. Queued starts go in a fair order across callers: a
facade caller's single run overtakes another caller's queued burst."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from local.azurite import start_for_tests
from shared.runs.pacing import DEFAULT_OUTPUT_TOKENS, estimate_tokens
from tests.stack import FACADE_KEYS, MASTER_KEY, wait_for_run

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
    # one create a second: all but the first (or two) wait for a slot (held) or their turn (asked again when due)
    paced = [a.json() for a in answers if a.json().get("admission", {}).get("reason") in ("paced", "fair turn")]
    assert len(paced) >= BURST - 2
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


def test_a_callers_run_is_not_queued_behind_another_callers_burst(stack, quota, paced_host):
    """Ordering, not timing: of alice's queued runs, at most a few (those already holding a slot) start between
    bob's acceptance and bob's start; in FIFO order all of them would."""
    model = "pace-fair"
    quota(model, 600, 60.0)  # the host's pacing is the bottleneck, not the provider

    def create(caller: str, i: int) -> str:
        answer = httpx.post(
            f"{paced_host.base_url}/api/v1/responses",
            timeout=30,
            headers={"Authorization": f"Bearer {FACADE_KEYS[caller]}"},
            json={"model": model, "input": prompt(i), "background": True, "metadata": QUICK},
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["id"])

    with ThreadPoolExecutor(BURST) as pool:
        alice = list(pool.map(lambda i: create("alice", i), range(BURST)))
    bob = create("bob", 0)
    finals = {run_id: wait_for_run(paced_host, run_id, timeout=120) for run_id in [*alice, bob]}
    assert {f["status"] for f in finals.values()} == {"completed"}
    assert [len(stack.provider_responses(run_id)) for run_id in finals] == [1] * (BURST + 1)

    def started_at(run: dict) -> float:
        admission = run.get("admission")
        return float(admission["granted_at"] if admission else run["created_at"])

    bob_accepted, bob_started = finals[bob]["created_at"], started_at(finals[bob])
    ahead = [r for r in alice if bob_accepted <= started_at(finals[r]) < bob_started]
    queued_then = [r for r in alice if started_at(finals[r]) >= bob_accepted]
    assert len(queued_then) >= BURST // 2  # the burst was still queued when bob came (else nothing to show)
    assert len(ahead) <= 3, (len(ahead), len(queued_then))


def test_health_details_show_each_models_limiter(paced_host):
    started = paced_host.post("/api/runs", json={"input": "hi", "model": "pace-health", "metadata": QUICK})
    assert started.status_code == 202, started.text
    answer = paced_host.get("/api/health/details", headers={"x-functions-key": MASTER_KEY})
    capacity = answer.json()["checks"]["capacity"]
    limiters = {limiter["model"]: limiter for limiter in capacity["limiters"]}
    assert "pace-health" in limiters, capacity
    for limiter in limiters.values():
        assert limiter["requests_per_minute"] == PACED_RPM and limiter["burst"] == 0
        assert 0 <= limiter["requests_in_bucket"] <= 1
    assert isinstance(capacity["waiting_for_capacity_by_caller"], dict)
