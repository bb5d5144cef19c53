"""A small chaos run (bench/chaos.py) inside `make test`: 25 runs with webhooks while the host is
SIGKILLed once, the emulator injects 429/5xx/stream cuts, the webhook receiver is down for 5 s and
Azurite restarts once. It starts and stops its own Azurite, emulator, host and receiver (it kills
things, so it does not use the session `stack` fixture). About a minute."""
from __future__ import annotations

from bench.chaos import report, run_chaos


def test_small_chaos_run_with_the_executor_backend_keeps_every_invariant() -> None:
    """The same with RUN_BACKEND=executor: the host's own model calls (Chat Completions, faults and stream cuts
    on the chat endpoint) are killed with it and start again as new attempts."""
    result = run_chaos(runs=25, submit_seconds=24, host_kills=1, receiver_outage_s=5, azurite_down_s=3,
                       min_duration_ms=500, max_duration_ms=4000, converge_timeout_s=75, name="chaos-executor",
                       backend="executor", fault_endpoints="create,retrieve,stream,cancel,chat", verbose=False)
    text = report(result)
    print(text)
    assert len(result.checks) >= 9
    assert result.failed == 0, text


def test_small_chaos_run_keeps_every_invariant() -> None:
    result = run_chaos(runs=25, submit_seconds=24, host_kills=1, receiver_outage_s=5, azurite_down_s=3,
                       min_duration_ms=500, max_duration_ms=4000, converge_timeout_s=75, name="chaos-test",
                       verbose=False)
    text = report(result)
    print(text)
    assert len(result.checks) >= 8
    assert result.failed == 0, text
