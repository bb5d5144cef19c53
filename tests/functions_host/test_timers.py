"""Timer triggers: a six-field NCRONTAB from an app setting (%TICK_SCHEDULE%), run_on_startup, one loop."""

from __future__ import annotations

import httpx

from .conftest import read_results, wait_until


def test_timer_every_second_and_run_on_startup(host_factory, tmp_path):
    results = tmp_path / "results.jsonl"
    host = host_factory("timers", env={"RESULTS_FILE": str(results), "TICK_SCHEDULE": "* * * * * *"}).start()
    ticks = wait_until(
        lambda: (
            [r for r in read_results(results) if r["fn"] == "tick"][:3]
            if len([r for r in read_results(results) if r["fn"] == "tick"]) >= 3
            else None
        ),
        timeout=8,
        message="3 ticks",
    )
    seconds = [int(t["t"]) for t in ticks]
    assert len(set(seconds)) == 3, seconds  # one invocation per second occurrence
    assert all(t["past_due"] is False for t in ticks)
    startup = [r for r in read_results(results) if r["fn"] == "on_startup"]
    assert len(startup) == 1  # its schedule (Jan 1st) is far away: only run_on_startup fired it
    # Async functions of every trigger type share the host's one event loop.
    loop = int(httpx.get(host.url("api/loop")).text)
    assert {t["loop"] for t in ticks} == {loop}
    host.wait_for_log(r"Executing 'Functions\.tick' \(Reason='Timer fired at [^']+', Id=")
    assert host.stop() == 0
