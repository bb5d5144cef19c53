"""A small chaos run (bench/chaos.py) inside `make test`: about 30 runs of the realistic mix (streams that
hang up and resume, a cancel racing a completion, a multi-turn session with concurrent starts, deadlines,
function calls, a 200 KB output, Idempotency-Key retries) while the host is SIGKILLed once, the emulator
injects 429/5xx/stream cuts, the webhook receiver is down for 5 s and Azurite restarts once. It starts and
stops its own Azurite, emulator, host and receiver (it kills things, so it does not use the session `stack`
fixture). About a minute.

Failures whose likely cause is a known defect (KNOWN_CAUSES: issue 12's list and what the full run found) are
printed but tolerated, so this test keeps guarding every other invariant until those fixes land; then drop them
from KNOWN_CAUSES."""
from __future__ import annotations

from bench.chaos import report, run_chaos
from bench.chaos_checks import (CAUSE_DEADLINE, CAUSE_END_EVENT, CAUSE_EXPIRY_CANCEL, CAUSE_EXPIRY_MESSAGE,
                                 CAUSE_IDEMPOTENT_ABANDON, CAUSE_SESSION_RACE)

# Issue 12's defects 1, 2 and 10, and two found by the full chaos run (reported to the owner with it).
KNOWN_CAUSES = {CAUSE_SESSION_RACE, CAUSE_DEADLINE, CAUSE_EXPIRY_MESSAGE, CAUSE_END_EVENT, CAUSE_EXPIRY_CANCEL,
                CAUSE_IDEMPOTENT_ABANDON}


def test_small_chaos_run_keeps_every_invariant() -> None:
    result = run_chaos(runs=30, submit_seconds=20, host_kills=1, receiver_outage_s=5, azurite_down_s=3,
                       min_duration_ms=500, max_duration_ms=3000, huge_outputs=0, emoji_inputs=0,
                       converge_timeout_s=90, client_retry_s=40, name="chaos-test", verbose=False)
    text = report(result)
    print(text)
    assert len(result.checks) >= 15
    assert result.stats["streams"]["resumes"] >= 1 and result.stats["sessions"]["sessions"] >= 1, text
    unexplained = [f"{c.name}: {f['problem']}" for c in result.checks if not c.ok
                   for f in c.failures if f.get("likely_cause") not in KNOWN_CAUSES]
    assert not unexplained, text
