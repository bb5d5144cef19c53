"""A small chaos run (bench/chaos.py) inside `make test`: about 30 runs of the realistic mix (streams that
hang up and resume, a cancel racing a completion, a multi-turn session with concurrent starts, deadlines,
function calls, a 200 KB output, Idempotency-Key retries) while the host is SIGKILLed once, the emulator
injects 429/5xx/stream cuts, the webhook receiver is down for 5 s and Azurite restarts once. It starts and
stops its own Azurite, emulator, host and receiver (it kills things, so it does not use the session `stack`
fixture). About a minute.

Every invariant must hold: the defects these runs found (issue 12's session race, expiry before the provider's
answer, repeated final event; and from the full runs: a key retry handed a run the provider then refused, a
cancel at the deadline tried once, a provider response cancelled past the deadline ending the run `cancelled`
instead of `expired`, a late follow-up moving a session back, the executor's watchdog re-queueing a run still
waiting for its first attempt) are fixed, each with a test of its own."""

from __future__ import annotations

from bench.chaos import report, run_chaos

# The background runs' size and faults (poll and push alike): ~30 runs in 20 s, one host kill, short outages.
SMALL_RUN = dict(
    runs=30,
    submit_seconds=20,
    host_kills=1,
    receiver_outage_s=5,
    azurite_down_s=3,
    min_duration_ms=500,
    max_duration_ms=3000,
    huge_outputs=0,
    emoji_inputs=0,
    converge_timeout_s=90,
    client_retry_s=40,
)

# The executor runs' size and faults (one backend and two model servers alike): faults on the chat endpoint too.
SMALL_EXECUTOR_RUN = dict(
    runs=25,
    submit_seconds=24,
    host_kills=1,
    receiver_outage_s=5,
    azurite_down_s=3,
    min_duration_ms=500,
    max_duration_ms=4000,
    converge_timeout_s=75,
    backend="executor",
    fault_endpoints="create,retrieve,stream,cancel,chat",
)


def test_small_chaos_run_with_the_executor_backend_keeps_every_invariant() -> None:
    """The same with RUN_BACKEND=executor: the host's own model calls (Chat Completions, faults and stream cuts
    on the chat endpoint) are killed with it and start again as new attempts. The checks that rest on provider
    background responses judge these runs by their view, their full replay and the emulator's chat log."""
    result = run_chaos(
        **SMALL_EXECUTOR_RUN,
        name="chaos-executor",
        verbose=False,
    )
    text = report(result)
    print(text)
    assert len(result.checks) >= 15
    assert result.stats["executor"]["model_calls"] >= 20 and result.stats["executor"]["provider_responses"] == 0, text
    assert result.stats["streams"]["resumes"] >= 1 and result.stats["sessions"]["sessions"] >= 1, text
    assert result.failed == 0, text


def test_small_chaos_run_with_provider_webhooks_keeps_every_invariant() -> None:
    """The same with COMPLETION_STRATEGY=push: the emulator's signed provider webhooks (10 % lost, 10 % sent
    twice) end the runs, the ones lost or sent while the host was dead are retried by the emulator or caught by
    the safety-net poll chain."""
    result = run_chaos(
        **SMALL_RUN,
        name="chaos-push",
        completion="push",
        verbose=False,
    )
    text = report(result)
    print(text)
    assert len(result.checks) >= 15
    pushed = result.stats["provider_webhooks"]
    assert pushed["deliveries"] >= 20 and pushed["receive_provider_webhook"].get("Succeeded", 0) >= 10, text
    assert result.failed == 0, text


def test_small_chaos_run_keeps_every_invariant() -> None:
    result = run_chaos(
        **SMALL_RUN,
        name="chaos-test",
        verbose=False,
    )
    text = report(result)
    print(text)
    assert len(result.checks) >= 15
    assert result.stats["streams"]["resumes"] >= 1 and result.stats["sessions"]["sessions"] >= 1, text
    assert result.failed == 0, text


def test_small_chaos_run_with_two_deployments_and_an_outage_keeps_every_invariant() -> None:
    """The same with two emulator deployments in PROVIDER_DEPLOYMENTS (ptu priority 0, payg 1) and ptu refusing
    connections for 8 s from 30 % of the window: new starts spill to payg, ptu's runs are polled through the
    outage, sessions stay on their deployment (one more invariant), every run ends once with one response."""
    result = run_chaos(
        **SMALL_RUN,
        name="chaos-deployments",
        deployments=True,
        deployment_outage_s=8,
        verbose=False,
    )
    text = report(result)
    print(text)
    assert len(result.checks) >= 16 and any("deployment" in c.name for c in result.checks)
    served = result.stats["deployments"]["served_by_deployment"]
    assert served.get("ptu", 0) >= 1 and served.get("payg", 0) >= 1, text
    assert result.failed == 0, text


def test_small_chaos_run_on_the_executor_with_two_model_servers_and_an_outage_keeps_every_invariant() -> None:
    """The executor over the same two deployments (its model servers, executor.model_pool): while ptu refuses
    connections the calls go to payg (an executor run is not pinned); each run names a server its calls went to."""
    result = run_chaos(
        **SMALL_EXECUTOR_RUN,
        name="chaos-executor-deployments",
        deployments=True,
        deployment_outage_s=8,
        verbose=False,
    )
    text = report(result)
    print(text)
    served = result.stats["deployments"]["served_by_deployment"]
    assert served.get("ptu", 0) >= 1 and served.get("payg", 0) >= 1, text
    assert result.stats["executor"]["provider_responses"] == 0, text
    assert result.failed == 0, text
