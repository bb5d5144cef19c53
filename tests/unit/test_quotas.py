"""A caller's active-run slot (shared/runs/quotas.py) is given back however its run ends, also when a crash cuts the
end short, and a caller at its cap gets 429 with nothing written. The fakes' Table takes ETags and transactions as
Azure does; the same store against Azurite, and the HTTP answers, are tested in tests/service."""

from __future__ import annotations

import pytest

from shared.errors import RateLimited
from shared.runs.callers import Caller
from shared.runs.quotas import PARTITION_PREFIX, SLOT_PREFIX
from shared.runs.requests import RunRequest

from .fakes import HostCrash, Steps, world

ALICE = Caller("alice")


def slots(w) -> set[tuple[str, str]]:
    return {key for key in w.index.rows if key[0].startswith(PARTITION_PREFIX) and key[1].startswith(SLOT_PREFIX)}


async def completed(w, run) -> None:
    w.backend.responses[run.response_id].complete()
    await w.drain_polls()


async def cancelled(w, run) -> None:
    await w.services.canceller.cancel(run.id)


async def expired(w, run) -> None:
    w.clock.advance(run.deadline_at - w.clock() + 1)
    await w.drain_polls()


async def failed(w, run) -> None:
    response = w.backend.responses[run.response_id]
    response.status, response.error = "failed", {"code": "server_error", "message": "boom"}
    await w.drain_polls()


@pytest.mark.parametrize("end", [completed, cancelled, expired, failed])
async def test_a_slot_comes_back_when_its_run_ends(monkeypatch, end):
    w = world(monkeypatch, CALLER_MAX_ACTIVE_RUNS="1")
    run = (await w.services.starter.start(RunRequest(input="one"), caller=ALICE)).run
    assert run.quota_slot and len(slots(w)) == 1
    with pytest.raises(RateLimited):
        await w.services.starter.start(RunRequest(input="two"), caller=ALICE)
    assert len(w.runs.rows) == 1  # the refused start wrote nothing
    await end(w, run)
    assert (await w.run(run.id)).is_terminal and not slots(w)
    assert (await w.services.starter.start(RunRequest(input="two"), caller=ALICE)).run.quota_slot


async def test_an_end_cut_before_the_slot_is_given_back_is_finished_by_the_sweeper(monkeypatch):
    w = world(monkeypatch, CALLER_MAX_ACTIVE_RUNS="1")
    run = (await w.services.starter.start(RunRequest(input="one"), caller=ALICE)).run
    steps = Steps(fail=lambda: HostCrash("killed"))
    steps.wrap_world(w)
    with steps.counting():
        await w.services.canceller.cancel(run.id)
    steps = Steps(steps.names.index("runindex.delete_entity"), fail=lambda: HostCrash("killed"))
    w = world(monkeypatch, CALLER_MAX_ACTIVE_RUNS="1")  # again, killed where the slot is deleted
    run = (await w.services.starter.start(RunRequest(input="one"), caller=ALICE)).run
    steps.wrap_world(w)
    with pytest.raises(HostCrash), steps.counting():
        await w.services.canceller.cancel(run.id)
    assert (await w.run(run.id)).status == "cancelled" and len(slots(w)) == 1
    w.clock.advance(w.settings.sweep_grace + 1)
    assert (await w.services.sweeper.sweep())["followed_up"] == 1
    assert not slots(w)


async def test_a_start_cut_by_a_crash_is_ended_by_the_sweeper_and_its_slot_comes_back(monkeypatch):
    w = world(monkeypatch, CALLER_MAX_ACTIVE_RUNS="1")
    w.backend.fail["start"] = [HostCrash("killed")]
    with pytest.raises(HostCrash):
        await w.services.starter.start(RunRequest(input="one"), caller=ALICE)
    ((run_id, _),) = w.runs.rows
    assert len(slots(w)) == 1
    w.clock.advance(w.services.starter.start_grace + w.settings.sweep_grace + 1)
    assert (await w.services.sweeper.sweep())["starts"] == 1
    assert (await w.run(run_id)).status == "failed" and not slots(w)


async def test_a_caller_without_limits_and_the_native_callers_count_apart(monkeypatch):
    w = world(monkeypatch, CALLER_MAX_ACTIVE_RUNS="1")
    await w.services.starter.start(RunRequest(input="alice"), caller=ALICE)
    native = (await w.services.starter.start(RunRequest(input="native"))).run  # function keys: one caller of their own
    assert native.quota_slot and native.owner is None
    with pytest.raises(RateLimited) as refused:
        await w.services.starter.start(RunRequest(input="native again"))
    assert "the native API's callers may have 1 at a time" in refused.value.message
    unlimited = world(monkeypatch)
    run = (await unlimited.services.starter.start(RunRequest(input="free"), caller=ALICE)).run
    assert not run.quota_slot and not slots(unlimited)
