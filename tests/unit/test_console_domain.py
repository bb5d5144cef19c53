"""What the console adds to the run domain, on fakes: run lists filtered by caller, the lag from the provider's
end of a run to its webhook's delivery, runs in flight and capacity per caller, a redelivery only by a caller who
sees the run."""

from __future__ import annotations

import pytest

from shared.clock import iso_utc
from shared.errors import NotFound, RateLimited
from shared.provider import ProviderError
from shared.runs.callers import OPERATOR, Caller
from shared.runs.overview import provider_ended_at, webhook_lag
from shared.runs.requests import RunRequest
from shared.settings import NATIVE_CALLER
from shared.webhooks import Attempt

from .fakes import world

ALICE, BOB, OPS = Caller("alice"), Caller("bob"), Caller("ops", operator=True)
HOOK = "http://127.0.0.1:9/hook"


async def start(w, caller=OPERATOR, **fields):
    run = (await w.services.starter.start(RunRequest(input="hi", **fields), caller=caller)).run
    w.clock.advance(0.01)  # runs started in the same millisecond are listed in no particular order
    return run


async def deliver(w) -> None:
    for message in w.webhook_queue.take():
        await w.services.outbox.deliver(message)


async def test_operators_filter_the_lists_by_caller_and_callers_see_only_their_own(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    alices = [await start(w, ALICE), await start(w, ALICE, session_id=session.id)]
    bobs = await start(w, BOB)
    lister = w.services.lister
    assert [r["id"] for r in (await lister.page(caller=OPS, owner="alice")).runs] == [alices[1].id, alices[0].id]
    assert [r["id"] for r in (await lister.page(caller=OPS, owner="bob")).runs] == [bobs.id]
    assert [r["id"] for r in (await lister.page(caller=OPS, owner="bob", session_id=session.id)).runs] == []
    in_session = await lister.page(caller=OPS, owner="alice", session_id=session.id)
    assert [r["id"] for r in in_session.runs] == [alices[1].id]
    assert (await lister.page(caller=BOB, owner="alice")).runs == []  # not another caller's, even by name
    assert [r["id"] for r in (await lister.page(caller=BOB, owner="bob")).runs] == [bobs.id]


async def test_the_webhook_lag_runs_from_the_providers_end_to_the_first_successful_delivery(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, ALICE, webhook_url=HOOK)
    response = w.backend.responses[run.response_id]
    response.complete()
    response.completed_at = w.clock.now - 3  # the provider ended it 3 s before the poll saw it
    w.sender.results = [
        Attempt(at=iso_utc(w.clock.now + 1), ok=False, status_code=500),
        Attempt(at=iso_utc(w.clock.now + 6), ok=True, status_code=204),
    ]
    await w.drain_polls()  # ends the run and makes the first attempt (it fails)
    ended = await w.run(run.id)
    assert provider_ended_at(ended) == response.completed_at
    assert ended.timeline.latest("finished")["provider_completed_at"] == response.completed_at
    assert webhook_lag(ended) is None  # not delivered yet
    view = w.services.views.render(ended)
    assert view["webhook"]["next_attempt_at"] == ended.webhook.due_at > w.clock.now
    await deliver(w)
    delivered = await w.run(run.id)
    assert webhook_lag(delivered) == pytest.approx(9.0)
    assert w.services.views.render(delivered)["webhook"]["next_attempt_at"] is None
    listed = (await w.services.overview.page(caller=ALICE)).runs
    assert listed[0]["webhook"] == {"state": "delivered", "attempts": 2, "lag_seconds": pytest.approx(9.0)}


async def test_without_the_providers_end_the_lag_starts_when_the_run_ended_and_no_webhook_has_none(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, webhook_url=HOOK)
    plain = await start(w)
    for started in (run, plain):
        w.backend.responses[started.response_id].complete()
    w.sender.results = [Attempt(at=iso_utc(w.clock.now + 2), ok=True, status_code=204)]
    await w.drain_polls()
    ended = await w.run(run.id)
    assert provider_ended_at(ended) == ended.completed_at
    assert webhook_lag(ended) == pytest.approx(w.clock.now + 2 - ended.completed_at)
    listed = {r["id"]: r for r in (await w.services.overview.page()).runs}
    assert listed[plain.id]["webhook"] is None and webhook_lag(await w.run(plain.id)) is None


async def test_runs_in_flight_are_counted_per_caller(monkeypatch):
    w = world(monkeypatch)
    await start(w, ALICE)
    await start(w, ALICE)
    await start(w)  # the native API's: no owner
    hooked = await start(w, BOB, webhook_url=HOOK)
    w.backend.responses[hooked.response_id].complete()
    w.sender.results = [Attempt(at=iso_utc(w.clock.now), ok=False, status_code=500)]
    await w.drain_polls()  # bob's run ended; its webhook is still being delivered
    counted = await w.services.overview.in_flight_by_caller()
    idle = {"waiting_for_capacity": 0}
    assert counted["callers"] == {
        "alice": {"active": 2, "queued": 2, "webhook_pending": 0, **idle},
        "bob": {"active": 0, "queued": 0, "webhook_pending": 1, **idle},
        NATIVE_CALLER: {"active": 1, "queued": 1, "webhook_pending": 0, **idle},
    }
    assert counted["open_runs_read"] == 4 and counted["complete"]


KEYS = " ".join(f"{name}:{name[0] * 40}" for name in ("alice", "bob", "ops"))


async def test_capacity_counts_each_callers_slots_against_its_quota(monkeypatch):
    w = world(monkeypatch, RESPONSES_API_KEYS=KEYS, CALLER_MAX_ACTIVE_RUNS="2", CALLER_QUOTAS="bob:0:30 ops:0:0")
    overview = w.services.overview
    alices = [await start(w, ALICE), await start(w, ALICE)]
    with pytest.raises(RateLimited):  # at its cap
        await start(w, ALICE)
    await start(w)  # the native API's
    w.backend.responses[alices[0].response_id].status = "in_progress"
    await w.drain_polls()
    w.backend.fail["start"] = [
        ProviderError(
            transient=True, status=429, message="Rate limit reached", retry_after=30, code="rate_limit_exceeded"
        )
    ]
    await start(w, BOB)  # the provider has no room: queued for capacity (runs.admission), its next try not yet due

    configured = ["alice", "bob", "ops", NATIVE_CALLER]
    in_flight = await overview.in_flight_by_caller()
    requests = w.index.requests
    capacity = await overview.capacity_by_caller(configured, in_flight)
    assert w.index.requests == requests + 1  # one query over the quota partitions, whatever the callers
    assert capacity == {
        NATIVE_CALLER: {
            "max_active_runs": 2,
            "starts_per_minute": 0,
            "active_slots": 1,
            "active_runs": 1,
            "status_queued": 1,
            "waiting_for_capacity": 0,
        },
        "alice": {
            "max_active_runs": 2,
            "starts_per_minute": 0,
            "active_slots": 2,
            "active_runs": 2,
            "status_queued": 1,
            "waiting_for_capacity": 0,
        },
        "bob": {
            "max_active_runs": 0,
            "starts_per_minute": 30,
            "active_slots": None,
            "active_runs": 1,
            "status_queued": 1,
            "waiting_for_capacity": 1,
        },
        "ops": {
            "max_active_runs": 0,
            "starts_per_minute": 0,
            "active_slots": None,
            "active_runs": 0,
            "status_queued": 0,
            "waiting_for_capacity": 0,
        },
    }

    w.backend.responses[alices[0].response_id].complete()
    await w.drain_polls()  # its slot is given back
    capacity = await overview.capacity_by_caller(configured, await overview.in_flight_by_caller())
    assert capacity["alice"] == {
        "max_active_runs": 2,
        "starts_per_minute": 0,
        "active_slots": 1,
        "active_runs": 1,
        "status_queued": 1,
        "waiting_for_capacity": 0,
    }


async def test_capacity_reads_no_slots_when_no_caller_is_capped(monkeypatch):
    w = world(monkeypatch, RESPONSES_API_KEYS=KEYS, CALLER_STARTS_PER_MINUTE="60")
    await start(w, ALICE)
    requests = w.index.requests
    capacity = await w.services.overview.capacity_by_caller(["alice"], {"callers": {}})
    assert capacity == {
        "alice": {
            "max_active_runs": 0,
            "starts_per_minute": 60,
            "active_slots": None,
            "active_runs": 0,
            "status_queued": 0,
            "waiting_for_capacity": 0,
        }
    }
    assert w.index.requests == requests  # no slots are kept: none are read


async def test_a_redelivery_needs_a_caller_who_sees_the_run(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, ALICE, webhook_url=HOOK)
    w.backend.responses[run.response_id].complete()
    await w.drain_polls()
    with pytest.raises(NotFound):
        await w.services.outbox.redeliver(run.id, caller=BOB)
    assert (await w.run(run.id)).webhook.state == "delivered"  # untouched
    assert (await w.services.outbox.redeliver(run.id, caller=ALICE)).webhook.state == "pending"
    assert (await w.services.outbox.redeliver(run.id, caller=OPS)).webhook.state == "pending"
